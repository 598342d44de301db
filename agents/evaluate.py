"""Evaluate a GANNO agent against handcrafted LR schedules on a suite of zoo tasks.

Run it with an omegaconf YAML and ``key=value`` overrides::

    python -m agents.evaluate configs/evaluate.yaml agent.path=runs/train/agent.pt workers=2
    python -m agents.evaluate configs/evaluate_smoke.yaml agent.path=agent.pt out_dir=runs/eval_smoke

For every task of the suite and every seed, each *condition* trains the same freshly initialised
module (same weights, same data order) several times with a real ``lightning.Trainer``:

- ``agent``: ``GANNOCallback(agent)`` from the condition's initial LR (no scheduler underneath);
- every baseline schedule of :mod:`agents.baselines` (``constant``, ``step_decay``, ``cosine``,
  ``warmup_cosine``) at the condition's initial LR (``<schedule>@init``), and
- the same schedules tuned over ``lr_grid`` (``<schedule>@tuned``): per task and seed, the grid LR
  with the lowest final validation loss.

Conditions: ``init_lr_x<f>`` for each ``init_lr_factors`` entry ``f`` (the task's sampled LR times
``f``: 1 is the user's LR, 10 and 0.1 are 10x too high and too low), and with ``deeper: true``,
``deeper_x2``: the same tasks with exactly twice the deepest depth of the family's meta-training
(``train``) range, at the task's LR. The LR grid is always relative to the task's sampled LR, so the
tuned baselines are the same runs in every ``init_lr_x`` condition (each distinct run is trained
once and shared).

Files in ``out_dir``: ``runs.jsonl`` (each finished run, appended as it ends; a rerun with
``resume=true`` skips runs already there with the same settings; ``baselines_from`` reuses
another evaluation's baseline runs the same way), ``results.json`` (config, every
run with its validation curve, the per-seed comparisons, the summary and the headline targets; a
diverged run's ``final_val_loss`` is written as ``Infinity``, which ``json.load`` reads back as
``inf``), ``report.md``, ``loss_curves_<condition>.png`` and ``schedule_<condition>_<task>.png``
(the agent's per-layer LRs), and a W&B run (offline unless ``wandb.mode=online``) when
``wandb.enabled``.
"""

import concurrent.futures as cf
import dataclasses
import difflib
import hashlib
import json
import logging
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import typing
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from lightning.pytorch import Callback, Trainer
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from agents.baselines import SCHEDULES
from ganno_lightning.agent import DEFAULT_EXPLORATION, check_exploration
from ganno_lightning.config_keys import apply_overrides, check_overrides, known_keys_at, unknown_key_error
from ganno_lightning.short_runs import short_run_trainer

__all__ = [
    "AgentConfig",
    "Condition",
    "EvaluateConfig",
    "SuiteEntry",
    "TargetConfig",
    "ValidationRecorder",
    "deeper_family",
    "WandbConfig",
    "evaluate",
    "load_config",
    "main",
    "run_one",
    "steps_to_target",
]

# Schedules every evaluation needs: the headline targets compare with constant and cosine.
_REQUIRED_SCHEDULES = ("constant", "cosine")
_RUNS_FILE = "runs.jsonl"
_SPLITS = ("train", "heldout")


# ------------------------------------------------------------------------------------------------
# Config


@dataclass
class AgentConfig:
    path: str = "default"  # agent file (GANNOAgent.save), or "default" for the agent shipped in the package
    interval: Optional[int] = None  # optimizer steps between decisions; null: the agent's own
    exploration: str = DEFAULT_EXPLORATION  # as GANNOCallback: mean (expected change), mode (likeliest action), random


@dataclass
class SuiteEntry:
    family: str = MISSING  # a zoo family: mlp_digits, cnn_digits, teacher_student, sequence
    split: str = "heldout"  # ranges the tasks are drawn from: heldout (generalisation) or train
    tasks: int = 3  # tasks drawn from the family
    # The ranges the agent was meta-trained on (over the family's defaults); `deeper` doubles their max depth.
    train: Optional[Dict[str, Any]] = None
    heldout: Optional[Dict[str, Any]] = None  # held-out range overrides (over the family's)


@dataclass
class TargetConfig:
    reference: str = "constant"  # whose final val loss is the target: "constant" (@init) or "tuned_cosine"
    factor: float = 1.0  # target = factor x the reference's final val loss (e.g. 1.05: within 5%)


@dataclass
class WandbConfig:
    enabled: bool = False  # log the summary tables and plots to W&B
    project: str = "ganno-evaluate"
    mode: str = "offline"  # "online", "offline" or "disabled"
    name: Optional[str] = None


@dataclass
class EvaluateConfig:
    agent: AgentConfig = field(default_factory=AgentConfig)  # `agent: path.pt` is short for `agent: {path: path.pt}`
    suite: List[SuiteEntry] = field(default_factory=lambda: [SuiteEntry(family="mlp_digits")])
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])  # one run per seed (weights, data order)
    steps: int = 500  # optimizer steps per run
    val_every: int = 25  # optimizer steps between validation checks (the points of each loss curve)
    lr_grid: List[float] = field(default_factory=lambda: [0.1, 0.3, 1.0, 3.0, 10.0])  # tuning: x the task's LR
    init_lr_factors: List[float] = field(default_factory=lambda: [1.0, 10.0, 0.1])  # one condition each
    deeper: bool = True  # add the `deeper_x2` condition (twice the meta-training max depth)
    schedules: List[str] = field(default_factory=lambda: list(SCHEDULES))  # baselines, from agents.baselines
    target: TargetConfig = field(default_factory=TargetConfig)
    within: float = 0.05  # "within 5% of the tuned cosine": agent loss <= (1 + within) x its loss
    task_seed: int = 0  # seeds the draws of task hyperparameters
    schedule_plots: int = 1  # agent LR-schedule PNGs per family and condition (first seed)
    workers: int = 1  # parallel run processes; 1 runs in this process
    torch_threads: int = 1  # per run: tiny models train fastest single-threaded
    resume: bool = True  # reuse finished runs from out_dir/runs.jsonl with the same settings
    # Other evaluations' out_dirs (or runs.jsonl files) whose finished baseline runs are reused when
    # their settings match: comparing a new agent then trains only its own runs (about 1 in 7).
    baselines_from: List[str] = field(default_factory=list)
    out_dir: str = "runs/evaluate"
    wandb: WandbConfig = field(default_factory=WandbConfig)


