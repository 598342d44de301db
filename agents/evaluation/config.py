"""The evaluation's config: its schema, loading and checks, and the suite's deeper families."""

import difflib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from ganno_lightning import config as shared
from ganno_lightning.agents.baselines import SCHEDULES
from ganno_lightning.agents.peers import PEERS, PEERS_EXTRA, missing_packages
from ganno_lightning.config import WandbConfig, check_wandb
from ganno_lightning.layerwise.actions import (
    DEFAULT_EXPLORATION,
    check_exploration,
    check_min_change,
    check_scale_bounds,
)
from ganno_lightning.layerwise.decisions import SCALED_INTERVAL, resolve_decision_steps
from ganno_lightning.layerwise.lr_search import check_lr_search
from ganno_lightning.layerwise.prior import check_prior, check_prior_above
from ganno_lightning.layerwise.rollback import DEFAULT_SPIKE_LR_CUT, check_spike_settings

# Schedules every evaluation needs: the headline targets compare with constant and cosine.
_REQUIRED_SCHEDULES = ("constant", "cosine")
RUNS_FILE = "runs.jsonl"
_SPLITS = ("train", "heldout")


# ------------------------------------------------------------------------------------------------
# Config


@dataclass
class AgentConfig:
    path: str = "default"  # agent file (GANNOAgent.save), or "default" for the agent shipped in the package
    # optimizer steps between decisions, or "scaled" (the agent's, stretched to the run's length); null: the agent's own
    interval: Any = None
    decision_steps: Any = None  # as GANNOCallback: early decisions ([0, 5, 12], front_loaded, none); null: the agent's own
    exploration: str = DEFAULT_EXPLORATION  # as GANNOCallback: mean (expected change), mode (likeliest action), random
    # as GANNOCallback: roll back to the last good decision and cut the LRs on a spike; null: the agent's own
    recover_on_spike: Optional[bool] = None
    spike_factor: Optional[float] = None  # as GANNOCallback, with recover_on_spike; null: the agent's rule's, else 3
    scale_bounds: Any = None  # as GANNOCallback: [low, high] of every layer's LR scale; null: the agent's own
    min_change: Any = None  # as GANNOCallback: smaller LR changes either way are skipped; null: every change (1)
    # the user's own LR schedule under the agent (a scheduler in configure_optimizers, a key of SCHEDULES);
    # null: none, a constant LR. Compare the agent with `<schedule>@init`, the same schedule without it.
    schedule: Optional[str] = None
    # as GANNOCallback: the LR prior under the scales when the user has no schedule (none, cosine, warmup_cosine);
    # null: the agent's own
    prior: Optional[str] = None
    # as GANNOCallback: the prior acts only in fits of more steps; null: the agent's own with the agent's own prior,
    # 0 (every fit) with another `agent.prior`
    prior_above: Optional[int] = None
    # as GANNOCallback: short trials at factors of the run's LR before the fit, which then starts at the best one:
    # true (the defaults), false (none), or a mapping of steps, factors, held_batches; null: the agent's own
    lr_search: Any = None


@dataclass
class SuiteEntry:
    family: str = MISSING  # a zoo family: mlp_digits, cnn_digits, teacher_student, sequence
    split: str = "heldout"  # ranges the tasks are drawn from: heldout (generalisation) or train
    tasks: int = 3  # tasks drawn from the family
    # The ranges the agent was meta-trained on (over the family's defaults); `deeper` doubles their max depth.
    train: Optional[Dict[str, Any]] = None
    heldout: Optional[Dict[str, Any]] = None  # held-out range overrides (over the family's)
    # "ranges": the task's LR from its `lr` range; "around_best": 0.1x-10x its calibrated best LR
    lr_sampling: str = "ranges"
    # this entry's run length and validation spacing; null: the top-level `steps` / `val_every`
    steps: Optional[int] = None
    val_every: Optional[int] = None


@dataclass
class TargetConfig:
    reference: str = "constant"  # whose final val loss is the target: "constant" (@init) or "tuned_cosine"
    factor: float = 1.0  # target = factor x the reference's final val loss (e.g. 1.05: within 5%)