def load_config(
    config: Union[str, os.PathLike, dict, DictConfig, EvaluateConfig, None] = None, overrides=()
) -> DictConfig:
    """Merge a YAML file (or dict) and ``key=value`` overrides onto :class:`EvaluateConfig`, then validate.

    Args:
        config: Path of a YAML file, a dict, a ``DictConfig``, an :class:`EvaluateConfig` or ``None``
            (the defaults).
        overrides: ``key=value`` strings (omegaconf dotlist) applied on top.

    Returns:
        The merged, validated config.

    Raises:
        ValueError: For an unknown key (named with its dotted path, e.g. ``suite[0].famly``), a
            value of the wrong type, or an invalid setting (empty suite, non-positive LR
            multiplier, unknown family or schedule, ...).
        FileNotFoundError: If the YAML file does not exist.

    Example::

        >>> cfg = load_config({"suite": [{"family": "sequence", "tasks": 2}]}, ["steps=200", "val_every=50"])
        >>> cfg.suite[0].split, cfg.steps, list(cfg.lr_grid)
        ('heldout', 200, [0.1, 0.3, 1.0, 3.0, 10.0])
        >>> load_config({"sede": [0]})
        Traceback (most recent call last):
        ...
        ValueError: Unknown config key `sede` in config (did you mean `seeds`?). ...
    """
    schema = OmegaConf.structured(EvaluateConfig)
    source = "config"
    merged = schema  # what an unknown key's error lists the known keys from, until the merge succeeds
    try:
        if config is None or isinstance(config, EvaluateConfig):
            base = OmegaConf.structured(config or EvaluateConfig())
        elif isinstance(config, (str, os.PathLike)):
            source = str(config)
            if not Path(config).is_file():
                raise FileNotFoundError(f"Config file not found: '{config}'.")
            base = OmegaConf.load(config)
        else:
            base = OmegaConf.create(config if isinstance(config, DictConfig) else dict(config))
        if isinstance(base, DictConfig):
            if isinstance(base.get("agent"), str):  # shorthand `agent: path.pt` for `agent: {path: path.pt}`
                base.agent = {"path": base.agent}
            _check_keys(OmegaConf.to_container(base), EvaluateConfig, source)
        merged = OmegaConf.merge(schema, base)
        source = "overrides"
        overrides = check_overrides(overrides, example="steps=400")
        for i, item in enumerate(overrides):
            if item.startswith("agent="):  # shorthand, as in the file
                overrides[i] = "agent.path=" + item[len("agent="):]
        apply_overrides(merged, overrides)  # in place: `suite[0].tasks=2` sets one field of a list entry
    except (ConfigKeyError, ConfigAttributeError) as err:
        key = str(getattr(err, "full_key", None) or getattr(err, "key", "?"))
        raise unknown_key_error(key, known_keys_at(merged, key), source=source, see="configs/evaluate.yaml") from None
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ValueError(f"Config key `{key}` in {source}: {str(getattr(err, 'msg', err)).splitlines()[0]}") from None
    validate_config(merged)
    return merged


def _check_keys(data: Any, schema: type, source: str, prefix: str = "") -> None:
    """Reject a key the schema does not have, naming its full dotted path (``suite[0].famly``).

    omegaconf's own error loses the path inside lists of structured entries; this walk keeps it.
    """
    if not isinstance(data, dict):
        return  # a wrong type is reported by the merge, with its key
    fields = {f.name: f.type for f in dataclasses.fields(schema)}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise unknown_key_error(path, fields, source=source, see="configs/evaluate.yaml")
        kind = fields[key]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                keys = ", ".join(kind.__dataclass_fields__)
                raise ValueError(f"`{path}` in {source} must be a section of keys ({keys}), got {value!r}.")
            _check_keys(value, kind, source, path)
        elif typing.get_origin(kind) is list and dataclasses.is_dataclass(typing.get_args(kind)[0]):
            if not isinstance(value, list):
                raise ValueError(f"`{path}` in {source} must be a list, e.g. suite: [{{family: mlp_digits, tasks: 3}}]; "
                                 f"got {value!r}.")
            for i, item in enumerate(value):
                if not isinstance(item, dict):
                    raise ValueError(
                        f"`{path}[{i}]` in {source} must be a section such as {{family: mlp_digits}}, got {item!r}.")
                _check_keys(item, typing.get_args(kind)[0], source, f"{path}[{i}]")


def validate_config(cfg: DictConfig) -> None:
    """Check values the schema's types cannot: ranges, non-empty lists, known names.

    Raises:
        ValueError: Naming the first invalid key, the value received and how to fix it.
    """
    from envs.tasks import FAMILIES, make_family

    try:
        OmegaConf.to_container(cfg, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise ValueError(f"`{err.full_key}` is required (e.g. family: mlp_digits).") from None
    if not cfg.suite:
        raise ValueError("`suite` must list at least one task family, e.g. suite: [{family: mlp_digits, tasks: 3}].")
    for i, entry in enumerate(cfg.suite):
        prefix = f"suite[{i}]"
        if entry.family not in FAMILIES:
            close = difflib.get_close_matches(str(entry.family), list(FAMILIES), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"`{prefix}.family` must be a zoo family ({', '.join(sorted(FAMILIES))}), "
                             f"got {entry.family!r}.{hint}")
        if entry.split not in _SPLITS:
            raise ValueError(f"`{prefix}.split` must be one of {list(_SPLITS)}, got {entry.split!r}.")
        _at_least(entry.tasks, f"{prefix}.tasks", 1)
        make_family(entry.family, train=entry.train, heldout=entry.heldout, prefix=prefix)
        if cfg.deeper:  # fails now, not in every worker
            deeper_family(entry.family, entry.split, entry.train, entry.heldout, prefix)
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ValueError(f"`seeds` must be a non-empty list of distinct ints, got {list(cfg.seeds)}.")
    _at_least(cfg.steps, "steps", 1)
    _at_least(cfg.val_every, "val_every", 1)
    if cfg.steps % cfg.val_every:
        suggestion = cfg.steps - cfg.steps % cfg.val_every or cfg.val_every
        raise ValueError(
            f"`steps` ({cfg.steps}) must be a multiple of `val_every` ({cfg.val_every}), so that the last "
            f"validation check is at the last step (the final val loss). E.g. steps={suggestion}."
        )
    for key in ("lr_grid", "init_lr_factors"):
        values = list(cfg[key])
        if not values or not all(math.isfinite(v) and v > 0 for v in values) or len(set(values)) != len(values):
            raise ValueError(
                f"`{key}` must be a non-empty list of distinct positive finite multipliers of the task's LR, "
                f"got {values}. E.g. [0.1, 0.3, 1.0, 3.0, 10.0]."
            )
    unknown = [s for s in cfg.schedules if s not in SCHEDULES]
    if unknown:
        raise ValueError(f"`schedules` has unknown schedule(s) {unknown}; known: {list(SCHEDULES)}.")
    missing = [s for s in _REQUIRED_SCHEDULES if s not in cfg.schedules]
    if missing or len(set(cfg.schedules)) != len(cfg.schedules):
        raise ValueError(
            f"`schedules` must be distinct and include {list(_REQUIRED_SCHEDULES)} (the targets compare with them), "
            f"got {list(cfg.schedules)}."
        )
    if cfg.target.reference not in ("constant", "tuned_cosine"):
        raise ValueError(f"`target.reference` must be 'constant' or 'tuned_cosine', got {cfg.target.reference!r}.")
    if not (math.isfinite(cfg.target.factor) and cfg.target.factor > 0):
        raise ValueError(f"`target.factor` must be a positive finite number, got {cfg.target.factor!r}.")
    if not (math.isfinite(cfg.within) and cfg.within >= 0):
        raise ValueError(f"`within` must be a finite number >= 0 (0.05 for 5%), got {cfg.within!r}.")
    if cfg.agent.interval is not None:
        _at_least(cfg.agent.interval, "agent.interval", 1)
    check_exploration(cfg.agent.exploration, "agent.exploration")
    _at_least(cfg.schedule_plots, "schedule_plots", 0)
    for i, source in enumerate(cfg.baselines_from):
        if not _runs_log(source).is_file():
            raise ValueError(f"`baselines_from[{i}]`: no evaluation log at '{_runs_log(source)}'; give the out_dir "
                             f"of an earlier `agents.evaluate` run (it holds {_RUNS_FILE}), got {source!r}.")
    _at_least(cfg.workers, "workers", 1)
    _at_least(cfg.torch_threads, "torch_threads", 1)
    if cfg.wandb.mode not in ("online", "offline", "disabled"):
        raise ValueError(f"`wandb.mode` must be 'online', 'offline' or 'disabled', got {cfg.wandb.mode!r}.")


def _at_least(value: Any, key: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{key}` must be an int >= {minimum}, got {value!r}.")


def deeper_family(name: str, split: str, train: Optional[dict], heldout: Optional[dict], prefix: str = "suite"):
    """The family ``name`` with ``split``'s depth fixed to twice the max depth of its ``train`` ranges.

    Only the depth changes: the other ranges of ``split`` stay as configured.

    Example::

        >>> deeper_family("mlp_digits", "heldout", {"depth": [1, 3]}, None).ranges("heldout").depth
        (6, 6)
    """
    from envs.tasks import make_family

    family = make_family(name, train=train, heldout=heldout, prefix=prefix)
    depth = 2 * family.ranges("train").depth[1]
    sections = {"train": _plain(train), "heldout": _plain(heldout)}
    sections[split] = {**(sections[split] or {}), "depth": [depth, depth]}
    return make_family(name, train=sections["train"], heldout=sections["heldout"], prefix=f"{prefix}(deeper)")


def _plain(section: Any) -> Any:
    return OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else section


# ------------------------------------------------------------------------------------------------
# The plan: conditions, tasks and the distinct runs they need


@dataclass(frozen=True)
class Condition:
    """One evaluation condition: the initial-LR factor, and whether tasks are the deeper variants."""

    name: str
    factor: float
    deeper: bool = False


def conditions_of(cfg: DictConfig) -> List[Condition]:
    """``init_lr_x<f>`` per ``init_lr_factors`` entry, then ``deeper_x2`` when ``deeper`` is set.

    Example::

        >>> [c.name for c in conditions_of(load_config({"init_lr_factors": [1.0, 10.0, 0.1]}))]
        ['init_lr_x1', 'init_lr_x10', 'init_lr_x0.1', 'deeper_x2']
    """
    out = [Condition(f"init_lr_x{f:g}", float(f)) for f in cfg.init_lr_factors]
    if cfg.deeper:
        out.append(Condition("deeper_x2", 1.0, deeper=True))
    return out


def task_specs(cfg: DictConfig, deeper: bool) -> List[Dict[str, Any]]:
    """Plain-data descriptions of the suite's tasks (what a worker needs to rebuild each one).

    Task ``t`` of suite entry ``i`` is drawn from a generator seeded by ``(task_seed, i, t)``; its
    deeper variant uses the same generator with only the depth range replaced, and since every
    range field consumes exactly one draw, it has the same width, LR, batch size and optimizer.
    """
    specs = []
    for i, entry in enumerate(cfg.suite):
        plain = OmegaConf.to_container(entry, resolve=True)
        for t in range(entry.tasks):
            specs.append({
                "id": f"{entry.family}#{t}" + ("@deeper" if deeper else ""),
                "entry": i,
                "family": entry.family,
                "split": entry.split,
                "train": plain["train"],
                "heldout": plain["heldout"],
                "deeper": deeper,
                "sample_seed": (int(cfg.task_seed) * 1_000_003 + i * 10_007 + t) % (2**62),
            })
    return specs


def _lr_key(factor: float) -> str:
    return f"{float(factor):g}"


def plan_runs(cfg: DictConfig) -> List[Dict[str, Any]]:
    """Every distinct run the conditions need, as plain-data jobs for :func:`run_one`.

    Per task and seed: the agent at each condition's factor, and each schedule at every factor of
    ``lr_grid`` and of the conditions (a factor in both is one run).
    """
    conditions = conditions_of(cfg)
    agent = {"path": cfg.agent.path, "interval": cfg.agent.interval, "exploration": cfg.agent.exploration,
             "sha256": _agent_digest(cfg.agent.path)}
    jobs: Dict[str, Dict[str, Any]] = {}
    for deeper in sorted({c.deeper for c in conditions}):
        factors = [c.factor for c in conditions if c.deeper == deeper]
        baseline_factors = sorted({float(f) for f in [*cfg.lr_grid, *factors]})
        for task in task_specs(cfg, deeper):
            for seed in cfg.seeds:
                methods = [("agent", f) for f in factors] + [(s, f) for s in cfg.schedules for f in baseline_factors]
                for method, factor in methods:
                    job = {
                        "task": task,
                        "seed": int(seed),
                        "method": method,
                        "lr_factor": float(factor),
                        "steps": int(cfg.steps),
                        "val_every": int(cfg.val_every),
                        "torch_threads": int(cfg.torch_threads),
                        "agent": agent if method == "agent" else None,
                    }
                    job["id"] = run_id(task["id"], seed, method, factor)
                    job["key"] = _job_key(job)
                    jobs.setdefault(job["id"], job)
    return list(jobs.values())


def run_id(task_id: str, seed: int, method: str, factor: float) -> str:
    """The name of a run in ``results.json``, e.g. ``mlp_digits#0|seed=1|cosine|x3``."""
    return f"{task_id}|seed={seed}|{method}|x{_lr_key(factor)}"


def _job_key(job: Dict[str, Any]) -> str:
    # Everything that changes a run's outcome; a finished run is reused only under the same key.
    spec = {k: job[k] for k in ("task", "seed", "method", "lr_factor", "steps", "val_every", "agent")}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _agent_digest(path: str) -> Optional[str]:
    resolved = _agent_path(path)
    return hashlib.sha256(resolved.read_bytes()).hexdigest()[:16] if resolved.is_file() else None


def _agent_path(path: str) -> Path:
    from ganno_lightning.agent import DEFAULT_AGENT_PATH

    return DEFAULT_AGENT_PATH if path == "default" else Path(path)


# ------------------------------------------------------------------------------------------------
# One run (in a worker process or in this one)


class ValidationRecorder(Callback):
    """Lightning callback keeping the validation-loss curve and stopping a run that diverged.

    A run has diverged when a training or validation loss is not finite; the run then stops
    (``trainer.should_stop``) instead of training NaN weights for the remaining steps.

    Args:
        monitor: The logged validation metric.

    Example::

        recorder = ValidationRecorder()
        Trainer(max_steps=100, val_check_interval=25, check_val_every_n_epoch=None, callbacks=[recorder]).fit(model)
        recorder.curve  # [[25, 0.81], [50, 0.52], [75, 0.44], [100, 0.41]]
    """

    def __init__(self, monitor: str = "val_loss") -> None:
        self.monitor = monitor
        self.curve: List[List[float]] = []
        self.accuracy: Optional[float] = None
        self.diverged = False
        self.reason = ""

    def _diverge(self, trainer: Trainer, reason: str) -> None:
        if not self.diverged:
            self.diverged, self.reason = True, reason
        trainer.should_stop = True

    def on_train_batch_end(self, trainer: Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss.detach()).all()):
            self._diverge(trainer, f"non-finite training loss at step {trainer.global_step}")

    def on_validation_end(self, trainer: Trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        value = float(value)
        finite = math.isfinite(value)
        self.curve.append([int(trainer.global_step), value if finite else math.inf])
        acc = trainer.callback_metrics.get("val_acc")
        self.accuracy = float(acc) if acc is not None else None
        if not finite:
            self._diverge(trainer, f"non-finite {self.monitor} at step {trainer.global_step}")


def build_task(spec: Dict[str, Any], seed: int):
    """Rebuild the task ``spec`` (from :func:`task_specs`) with weights and data order set by ``seed``.

    Every method run on the same ``(spec, seed)`` gets the same initial weights and batch order,
    so their results are paired.

    Example::

        >>> spec = task_specs(load_config({"suite": [{"family": "mlp_digits", "tasks": 1}]}), deeper=False)[0]
        >>> a, b = build_task(spec, seed=0), build_task(spec, seed=0)
        >>> a.name == b.name and bool((a.module.net[0].weight == b.module.net[0].weight).all())
        True
    """
    from envs.tasks import ZooModule, make_family

    if spec["deeper"]:
        family = deeper_family(spec["family"], spec["split"], spec["train"], spec["heldout"])
    else:
        family = make_family(spec["family"], train=spec["train"], heldout=spec["heldout"])
    generator = torch.Generator().manual_seed(int(spec["sample_seed"]))
    torch.manual_seed((int(spec["sample_seed"]) * 7919 + int(seed)) % (2**62))  # zoo weights use the global RNG
    task = family.sample(generator, spec["split"])
    if isinstance(task.module, ZooModule):
        task.module.seed = task.info["seed"] + int(seed)  # the training loader shuffles by `seed`
    return task


def run_one(job: Dict[str, Any]) -> Dict[str, Any]:
    """Train one job from :func:`plan_runs` with a real ``lightning.Trainer``; never raises.

    A diverging run (non-finite loss) comes back with ``status="diverged"`` and
    ``final_val_loss=inf``; any other error with ``status="failed"``, the error in ``reason`` and
    ``final_val_loss=inf``, so that one run can never stop the evaluation.

    Returns:
        Plain data: the job's identity, ``task_name``, ``num_layers``, ``lr`` (initial), ``status``,
        ``final_val_loss``, ``final_val_acc`` (logged ``val_acc``, else argmax accuracy for
        classifiers, else ``None``), ``curve`` (``[step, val_loss]`` per check), ``steps_done``,
        ``seconds``, ``torch`` (the version that trained it), and for the agent its ``schedule``
        (``LRSchedule.state_dict()``).
    """
    start = time.perf_counter()
    result: Dict[str, Any] = {
        "id": job["id"], "key": job["key"], "task": job["task"]["id"], "seed": job["seed"], "method": job["method"],
        "lr_factor": job["lr_factor"], "status": "failed", "reason": "", "final_val_loss": math.inf,
        "final_val_acc": None, "curve": [], "steps_done": 0, "torch": torch.__version__,
    }
    threads = torch.get_num_threads()
    lightning_logger = logging.getLogger("lightning.pytorch")
    log_level = lightning_logger.level
    trainer = recorder = ganno = None
    try:
        torch.set_num_threads(int(job["torch_threads"]))
        lightning_logger.setLevel(logging.ERROR)  # "GPU available: False" etc., once per run, is noise here
        from agents.baselines import scale_initial_lr, with_schedule

        task = build_task(job["task"], job["seed"])
        module = task.module
        result.update(task_name=task.name, num_layers=task.info.get("num_layers"), base_lr=task.info.get("lr"))
        result["lr"] = scale_initial_lr(module, job["lr_factor"])
        recorder = ValidationRecorder()
        callbacks = [recorder]  # first: it stops a diverged run before the agent decides on it
        if job["method"] == "agent":
            from ganno_lightning.callback import GANNOCallback

            agent = job["agent"]
            ganno = GANNOCallback(_load_agent(agent["path"]), interval=agent["interval"],
                                  exploration=agent["exploration"], seed=job["seed"])
            callbacks.append(ganno)
        else:
            with_schedule(module, job["method"], job["steps"])
        with tempfile.TemporaryDirectory(prefix="ganno_eval_") as root, warnings.catch_warnings():
            # Advice and deprecations from Lightning's internals, identical for every run; a fresh
            # `catch_warnings` per run would otherwise print them again each time.
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
            # tiny models: faster on CPU than paying for transfers
            trainer = short_run_trainer(job["steps"], job["val_every"], root, callbacks, accelerator="cpu")
            trainer.fit(module)
        result["steps_done"] = int(trainer.global_step)
        result["curve"] = recorder.curve
        if recorder.diverged:
            result.update(status="diverged", reason=recorder.reason)
        elif not recorder.curve or recorder.curve[-1][0] != job["steps"]:
            result.update(reason=f"no validation at the last step {job['steps']} (curve: {recorder.curve[-2:]})")
        else:
            result.update(status="ok", final_val_loss=recorder.curve[-1][1])
            result["final_val_acc"] = recorder.accuracy if recorder.accuracy is not None else _accuracy(module)
    except Exception as err:  # one broken run must not stop the evaluation; the reason is kept
        result.update(status="failed", reason=f"{type(err).__name__}: {err}"[:500])
        if recorder is not None:
            result["curve"] = recorder.curve
    finally:
        torch.set_num_threads(threads)  # in-process runs must not leave the caller single-threaded
        lightning_logger.setLevel(log_level)
    if ganno is not None and ganno.schedule is not None:
        result["schedule"] = ganno.schedule.state_dict()
    if result["status"] != "ok":
        result["final_val_loss"] = math.inf  # a diverged or failed run counts as a loss for its method
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


@lru_cache(maxsize=4)
def _load_agent(path: str):
    from ganno_lightning.agent import GANNOAgent

    return GANNOAgent.default() if path == "default" else GANNOAgent.load(path)


@torch.no_grad()
def _accuracy(module) -> Optional[float]:
    """Argmax accuracy on the validation loader for classifiers (integer targets), else ``None``.

    The zoo's classifiers log only ``val_loss``; accuracy is measured here on the final weights.
    Targets below 0 (``ignore_index`` positions of the sequence task) are skipped.
    """
    was_training = module.training
    module.eval()
    correct = total = 0
    try:
        for batch in module.val_dataloader():
            x, y = batch[0], batch[1]
            if y.is_floating_point():
                return None  # regression
            logits = module(x)
            if logits.shape[:-1] != y.shape:
                return None
            keep = y >= 0
            correct += int((logits.argmax(-1)[keep] == y[keep]).sum())
            total += int(keep.sum())
    except (TypeError, ValueError, IndexError, NotImplementedError):
        return None  # not a (x, y) classifier this function understands
    finally:
        module.train(was_training)
    return correct / total if total else None


# ------------------------------------------------------------------------------------------------
# Executing the plan


def execute(jobs: List[Dict[str, Any]], workers: int, log_path: Optional[Path] = None,
            done: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Dict[str, Any]]:
    """Run ``jobs`` (in ``workers`` processes, or in this one when 1); results by run id.

    Runs in ``done`` with the same key are reused. Each new result is appended to ``log_path`` as
    one JSON line as soon as it ends, so an interrupted evaluation resumes where it stopped.
    """
    results: Dict[str, Dict[str, Any]] = {}
    pending = []
    for job in jobs:
        previous = (done or {}).get(job["id"])
        if previous is not None and previous.get("key") == job["key"] and previous.get("status") != "failed":
            results[job["id"]] = previous
        else:
            pending.append(job)
    if results:
        print(f"reusing {len(results)} finished runs from {log_path}", flush=True)
    total, start = len(pending), time.perf_counter()

    def finish(result: Dict[str, Any]) -> None:
        results[result["id"]] = result
        if log_path is not None:
            with open(log_path, "a") as f:
                f.write(json.dumps(result) + "\n")
        n = len(results) - (len(jobs) - total)
        loss = result["final_val_loss"]
        print(f"[{n}/{total}] {result['id']}: {result['status']}, final val loss "
              f"{loss:.4g} ({result['seconds']:.1f} s, {time.perf_counter() - start:.0f} s elapsed)", flush=True)

    if workers <= 1:
        for job in pending:
            finish(run_one(job))
        return results
    # Longest first (deeper models, then LSTMs), so that no slow run is left alone at the end.
    pending.sort(key=lambda j: (j["task"]["deeper"], j["task"]["family"] == "sequence"), reverse=True)
    # By module path, not `run_one` of this namespace: under `python -m agents.evaluate` this module is
    # `__main__`, whose functions a spawned worker cannot always import by that name.
    from agents import evaluate as this_module

    attempts: Counter = Counter()
    while pending:
        # spawn: forking after torch has started its threads can deadlock.
        pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        retry = []
        try:
            futures = {pool.submit(this_module.run_one, job): job for job in pending}
            for future in cf.as_completed(futures):
                job = futures[future]
                try:
                    finish(future.result())
                except Exception as err:  # the worker process died (killed, out of memory)
                    attempts[job["id"]] += 1
                    if attempts[job["id"]] > 1:
                        finish({**_failure(job), "reason": f"worker died twice: {type(err).__name__}: {err}"})
                    else:
                        retry.append(job)
        except BaseException:
            # Ctrl-C: drop the queued runs instead of waiting for all of them (finished ones are in
            # the log, and a rerun resumes from there).
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        pending = retry
    return results


def _failure(job: Dict[str, Any]) -> Dict[str, Any]:
    return {"id": job["id"], "key": job["key"], "task": job["task"]["id"], "seed": job["seed"],
            "method": job["method"], "lr_factor": job["lr_factor"], "status": "failed", "reason": "",
            "final_val_loss": math.inf, "final_val_acc": None, "curve": [], "steps_done": 0, "seconds": 0.0}


def _runs_log(source: str) -> Path:
    path = Path(source)
    return path if path.suffix == ".jsonl" else path / _RUNS_FILE


def _copy_baselines(jobs: List[Dict[str, Any]], sources: List[str],
                    done: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Finished baseline runs of ``sources`` that ``jobs`` need and ``done`` lacks; added to ``done``.

    Only baselines are shared: an agent run's key includes its agent file's digest, and only runs
    whose key (task draw, seed, schedule, LR factor, steps, validation) matches are taken, and none
    trained by another torch version (logs from before runs recorded it are trusted). The key does
    not cover the code of the task zoo and schedules: reuse runs of the same code.
    """
    def missing(job: Dict[str, Any]) -> bool:
        previous = done.get(job["id"])
        return previous is None or previous.get("key") != job["key"] or previous.get("status") == "failed"

    wanted = {job["id"]: job["key"] for job in jobs if job["agent"] is None and missing(job)}
    copied = []
    for source in sources:
        for run_key, run in _read_log(_runs_log(source)).items():
            same_torch = run.get("torch", torch.__version__) == torch.__version__
            if wanted.get(run_key) == run.get("key") and run.get("status") != "failed" and same_torch:
                done[run_key] = run
                copied.append(run)
                del wanted[run_key]
    return copied


def _read_log(path: Path) -> Dict[str, Dict[str, Any]]:
    done: Dict[str, Dict[str, Any]] = {}
    if not path.is_file():
        return done
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by an interruption
        done[record["id"]] = record
    return done


# ------------------------------------------------------------------------------------------------
# Analysis


def steps_to_target(curve, target: Optional[float]) -> Optional[int]:
    """The step of the first validation check whose loss is at most ``target``; ``None`` if never.

    Args:
        curve: ``[(step, val_loss), ...]`` in step order.
        target: The target loss; ``None`` or non-finite (the reference diverged) gives ``None``.

    Example::

        >>> steps_to_target([(25, 2.0), (50, 1.2), (75, 0.9), (100, 1.1)], 1.0)
        75
        >>> steps_to_target([(25, 2.0), (50, 1.5)], 1.0) is None
        True
    """
    if target is None or not math.isfinite(target):
        return None
    for step, loss in curve:
        if loss is not None and math.isfinite(loss) and loss <= target:
            return int(step)
    return None


def method_names(schedules) -> List[str]:
    """Row names of the report: ``agent``, ``<schedule>@init`` ..., ``<schedule>@tuned`` ..."""
    return ["agent", *[f"{s}@init" for s in schedules], *[f"{s}@tuned" for s in schedules]]


def compare(cfg: DictConfig, runs: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Per condition, task and seed: every method's final val loss, accuracy and steps to target.

    ``<schedule>@tuned`` is, per task and seed, the grid factor with the lowest final val loss
    (the first one on ties); the target is ``target.factor`` times the reference's final val loss.
    """
    grid = [float(f) for f in cfg.lr_grid]
    out: Dict[str, Any] = {}
    for condition in conditions_of(cfg):
        per_task: Dict[str, Any] = {}
        for spec in task_specs(cfg, condition.deeper):
            per_seed = {}
            for seed in cfg.seeds:
                def get(method: str, factor: float) -> Dict[str, Any]:
                    return runs[run_id(spec["id"], seed, method, factor)]

                chosen = {"agent": get("agent", condition.factor)}
                for s in cfg.schedules:
                    chosen[f"{s}@init"] = get(s, condition.factor)
                for s in cfg.schedules:
                    candidates = [get(s, f) for f in grid]
                    chosen[f"{s}@tuned"] = min(candidates, key=lambda r: r["final_val_loss"])
                reference = chosen["constant@init" if cfg.target.reference == "constant" else "cosine@tuned"]
                target = reference["final_val_loss"] * cfg.target.factor
                target = target if math.isfinite(target) else None
                per_seed[str(seed)] = {
                    "target": target,
                    "methods": {
                        name: {
                            "run": r["id"],
                            "lr_factor": r["lr_factor"],
                            "final_val_loss": r["final_val_loss"],
                            "final_val_acc": r.get("final_val_acc"),
                            "status": r["status"],
                            "steps_to_target": steps_to_target(r["curve"], target),
                        }
                        for name, r in chosen.items()
                    },
                }
            first = runs[run_id(spec["id"], cfg.seeds[0], "agent", condition.factor)]
            per_task[spec["id"]] = {"name": first.get("task_name", spec["id"]), "num_layers": first.get("num_layers"),
                                    "base_lr": first.get("base_lr"), "seeds": per_seed}
        out[condition.name] = per_task
    return out


def _task_value(task: Dict[str, Any], method: str, key: str = "final_val_loss") -> Optional[float]:
    """Mean over seeds; a diverged seed makes the task's loss ``inf`` (a loss for the method)."""
    values = [seed["methods"][method][key] for seed in task["seeds"].values()]
    if key == "final_val_loss":
        return math.inf if any(not math.isfinite(v) for v in values) else statistics.fmean(values)
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _agent_wins(agent: float, other: float, margin: float = 0.0, strict: bool = False) -> bool:
    # A diverged agent wins nothing; a diverged baseline loses to any finite agent.
    if not math.isfinite(agent):
        return False
    if not math.isfinite(other):
        return True
    return agent < other if strict else agent <= (1.0 + margin) * other


def summarise(cfg: DictConfig, comparisons: Dict[str, Any]) -> Dict[str, Any]:
    """Per condition and method: the summary-table metrics (see the report's legend)."""
    summary: Dict[str, Any] = {}
    for condition, tasks in comparisons.items():
        rows = {}
        n_tasks = len(tasks)
        for method in method_names(cfg.schedules):
            losses = [_task_value(t, method) for t in tasks.values()]
            agent = [_task_value(t, "agent") for t in tasks.values()]
            cosine = [_task_value(t, "cosine@tuned") for t in tasks.values()]
            accs = [a for a in (_task_value(t, method, "final_val_acc") for t in tasks.values()) if a is not None]
            seeds = [s["methods"][method] for t in tasks.values() for s in t["seeds"].values()]
            targets = [s["target"] for t in tasks.values() for s in t["seeds"].values()]
            reached = [m["steps_to_target"] for m in seeds if m["steps_to_target"] is not None]
            ratios = [_ratio(a, c) for a, c in zip(losses, cosine)]
            finite = [x for x in losses if math.isfinite(x)]
            rows[method] = {
                "tasks": n_tasks,
                "mean_final_val_loss": statistics.fmean(finite) if finite else None,
                "finite_tasks": len(finite),
                "mean_final_val_acc": statistics.fmean(accs) if accs else None,
                "median_ratio_to_tuned_cosine": statistics.median(ratios) if ratios else None,
                "diverged_runs": sum(m["status"] == "diverged" for m in seeds),
                "failed_runs": sum(m["status"] == "failed" for m in seeds),
                "runs": len(seeds),
                "reached_target": len(reached),
                "runs_with_target": sum(t is not None for t in targets),
                "median_steps_to_target": statistics.median(reached) if reached else None,
                "agent_better": sum(_agent_wins(a, m, strict=True) for a, m in zip(agent, losses)),
                "agent_not_worse": sum(_agent_wins(a, m) for a, m in zip(agent, losses)),
                "agent_within": sum(_agent_wins(a, m, margin=cfg.within) for a, m in zip(agent, losses)),
            }
        summary[condition] = rows
    return summary


def _ratio(value: float, reference: float) -> float:
    if not math.isfinite(value):
        return math.inf
    if not math.isfinite(reference):
        return 0.0  # finite against a diverged reference: as good as it gets
    return value / reference if reference > 0 else math.inf


def headline_targets(cfg: DictConfig, summary: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The project's targets, measured: (a) from the user's LR, (b) from a 10x wrong LR, (c) deeper nets."""
    out = []

    def add(label: str, condition: str, method: str, key: str, comparison: str) -> None:
        row = summary[condition][method]
        count, n = row[key], row["tasks"]
        out.append({"target": label, "condition": condition, "comparison": comparison, "count": count, "tasks": n,
                    "percent": 100.0 * count / n if n else None})

    within = f"{cfg.within * 100:g}%"
    for condition in conditions_of(cfg):
        if condition.deeper:
            add("(c) deeper nets", condition.name, "constant@init", "agent_better", "agent < constant LR")
        elif condition.factor == 1.0:
            add("(a) user's LR", condition.name, "constant@init", "agent_better", "agent < constant LR")
            add("(a) user's LR", condition.name, "cosine@tuned", "agent_not_worse", "agent <= tuned cosine")
        else:
            add(f"(b) LR x{condition.factor:g}", condition.name, "cosine@tuned", "agent_within",
                f"agent within {within} of tuned cosine")
    return out


# ------------------------------------------------------------------------------------------------
# Report


def _fmt(value: Optional[float], digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}g}"


def _count(k: int, n: int) -> str:
    return f"{k}/{n}"


SUMMARY_COLUMNS = [
    "method", "final val loss (mean)", "val acc (mean)", "loss / tuned cosine (median)", "diverged runs",
    "reached target (runs)", "steps to target (median)", "agent < method (tasks)", "agent <= method (tasks)",
    "agent within {within} (tasks)",
]


def summary_table(cfg: DictConfig, rows: Dict[str, Any]) -> str:
    """One condition's summary as a Markdown table (the columns of :data:`SUMMARY_COLUMNS`)."""
    within = f"{cfg.within * 100:g}%"
    header = [c.format(within=within) for c in SUMMARY_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, r in rows.items():
        n = r["tasks"]
        mean = _fmt(r["mean_final_val_loss"])
        if r["finite_tasks"] < n:
            mean += f" ({n - r['finite_tasks']} task(s) inf)"
        diverged = _count(r["diverged_runs"], r["runs"]) + (f", {r['failed_runs']} failed" if r["failed_runs"] else "")
        is_agent = method == "agent"
        cells = [
            method, mean, _fmt(r["mean_final_val_acc"], 3), _fmt(r["median_ratio_to_tuned_cosine"], 3), diverged,
            _count(r["reached_target"], r["runs_with_target"]), _fmt(r["median_steps_to_target"]),
            "—" if is_agent else _count(r["agent_better"], n),
            "—" if is_agent else _count(r["agent_not_worse"], n),
            "—" if is_agent else _count(r["agent_within"], n),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def task_table(cfg: DictConfig, tasks: Dict[str, Any]) -> str:
    """One condition's per-task table: seed-mean final val loss of every method, and the target checks."""
    within = f"{cfg.within * 100:g}%"
    methods = method_names(cfg.schedules)
    header = ["task", "layers", "task LR (x1)", *methods, "agent steps to target (per seed)", "agent < constant",
              "agent <= tuned cosine", f"agent within {within} of tuned cosine"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task_id, t in tasks.items():
        agent = _task_value(t, "agent")
        cells = [f"`{task_id}` {t['name']}", str(t["num_layers"]), _fmt(t["base_lr"], 2)]
        for method in methods:
            cell = _fmt(_task_value(t, method))
            if method.endswith("@tuned"):
                factors = Counter(s["methods"][method]["lr_factor"] for s in t["seeds"].values())
                cell += " (" + ", ".join(f"x{f:g}" for f, _ in factors.most_common()) + ")"
            cells.append(cell)
        steps = [s["methods"]["agent"]["steps_to_target"] for s in t["seeds"].values()]
        cells.append(", ".join("never" if x is None else str(x) for x in steps))
        cells.append("yes" if _agent_wins(agent, _task_value(t, "constant@init"), strict=True) else "no")
        cells.append("yes" if _agent_wins(agent, _task_value(t, "cosine@tuned")) else "no")
        cells.append("yes" if _agent_wins(agent, _task_value(t, "cosine@tuned"), margin=cfg.within) else "no")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_table(targets: List[Dict[str, Any]]) -> str:
    lines = ["| target | condition | measure | tasks | share |", "|---|---|---|---|---|"]
    for t in targets:
        share = "n/a" if t["percent"] is None else f"{t['percent']:.0f}%"
        lines.append(f"| {t['target']} | {t['condition']} | {t['comparison']} | {t['count']}/{t['tasks']} | {share} |")
    return "\n".join(lines)


def write_report(cfg: DictConfig, path: Path, comparisons, summary, targets, runs, plots, seconds: float) -> str:
    """Write ``report.md`` and return its text."""
    within = f"{cfg.within * 100:g}%"
    reference = "the constant LR at the condition's initial LR" if cfg.target.reference == "constant" \
        else "the LR-grid-tuned cosine"
    failed = [r for r in runs.values() if r["status"] == "failed"]
    parts = [
        "# GANNO agent vs handcrafted LR schedules",
        "",
        f"Agent: `{cfg.agent.path}` (exploration `{cfg.agent.exploration}`). Suite: "
        + ", ".join(f"{e.family} ({e.split}, {e.tasks} task(s))" for e in cfg.suite)
        + f"; seeds {list(cfg.seeds)}; {cfg.steps} optimizer steps per run, validation every {cfg.val_every}; "
        f"LR grid x{', x'.join(f'{f:g}' for f in cfg.lr_grid)} of each task's sampled LR. "
        f"{len(runs)} runs, {seconds / 60:.1f} min.",
    ]
    if len(cfg.seeds) < 3:
        parts += ["", f"**Only {len(cfg.seeds)} seed(s): a smoke test, not an evaluation (use 3 or more).**"]
    if failed:
        parts += ["", f"**{len(failed)} run(s) failed with an error (counted as inf loss)**, e.g. "
                  f"`{failed[0]['id']}`: {failed[0]['reason']}"]
    parts += [
        "",
        "## Targets",
        "",
        targets_table(targets),
        "",
        "## How to read this",
        "",
        "- Every method of a task and seed starts from the same weights and sees the same batches. "
        "`agent`: `GANNOCallback(agent)` from the condition's initial LR, no scheduler underneath. "
        "`<schedule>@init`: the schedule at the condition's initial LR. `<schedule>@tuned`: per task and seed, "
        "the grid LR with the lowest final validation loss (the chosen multipliers are in the per-task tables).",
        "- Conditions: `init_lr_x<f>` starts from the task's sampled LR times f (x10 / x0.1: 10x too high / low); "
        "`deeper_x2` uses networks exactly twice as deep as the deepest of the family's meta-training range.",
        "- **Tuning favours the baselines**: `@tuned` picks its LR by the same validation loss it is then scored on "
        "(and gets one run per grid point), while the agent runs once and is never tuned.",
        "- Per task, a method's loss is the mean over seeds of the final validation loss; a diverged or failed run "
        "(non-finite loss) is inf, so any divergence makes that task a loss for the method.",
        "- `final val loss (mean)`: mean over tasks with a finite loss (the others are counted). "
        "`val acc (mean)`: argmax accuracy of the final weights, classifiers only. "
        "`loss / tuned cosine (median)`: median over tasks of the method's loss divided by the tuned cosine's "
        "(scale-free across families; < 1 is better).",
        f"- `reached target`: runs whose validation loss reached the target: {cfg.target.factor:g} x the final "
        f"validation loss of {reference} (same task and seed); `steps to target`: the first validation check at "
        "which it did (median over the runs that did).",
        f"- `agent < method` / `agent <= method` / `agent within {within}`: tasks where the agent's loss is lower than / "
        f"at most / at most {1 + cfg.within:g} x the method's.",
    ]
    for condition in conditions_of(cfg):
        parts += ["", f"## {condition.name}", "", summary_table(cfg, summary[condition.name]), ""]
        parts += ["Per task (final val loss, mean over seeds):", "", task_table(cfg, comparisons[condition.name])]
        for plot in plots.get(condition.name, []):
            parts += ["", f"![{plot.stem}]({plot.name})"]
    text = "\n".join(parts) + "\n"
    path.write_text(text)
    return text


# ------------------------------------------------------------------------------------------------
# Plots


_COLORS = {"constant": "tab:blue", "step_decay": "tab:orange", "cosine": "tab:green", "warmup_cosine": "tab:red"}


def plot_loss_curves(cfg: DictConfig, condition: Condition, tasks: Dict[str, Any], runs, path: Path) -> Path:
    """Validation-loss curves of every method on every task of ``condition`` (first seed), one panel per task.

    Solid lines: schedules at the initial LR; dashed: tuned; black: the agent; an ``x`` marks where
    a run diverged; the dotted line is the steps-to-target target.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    seed = str(cfg.seeds[0])
    n = len(tasks)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols + 1.8, 3.3 * rows), squeeze=False)
    for ax, (task_id, task) in zip(axes.flat, tasks.items()):
        for method, entry in task["seeds"][seed]["methods"].items():
            curve = runs[entry["run"]]["curve"]
            points = [(s, v) for s, v in curve if math.isfinite(v)]
            if method == "agent":
                style = {"color": "black", "linewidth": 2.2, "zorder": 3}
            else:
                schedule, kind = method.split("@")
                style = {"color": _COLORS.get(schedule), "linewidth": 1.2, "linestyle": "-" if kind == "init" else "--"}
            (line,) = ax.plot([p[0] for p in points], [p[1] for p in points], label=method, **style)
            if entry["status"] != "ok" and points:
                ax.plot(*points[-1], marker="x", markersize=8, color=line.get_color())
        target = task["seeds"][seed]["target"]
        if target is not None:
            ax.axhline(target, color="grey", linewidth=0.8, linestyle=":")
        ax.set_yscale("log")
        ax.set_title(f"{task_id}\n{task['name']}", fontsize=7)
        ax.set_xlabel("optimizer step", fontsize=7)
        ax.set_ylabel("val loss", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7)
    fig.suptitle(f"{condition.name}: validation loss (seed {seed}; dotted: target; x: diverged)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / (4.2 * cols + 1.8), 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_schedules(cfg: DictConfig, condition: Condition, tasks: Dict[str, Any], runs, out_dir: Path) -> List[Path]:
    """The agent's per-layer LR schedule (``LRSchedule.plot``) on the first ``schedule_plots`` tasks of each family."""
    from ganno_lightning.schedule import LRSchedule

    per_family: Counter = Counter()
    paths = []
    for task_id, task in tasks.items():
        family = task_id.split("#")[0]
        if per_family[family] >= cfg.schedule_plots:
            continue
        run = runs[task["seeds"][str(cfg.seeds[0])]["methods"]["agent"]["run"]]
        state = run.get("schedule")
        if not state or not state.get("steps"):
            continue
        per_family[family] += 1
        schedule = LRSchedule(state["layer_names"])
        schedule.load_state_dict(state)
        paths.append(schedule.plot(out_dir / f"schedule_{condition.name}_{_slug(task_id)}.png"))
    return paths


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


# ------------------------------------------------------------------------------------------------
# Entry points


def evaluate(cfg: DictConfig) -> Dict[str, Any]:
    """Run the whole evaluation described by a validated config; write every output file.

    Returns:
        The content of ``results.json``, plus ``report`` (the Markdown text).

    Example::

        cfg = load_config("configs/evaluate_smoke.yaml", ["agent.path=agent.pt", "out_dir=runs/eval"])
        results = evaluate(cfg)
        print(results["targets"])
    """
    start = time.perf_counter()
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    agent_file = _agent_path(cfg.agent.path)
    if cfg.agent.path != "default" and not agent_file.is_file():
        raise FileNotFoundError(f"`agent.path`: agent file not found: '{agent_file}'.")
    _load_agent(cfg.agent.path)  # an unreadable or incompatible agent fails here, not in every run
    jobs = plan_runs(cfg)
    log_path = out_dir / _RUNS_FILE
    done = _read_log(log_path) if cfg.resume else {}
    if not cfg.resume and log_path.exists():
        log_path.unlink()
    copied = _copy_baselines(jobs, cfg.baselines_from, done)
    if copied:
        with open(log_path, "a") as f:  # this out_dir stays self-contained: its log holds every run it reports
            f.writelines(json.dumps(run) + "\n" for run in copied)
        print(f"copied {len(copied)} finished baseline runs from {', '.join(cfg.baselines_from)}", flush=True)
    print(f"evaluating {len(jobs)} runs ({len(conditions_of(cfg))} conditions) in {cfg.workers} process(es)",
          flush=True)
    runs = execute(jobs, cfg.workers, log_path, done)
    comparisons = compare(cfg, runs)
    summary = summarise(cfg, comparisons)
    targets = headline_targets(cfg, summary)
    plots: Dict[str, List[Path]] = {}
    for condition in conditions_of(cfg):
        tasks = comparisons[condition.name]
        curves = plot_loss_curves(cfg, condition, tasks, runs, out_dir / f"loss_curves_{condition.name}.png")
        plots[condition.name] = [curves, *plot_schedules(cfg, condition, tasks, runs, out_dir)]
    seconds = time.perf_counter() - start
    report = write_report(cfg, out_dir / "report.md", comparisons, summary, targets, runs, plots, seconds)
    results = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "conditions": [dataclasses.asdict(c) for c in conditions_of(cfg)],
        "targets": targets,
        "summary": summary,
        "comparisons": comparisons,
        "runs": [runs[job["id"]] for job in jobs],
        "seconds": seconds,
    }
    tmp = out_dir / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, out_dir / "results.json")
    if cfg.wandb.enabled and cfg.wandb.mode != "disabled":
        _log_wandb(cfg, summary, targets, plots, out_dir)
    return {**results, "report": report}


def _log_wandb(cfg: DictConfig, summary, targets, plots, out_dir: Path) -> None:
    import wandb

    run = wandb.init(project=cfg.wandb.project, name=cfg.wandb.name, mode=cfg.wandb.mode, dir=str(out_dir),
                     config=OmegaConf.to_container(cfg, resolve=True), job_type="evaluate")
    try:
        columns = ["condition", "method", *[k for k in next(iter(next(iter(summary.values())).values()))]]
        table = wandb.Table(columns=columns)
        for condition, rows in summary.items():
            for method, row in rows.items():
                table.add_data(condition, method, *[_json_safe(v) for v in row.values()])
        run.log({"evaluate/summary": table,
                 "evaluate/targets": wandb.Table(columns=list(targets[0]), data=[list(t.values()) for t in targets])
                 if targets else None})
        for condition, paths in plots.items():
            run.log({f"evaluate/{condition}/{p.stem}": wandb.Image(str(p)) for p in paths})
        for t in targets:
            run.summary[f"targets/{t['condition']}/{t['comparison']}"] = t["percent"]
    finally:
        run.finish()


def _json_safe(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m agents.evaluate CONFIG.yaml [key=value ...]``; prints the summary tables.

    Returns:
        0, or 1 if any run failed with an error (divergence is a result, not a failure).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("Config keys and defaults:\n" + OmegaConf.to_yaml(OmegaConf.structured(EvaluateConfig)))
        return 0 if argv else 2
    cfg = load_config(argv[0], argv[1:])
    results = evaluate(cfg)
    print()
    print(targets_table(results["targets"]))
    for condition, rows in results["summary"].items():
        print(f"\n{condition}\n{summary_table(cfg, rows)}")
    print(f"\nreport: {Path(cfg.out_dir) / 'report.md'}; every run: {Path(cfg.out_dir) / 'results.json'}")
    failed = sum(r["status"] == "failed" for r in results["runs"])
    if failed:
        print(f"{failed} run(s) failed with an error; see `reason` in results.json.", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