@dataclass
class EvaluateConfig:
    agent: AgentConfig = field(default_factory=AgentConfig)  # `agent: path.pt` is short for `agent: {path: path.pt}`
    suite: List[SuiteEntry] = field(default_factory=lambda: [SuiteEntry(family="mlp_digits")])
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])  # one run per seed (weights, data order)
    steps: int = 500  # optimizer steps per run
    val_every: int = 25  # optimizer steps between validation checks (the points of each loss curve)
    lr_grid: List[float] = field(default_factory=lambda: [0.1, 0.3, 1.0, 3.0, 10.0])  # tuning: x the task's LR
    # grow a (task, schedule)'s grid past an edge its best LR sits on, by the grid's spacing, up to 1e-3x..1e3x
    extend_grid: bool = True
    init_lr_factors: List[float] = field(default_factory=lambda: [1.0, 10.0, 0.1])  # one condition each
    # The noise floor: the constant LR also at these multiples of each condition's LR (e.g. [0.97, 1.03]),
    # scored on the agent's targets. A change that small should not matter, so what it "harms" is chance.
    noise_factors: List[float] = field(default_factory=list)
    deeper: bool = True  # add the `deeper_x2` condition (twice the meta-training max depth)
    schedules: List[str] = field(default_factory=lambda: list(SCHEDULES))  # baselines, from ganno_lightning.agents.baselines
    # LR-free and adaptive optimizers, from ganno_lightning.agents.peers (the `peers` extra); none by default
    peers: List[str] = field(default_factory=list)
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
    # Add this evaluation's finished baseline runs to this gzip-compressed log (``*.jsonl.gz``; runs of
    # other evaluations already in it stay), which `baselines_from` reads: commit it beside the report so
    # that the suite's yardstick outlives the run directory. Runs of another torch version are not reused.
    baselines_to: Optional[str] = None
    # Run only the tasks whose ids match one of these patterns (fnmatch: "transformer_seq#*", "*@3000steps")
    # and stop before the report: a share of the evaluation for another machine. Appending every
    # share's runs.jsonl to one out_dir and rerunning without it reports the whole evaluation.
    only_tasks: List[str] = field(default_factory=list)
    out_dir: str = "runs/evaluate"
    wandb: WandbConfig = field(default_factory=lambda: WandbConfig(project="ganno-evaluate"))  # tables and plots


def load_config(
    config: Union[str, os.PathLike, dict, DictConfig, EvaluateConfig, None] = None, overrides=()
) -> DictConfig:
    """Merge a YAML file (or dict) and ``key=value`` overrides onto :class:`EvaluateConfig`, then validate.

    Args:
        config: Path of a YAML file, a dict, a ``DictConfig``, an :class:`EvaluateConfig` or ``None``
            (the defaults). ``agent: path.pt`` (and the override ``agent=path.pt``) is short for
            ``agent: {path: path.pt}``.
        overrides: ``key=value`` strings (omegaconf dotlist) applied on top.

    Returns:
        The merged, validated config.

    Raises:
        ValueError: For an unknown key (named with its dotted path, e.g. ``suite[0].famly``), a
            value of the wrong type, a missing file, or an invalid setting (empty suite,
            non-positive LR multiplier, unknown family, schedule or peer, a peer whose package is missing, ...).

    Example::

        >>> cfg = load_config({"suite": [{"family": "sequence", "tasks": 2}]}, ["steps=200", "val_every=50"])
        >>> cfg.suite[0].split, cfg.steps, list(cfg.lr_grid)
        ('heldout', 200, [0.1, 0.3, 1.0, 3.0, 10.0])
        >>> load_config({"sede": [0]})
        Traceback (most recent call last):
        ...
        ValueError: Unknown config key `sede` in the config (did you mean `seeds`?). ...
    """
    cfg = shared.load_config(EvaluateConfig, config, overrides, see="configs/evaluate.yaml",
                             shorthands={"agent": "path"})
    validate_config(cfg)
    return cfg


def validate_config(cfg: DictConfig) -> None:
    """Check values the schema's types cannot: ranges, non-empty lists, known names.

    Raises:
        ValueError: Naming the first invalid key, the value received and how to fix it.
    """
    from ganno_lightning.envs.tasks import FAMILIES, make_family

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
        make_family(entry.family, train=entry.train, heldout=entry.heldout, prefix=prefix,
                    lr_sampling=entry.lr_sampling)
        if cfg.deeper:  # fails now, not in every worker
            deeper_family(entry.family, entry.split, entry.train, entry.heldout, prefix, entry.lr_sampling)
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ValueError(f"`seeds` must be a non-empty list of distinct ints, got {list(cfg.seeds)}.")
    _check_length(cfg.steps, cfg.val_every, "")
    lengths: Dict[tuple, int] = {}
    for i, entry in enumerate(cfg.suite):
        steps, val_every = entry_length(cfg, entry)
        _check_length(steps, val_every, f"suite[{i}].")
        key = (entry.family, entry.steps)
        if key in lengths:  # their tasks would share ids (`mlp_digits#0`) and be one task
            raise ValueError(
                f"`suite[{lengths[key]}]` and `suite[{i}]` both draw `{entry.family}` tasks of {steps} steps: merge "
                f"them into one entry (tasks: N), or give one of them its own `steps`."
            )
        lengths[key] = i
    for key in ("lr_grid", "init_lr_factors"):
        values = list(cfg[key])
        if not values or not all(math.isfinite(v) and v > 0 for v in values) or len(set(values)) != len(values):
            raise ValueError(
                f"`{key}` must be a non-empty list of distinct positive finite multipliers of the task's LR, "
                f"got {values}. E.g. [0.1, 0.3, 1.0, 3.0, 10.0]."
            )
    noise = list(cfg.noise_factors)
    names = [f"{v:g}" for v in noise]  # as runs and methods name them: two factors must not share a name
    if not all(math.isfinite(v) and v > 0 for v in noise) or "1" in names or len(set(names)) != len(names):
        raise ValueError(f"`noise_factors` must list distinct positive finite multipliers other than 1 (the constant "
                         f"LR itself), distinct to 6 significant digits (runs are named by them), got {noise}. "
                         f"E.g. [0.97, 1.03]; [] for no noise floor.")
    if cfg.agent.schedule is not None and cfg.agent.schedule not in SCHEDULES:
        raise ValueError(f"`agent.schedule` must be null (a constant LR under the agent) or one of {list(SCHEDULES)}, "
                         f"got {cfg.agent.schedule!r}.")
    unknown = [s for s in cfg.schedules if s not in SCHEDULES]
    if unknown:
        raise ValueError(f"`schedules` has unknown schedule(s) {unknown}; known: {list(SCHEDULES)}.")
    missing = [s for s in _REQUIRED_SCHEDULES if s not in cfg.schedules]
    if missing or len(set(cfg.schedules)) != len(cfg.schedules):
        raise ValueError(
            f"`schedules` must be distinct and include {list(_REQUIRED_SCHEDULES)} (the targets compare with them), "
            f"got {list(cfg.schedules)}."
        )
    unknown = [p for p in cfg.peers if p not in PEERS]
    if unknown:
        raise ValueError(f"`peers` has unknown peer(s) {unknown}; known: {list(PEERS)}.")
    if len(set(cfg.peers)) != len(cfg.peers):
        raise ValueError(f"`peers` must be distinct, got {list(cfg.peers)}.")
    missing = missing_packages(list(cfg.peers))
    if missing:
        raise ValueError(f"`peers` {list(cfg.peers)} need(s) the package(s) {missing}, not installed: {PEERS_EXTRA}.")
    if cfg.target.reference not in ("constant", "tuned_cosine"):
        raise ValueError(f"`target.reference` must be 'constant' or 'tuned_cosine', got {cfg.target.reference!r}.")
    if not (math.isfinite(cfg.target.factor) and cfg.target.factor > 0):
        raise ValueError(f"`target.factor` must be a positive finite number, got {cfg.target.factor!r}.")
    if not (math.isfinite(cfg.within) and cfg.within >= 0):
        raise ValueError(f"`within` must be a finite number >= 0 (0.05 for 5%), got {cfg.within!r}.")
    interval = cfg.agent.interval
    if interval not in (None, SCALED_INTERVAL) and (isinstance(interval, bool) or not isinstance(interval, int)
                                                    or interval < 1):
        raise ValueError(f"`agent.interval` must be an int >= 1, {SCALED_INTERVAL!r} (the agent's own, stretched to "
                         f"each run's length) or null (the agent's own), got {interval!r}.")
    if cfg.agent.decision_steps is not None:
        resolve_decision_steps(plain_value(cfg.agent.decision_steps), 1, "agent.decision_steps")
    if cfg.agent.scale_bounds is not None:
        check_scale_bounds(plain_value(cfg.agent.scale_bounds), "agent.scale_bounds")
    if cfg.agent.min_change is not None:
        check_min_change(cfg.agent.min_change, "agent.min_change")
    if cfg.agent.spike_factor is not None:
        if cfg.agent.recover_on_spike is False:
            raise ValueError(f"`agent.spike_factor` ({cfg.agent.spike_factor!r}) does not act with "
                             "`agent.recover_on_spike=false`; drop one of them.")
        check_spike_settings(cfg.agent.spike_factor, DEFAULT_SPIKE_LR_CUT, "agent.")
    if cfg.agent.prior is not None:
        check_prior(cfg.agent.prior, "agent.prior")
    if cfg.agent.prior_above is not None:
        check_prior_above(cfg.agent.prior_above, "agent.prior_above")
    if cfg.agent.lr_search is not None:
        check_lr_search(plain_value(cfg.agent.lr_search), "agent.lr_search")
    check_exploration(cfg.agent.exploration, "agent.exploration")
    _at_least(cfg.schedule_plots, "schedule_plots", 0)
    for i, source in enumerate(cfg.baselines_from):
        if not runs_log_path(source).is_file():
            raise ValueError(f"`baselines_from[{i}]`: no evaluation log at '{runs_log_path(source)}'; give the out_dir "
                             f"of an earlier `ganno-evaluate` run (it holds {RUNS_FILE}) or a `baselines_to` archive "
                             f"(*.jsonl.gz), got {source!r}.")
    if cfg.baselines_to is not None and not str(cfg.baselines_to).endswith(".jsonl.gz"):
        raise ValueError(f"`baselines_to` must name a gzip-compressed log ending in '.jsonl.gz' (which "
                         f"`baselines_from` reads), got {cfg.baselines_to!r}.")
    _at_least(cfg.workers, "workers", 1)
    _at_least(cfg.torch_threads, "torch_threads", 1)
    check_wandb(cfg.wandb)


def entry_length(cfg: DictConfig, entry: DictConfig) -> Tuple[int, int]:
    """A suite entry's ``(steps, val_every)``: its own where set, else the config's."""
    steps = cfg.steps if entry.steps is None else entry.steps
    return steps, cfg.val_every if entry.val_every is None else entry.val_every


def _check_length(steps: Any, val_every: Any, prefix: str) -> None:
    _at_least(steps, f"{prefix}steps", 1)
    _at_least(val_every, f"{prefix}val_every", 1)
    if steps % val_every:
        suggestion = steps - steps % val_every or val_every
        raise ValueError(
            f"`{prefix}steps` ({steps}) must be a multiple of `{prefix}val_every` ({val_every}), so that the last "
            f"validation check is at the last step (the final val loss). E.g. {prefix}steps={suggestion}."
        )


def _at_least(value: Any, key: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{key}` must be an int >= {minimum}, got {value!r}.")


def deeper_family(name: str, split: str, train: Optional[dict], heldout: Optional[dict], prefix: str = "suite",
                  lr_sampling: str = "ranges"):
    """The family ``name`` with ``split``'s depth fixed to twice the max depth of its ``train`` ranges.

    Only the depth changes: the other ranges of ``split`` stay as configured.

    Example::

        >>> deeper_family("mlp_digits", "heldout", {"depth": [1, 3]}, None).ranges("heldout").depth
        (6, 6)
    """
    from ganno_lightning.envs.tasks import make_family

    family = make_family(name, train=train, heldout=heldout, prefix=prefix)
    depth = 2 * family.ranges("train").depth[1]
    sections = {"train": plain_value(train), "heldout": plain_value(heldout)}
    sections[split] = {**(sections[split] or {}), "depth": [depth, depth]}
    return make_family(name, train=sections["train"], heldout=sections["heldout"], prefix=f"{prefix}(deeper)",
                       lr_sampling=lr_sampling)


def plain_value(section: Any) -> Any:
    """A config node as plain Python (lists, dicts); anything else as it is."""
    return OmegaConf.to_container(section, resolve=True) if OmegaConf.is_config(section) else section


def runs_log_path(source: str) -> Path:
    """The run log a ``baselines_from`` entry names: a ``.jsonl`` or ``.jsonl.gz`` file, else an out_dir's.

    Example::

        >>> runs_log_path("benchmarks/results/dev_baselines.jsonl.gz").name, runs_log_path("runs/evaluate").name
        ('dev_baselines.jsonl.gz', 'runs.jsonl')
    """
    path = Path(source)
    return path if path.name.endswith((".jsonl", ".jsonl.gz")) else path / RUNS_FILE
