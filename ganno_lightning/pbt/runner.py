"""Run a PBT population on one machine: one process per member, all sharing a population directory.

Usage::

    ganno-pbt configs/pbt_digits.yaml population_dir=runs/digits max_epochs=30

The coordinator process checks the configuration and the task (monitored metric logged, every
hyperparameter settable) before any member starts, registers each member with its initial values
drawn from the prior, then starts the members as separate Python processes and waits. Members talk
only through ``population_dir`` (SQLite store + atomic checkpoints), so a killed member loses nothing
others depend on. Running the same command again resumes: finished members are skipped and every
other member continues from its last committed checkpoint. Running it again with a larger
``max_epochs`` trains the whole population on from its final checkpoints to the new length; a
smaller one is refused. While members train, the console (stderr) shows one line per report and per
exploit. At the end it writes ``best.ckpt``, ``lineage.json``, ``schedules.csv``, ``schedules.png``
and ``summary.json`` into the population directory, and prints the summary as JSON on stdout.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ganno_lightning import config as shared
from ganno_lightning.config import ConfigCommandLine, WandbConfig, check_wandb
from ganno_lightning.files import atomic_file, atomic_write_bytes, check_writable_dir
from ganno_lightning.imports import check_keywords, import_object, keyword_parameters
from ganno_lightning.pbt.core import Explorer, PBTStrategy, make_exploiter
from ganno_lightning.pbt.store import PopulationStore
from ganno_lightning.trials.trainer import LENGTH_ARGUMENTS
from ganno_lightning.tuning.space import HyperparameterSpec, parse_space

__all__ = [
    "HyperparameterSpec", "PopulationConfig", "check_max_epochs", "check_trainer_kwargs", "checked_config_and_dir",
    "load_config", "log_summary_to_wandb", "member_wandb_logger", "prepare_population", "run_population",
    "write_outputs",
]


@dataclass
class PopulationConfig:
    population_dir: str = "runs/pbt"  # shared by all members: store, checkpoints, logs, outputs
    population_size: int = 4  # members, trained concurrently, one process each
    max_epochs: int = 20  # training length of every member
    seed: int = 0  # seeds initial values, model init (seed + member) and exploit/explore streams
    task: str = "ganno_lightning.examples.digits:digits_task"  # "module:function" -> (LightningModule, DataModule)
    task_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the task factory
    hyperparameters: dict[str, HyperparameterSpec] = field(default_factory=dict)  # the search space
    setters: dict[str, str] = field(default_factory=dict)  # "module:attr" / "callback:Class.attr" for custom names
    monitor: str = "val_loss"  # metric members are ranked by
    mode: str = "min"  # "min" or "max"
    ready_interval: int = 2  # decide every this many ready_units
    ready_unit: str = "epoch"  # "epoch" or "step"
    exploit: str = "truncation"  # "truncation", "tournament", or "none" (independent runs baseline)
    quantile: float = 0.25  # truncation: bottom quantile copies top quantile
    perturb_factors: list[float] = field(default_factory=lambda: [0.8, 1.2])  # explore multipliers
    resample_probability: float = 0.25  # explore: chance of drawing from the prior instead
    min_population: int = 0  # members that must have reported before exploiting; 0 = population_size
    synchronous: bool = False  # rank members at the same step (wait for slower ones) instead of latest reports
    sync_timeout: float = 600.0  # seconds a synchronous member waits for slower ones
    max_restarts: int = 0  # restart a crashed member this many times within one run
    preflight: bool = True  # one tiny fit in the coordinator to check metric and setters first
    threads_per_member: int = 1  # torch threads per member process
    trainer: dict[str, Any] = field(default_factory=dict)  # extra lightning.Trainer keyword arguments
    # one W&B run per member (group = population) plus a summary run
    wandb: WandbConfig = field(default_factory=lambda: WandbConfig(project="ganno-pbt"))


def load_config(path: str | os.PathLike | dict | None = None, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Merge a YAML file and ``key=value`` overrides onto :class:`PopulationConfig`, then validate.

    ``perturb_factors[0]=0.5`` sets one entry of a list; ``hyperparameters.wd.low=1e-5`` adds an entry.

    Raises:
        ValueError: naming an unknown key, a value of the wrong type or an invalid setting.
    """
    config = shared.load_config(PopulationConfig, path, overrides, see="configs/pbt_digits.yaml")
    validate_config(config)
    return config


def validate_config(config: DictConfig) -> PBTStrategy:
    """Every check that needs no training: sizes, search space, setters, exploit/explore arguments."""
    from ganno_lightning.tuning.setters import resolve_setters

    if config.population_size < 2:
        raise ValueError(f"`population_size` must be at least 2, got {config.population_size}.")
    if config.max_epochs < 1:
        raise ValueError(f"`max_epochs` must be a positive int, got {config.max_epochs}.")
    if config.sync_timeout < 0:
        raise ValueError(f"`sync_timeout` must be a number of seconds >= 0, got {config.sync_timeout}.")
    if config.min_population < 0 or config.min_population > config.population_size:
        raise ValueError(
            f"`min_population` must be in [0, population_size={config.population_size}], got {config.min_population}."
        )
    if config.max_restarts < 0 or config.threads_per_member < 1:
        raise ValueError("`max_restarts` must be >= 0 and `threads_per_member` >= 1.")
    if ":" not in config.task:
        raise ValueError(f"`task` must look like 'package.module:function', got {config.task!r}.")
    space = parse_space(OmegaConf.to_container(config.hyperparameters))  # type: ignore[arg-type]
    resolve_setters(list(space), dict(config.setters))
    strategy = PBTStrategy(
        space,
        mode=config.mode,
        exploit=make_exploiter(config.exploit, config.quantile),
        explorer=Explorer(tuple(config.perturb_factors), config.resample_probability),  # type: ignore[arg-type]
    )
    from ganno_lightning.pbt.core import ReadyCriterion

    ReadyCriterion(config.ready_interval, config.ready_unit)
    check_wandb(config.wandb)
    check_trainer_kwargs(config)
    return strategy


#: Trainer arguments the runner sets for every member itself.
_RUNNER_TRAINER_ARGUMENTS = ("callbacks", "logger", "enable_checkpointing")


def check_trainer_kwargs(config: DictConfig) -> None:
    """``config.trainer`` must hold only ``lightning.pytorch.Trainer`` arguments the runner leaves to the user.

    Raises:
        ValueError: naming the first key that sets the training length (that is ``max_epochs``), one
            the runner sets itself, or one that ``Trainer`` does not take.
    """
    kwargs = OmegaConf.to_container(config.trainer)
    for key, value in kwargs.items():  # type: ignore[union-attr]
        if key in LENGTH_ARGUMENTS:
            raise ValueError(
                f"`trainer.{key}` is {value!r}, but every member trains for the config's own `max_epochs`"
                f" ({config.max_epochs}). Remove `trainer.{key}` and set `max_epochs` instead."
            )
        if key in _RUNNER_TRAINER_ARGUMENTS:
            raise ValueError(
                f"`trainer.{key}` is {value!r}, but the runner sets `{key}` itself (the PBT callback, a CSV/W&B logger"
                f" per member and PBT's own checkpoints). Remove `trainer.{key}`."
            )
    if kwargs:
        import lightning.pytorch as pl

        check_keywords(pl.Trainer, kwargs, "trainer", "`lightning.pytorch.Trainer`",  # type: ignore[arg-type]
                       list_taken=False)


def _load_task(config: DictConfig, seed: int) -> tuple[Any, Any]:
    factory, kwargs = _task_factory(config)
    return factory(seed=seed, **kwargs)


def _task_factory(config: DictConfig) -> tuple[Any, dict[str, Any]]:
    """The task factory and ``task_kwargs``, checked against each other (see :func:`_check_task_kwargs`)."""
    factory = import_object(config.task, argument="task")
    kwargs = OmegaConf.to_container(config.task_kwargs)
    _check_task_kwargs(config.task, factory, kwargs)  # type: ignore[arg-type]
    return factory, kwargs  # type: ignore[return-value]


def _check_task_kwargs(task: str, factory: Any, kwargs: dict[str, Any]) -> None:
    """The factory must take ``seed`` and every key of ``task_kwargs``: a ValueError naming the key, not a TypeError."""
    if "seed" in kwargs:
        raise ValueError(
            f"`task_kwargs.seed` is {kwargs['seed']!r}, but the runner passes each member `seed` + member index."
            " Remove `task_kwargs.seed` and set `seed` instead."
        )
    parameters = keyword_parameters(factory)
    if parameters is not None and "seed" not in parameters:
        raise ValueError(f"`task` {task!r} must take a `seed` argument (each member's seed), but it takes"
                         f" {', '.join(parameters) or 'no keyword arguments'}.")
    check_keywords(factory, kwargs, "task_kwargs", f"`task` {task!r}", provided=["seed"])


def initial_values(config: DictConfig, strategy: PBTStrategy, member: int) -> dict[str, float]:
    """Member ``member``'s starting values: a draw from the prior, reproducible from ``seed``."""
    return strategy.sample(random.Random(zlib.crc32(f"init-{config.seed}-{member}".encode())))


def _make_callback(config: DictConfig, member: int) -> Any:
    from ganno_lightning.pbt.callback import PBTCallback

    return PBTCallback(
        population_dir=config.population_dir,
        member=member,
        hyperparameters=OmegaConf.to_container(config.hyperparameters),  # type: ignore[arg-type]
        monitor=config.monitor,
        mode=config.mode,
        ready_interval=config.ready_interval,
        ready_unit=config.ready_unit,
        exploit=config.exploit,
        quantile=config.quantile,
        perturb_factors=tuple(config.perturb_factors),  # type: ignore[arg-type]
        resample_probability=config.resample_probability,
        setters=dict(config.setters),
        min_population=config.min_population or config.population_size,
        synchronous=config.synchronous,
        sync_timeout=config.sync_timeout,
        seed=config.seed,
    )


def preflight(config: DictConfig) -> None:
    """Fit two batches in this process: the monitored metric must be logged and every setter must apply.

    See :func:`~ganno_lightning.trials.preflight.preflight_fit`; a callback applies every
    hyperparameter's setter (at its ``low`` end) to the real optimizer and module at fit start.

    Raises:
        ValueError: if ``monitor`` is never logged (naming what is), a setter cannot act, the task
            cannot be built, the Trainer refuses ``trainer``, or the fit raises.
    """
    import lightning.pytorch as pl

    from ganno_lightning.trials.preflight import preflight_fit
    from ganno_lightning.tuning.setters import resolve_setters

    space = parse_space(OmegaConf.to_container(config.hyperparameters))  # type: ignore[arg-type]
    setters = resolve_setters(list(space), dict(config.setters))

    class _ApplySetters(pl.Callback):
        def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            for name, setter in setters.items():
                setter.validate(trainer, pl_module, name)
                setter.apply(trainer, pl_module, space[name].clip(space[name].low))

    factory, kwargs = _task_factory(config)  # a bad `task` or `task_kwargs` names its key, unwrapped
    preflight_fit(
        lambda: factory(seed=config.seed, **kwargs),
        config.monitor,
        task=f"`task` {config.task!r}",
        skip="preflight",
        trainer_kwargs=OmegaConf.to_container(config.trainer),  # type: ignore[arg-type]
        trainer_key="trainer",
        callbacks=[_ApplySetters()],
        batches=2,
        threads=config.threads_per_member,
    )


def member_wandb_logger(config: DictConfig, member: int) -> Any:
    """Member ``member``'s ``WandbLogger``, or ``None`` when ``wandb`` is off; used by both runners.

    One W&B run per member: group the population folder's name, name ``member_NNN``, id
    ``{group}-member_NNN-{seed}`` and ``resume="allow"``, so a resumed, restarted or exploiting member
    continues its own run (in offline mode each start is a directory of its own with that id).
    """
    if not _wandb_on(config):
        return None
    from lightning.pytorch.loggers import WandbLogger

    group, name = Path(config.population_dir).resolve().name, f"member_{member:03d}"
    return WandbLogger(
        project=config.wandb.project, group=group, name=name, id=f"{group}-{name}-{config.seed}",
        save_dir=str(config.population_dir), offline=config.wandb.mode == "offline", resume="allow",
        config=OmegaConf.to_container(config),
    )


def run_member(config: DictConfig, member: int) -> None:
    """Train one member to the end (or resume it from its last committed checkpoint)."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.loggers import CSVLogger

    torch.set_num_threads(config.threads_per_member)
    store = PopulationStore(config.population_dir)
    record = store.members().get(member)
    if record is not None and record.status == "done":
        return
    ckpt_path = record.checkpoint if record is not None and record.checkpoint else None
    if ckpt_path is not None and not Path(ckpt_path).exists():
        raise FileNotFoundError(f"Member {member}'s last committed checkpoint {ckpt_path!r} is missing.")
    if ckpt_path is not None:
        ckpt_path = _readable_checkpoint(store, member, ckpt_path)
    store.set_status(member, "running")

    model, data = _load_task(config, seed=config.seed + member)
    name = f"member_{member:03d}"
    loggers: list[Any] = [CSVLogger(Path(config.population_dir) / "logs", name=name)]
    wandb_logger = member_wandb_logger(config, member)
    if wandb_logger is not None:
        loggers.append(wandb_logger)
    trainer_kwargs = dict(OmegaConf.to_container(config.trainer))  # type: ignore[arg-type]
    trainer_kwargs.setdefault("enable_progress_bar", False)
    trainer_kwargs.setdefault("enable_model_summary", False)
    trainer_kwargs.setdefault("log_every_n_steps", 10)
    trainer = pl.Trainer(
        max_epochs=config.max_epochs,
        callbacks=[_make_callback(config, member)],
        logger=loggers,
        enable_checkpointing=False,  # PBT writes its own atomic checkpoints
        **trainer_kwargs,
    )
    trainer.fit(model, data, ckpt_path=ckpt_path)
    for logger in loggers:
        if hasattr(logger, "experiment") and hasattr(logger.experiment, "finish"):
            logger.experiment.finish()


def _readable_checkpoint(store: PopulationStore, member: int, committed: str) -> str:
    """``committed`` if it can be read, else the newest older checkpoint of ``member`` that can (with a warning).

    Raises:
        RuntimeError: if none of them can be read.
    """
    from lightning.pytorch.utilities.rank_zero import rank_zero_warn

    from ganno_lightning.pbt.callback import read_checkpoint

    on_disk = store.checkpoints(member)  # oldest first
    names = [p.name for p in on_disk]
    position = names.index(Path(committed).name) if Path(committed).name in names else 0
    older = [str(p) for p in reversed(on_disk[:position])]  # newer files were never committed: not these
    for candidate in [committed, *older]:
        if read_checkpoint(candidate) is not None:  # warns naming each damaged file
            if candidate != committed:
                rank_zero_warn(f"PBT member {member} resumes from its previous checkpoint {candidate!r}, because its"
                               f" latest one {committed!r} is damaged; it repeats the steps in between.")
            return candidate
    raise RuntimeError(
        f"Member {member} has no readable checkpoint: {committed!r} and the {len(older)} older one(s) in"
        f" {str(store.checkpoint_dir(member))!r} are damaged. Use a new `population_dir` to start again."
    )


def _pid_file(config: DictConfig, member: int) -> Path:
    return Path(config.population_dir) / "members" / f"member_{member:03d}.pid"


def _failure_file(config: DictConfig, member: int) -> Path:
    # a member's last error, one line, for the coordinator's final message
    return Path(config.population_dir) / "members" / f"member_{member:03d}.error"


def _record_failure(config: DictConfig, member: int, err: BaseException) -> None:
    try:
        line = " ".join(f"{type(err).__name__}: {err}".split())[:1000]
        atomic_write_bytes(_failure_file(config, member), line.encode())
    except OSError:  # the member's own error, in its log, matters more
        pass


def _start_member(config_path: Path, config: DictConfig, member: int) -> subprocess.Popen:
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(config.threads_per_member)
    log_path = Path(config.population_dir) / "logs" / f"member_{member:03d}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _failure_file(config, member).unlink(missing_ok=True)  # an error of an earlier attempt
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ganno_lightning.pbt.runner", "--member", str(member), str(config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    atomic_write_bytes(_pid_file(config, member), str(proc.pid).encode())
    return proc


def _say(line: str) -> None:
    # the coordinator's console: stderr, so that stdout carries only the JSON summary
    print(f"ganno-pbt: {line}", file=sys.stderr, flush=True)


def _values(values: dict[str, float]) -> str:
    return " ".join(f"{name}={value:.4g}" for name, value in values.items())


def _score(value: float | None) -> str:
    return "nan" if value is None else f"{value:.4g}"


class _ConsoleProgress:
    """One console line for every report and exploit that reaches the store after it was created.

    Example::

        progress = _ConsoleProgress(PopulationStore("runs/pbt"), monitor="val_loss")
        progress.print_new()  # ganno-pbt: member 1 step 40: val_loss=0.4123 lr=0.0123
    """

    def __init__(self, store: PopulationStore, monitor: str) -> None:
        self.store, self.monitor = store, monitor
        self.reports_seen, self.exploits_seen = len(store.history()), len(store.lineage())

    def print_new(self) -> None:
        reports, exploits = self.store.history(self.reports_seen), self.store.lineage(self.exploits_seen)
        self.reports_seen += len(reports)
        self.exploits_seen += len(exploits)
        lines = [
            (r["time"], f"member {r['member']} step {r['step']}: {self.monitor}={_score(r['score'])}"
             f" {_values(r['hyperparameters'])}")
            for r in reports
        ]
        lines += [
            (e.time, f"member {e.member} step {e.step}: copied member {e.donor} ({self.monitor}="
             f"{_score(e.donor_score)}); {_values(e.old_hyperparameters)} -> {_values(e.new_hyperparameters)}")
            for e in exploits
        ]
        for _, line in sorted(lines, key=lambda item: item[0]):
            _say(line)


def check_max_epochs(config: DictConfig) -> int | None:
    """The ``max_epochs`` the population in ``population_dir`` was started (or last extended) with.

    Returns:
        That value, or ``None`` for a new population.

    Raises:
        ValueError: if ``config.max_epochs`` is smaller: a population is resumed or trained on, never shortened.
    """
    config_path = Path(config.population_dir).expanduser() / "config.yaml"
    if not config_path.is_file():
        return None
    trained = shared.load_config(PopulationConfig, config_path).max_epochs  # written by an earlier run
    if config.max_epochs < trained:
        raise ValueError(
            f"`max_epochs` is {config.max_epochs}, but the population in {str(config_path.parent)!r} was started"
            f" with max_epochs={trained} and cannot be shortened. Rerun with max_epochs={trained} to resume it,"
            " a larger value to train it on, or use a new `population_dir`."
        )
    return trained


def run_population(config: DictConfig, progress: bool = True) -> dict[str, Any]:
    """Check, start, resume or extend, and wait for the whole population; then write the outputs.

    A population that ran before resumes with the same ``max_epochs``; with a larger one, every
    member (finished ones too) trains on from its last checkpoint to the new length.

    Args:
        config: a loaded :class:`PopulationConfig`.
        progress: print a line per report and exploit on stderr while members train.

    Returns:
        The summary written to ``summary.json`` (best member, its score, values and checkpoint).

    Raises:
        ValueError / PermissionError: on a bad configuration, task or directory, before any member starts;
            also for a ``max_epochs`` smaller than the population was started with.
        RuntimeError: if members still failed after ``max_restarts`` (rerun the same command to resume);
            the message says whether the others finished, and when every member failed before its
            first report with the same error, that error and that a rerun alone will not help.

    Example::

        from ganno_lightning.pbt.runner import load_config, run_population
        summary = run_population(load_config("configs/pbt_smoke.yaml", ["population_dir=/tmp/pbt"]))
    """
    strategy = prepare_population(config, progress)
    return _train_population(config, strategy, progress)


def checked_config_and_dir(config: DictConfig) -> tuple[PBTStrategy, Path]:
    """:func:`validate_config`, then ``population_dir`` proved writable and made absolute in ``config``.

    Raises:
        ValueError / PermissionError: a bad config or directory, naming it.
    """
    strategy = validate_config(config)
    directory = check_writable_dir(config.population_dir, "population_dir")
    config.population_dir = str(directory)
    return strategy, directory


def prepare_population(config: DictConfig, progress: bool = True) -> PBTStrategy:
    """Every check of :func:`run_population` before a member starts; then register the members.

    Sets ``config.population_dir`` to its absolute path, runs :func:`preflight` on a new population,
    registers every member (or flags finished ones to train on, for a larger ``max_epochs``) and
    writes ``config.yaml``.

    Returns:
        The population's strategy.

    Raises:
        ValueError / PermissionError: on a bad configuration, task or directory (as :func:`run_population`).
    """
    from ganno_lightning.pbt.callback import population_settings

    strategy, directory = checked_config_and_dir(config)
    config_path = directory / "config.yaml"
    trained_epochs = check_max_epochs(config)
    store = PopulationStore(directory)
    store.init_population(population_settings(strategy, config.monitor))
    fresh = not store.members()
    if config.preflight and fresh:
        preflight(config)
    for member in range(config.population_size):
        store.register(member, initial_values(config, strategy, member))
    if trained_epochs is not None and config.max_epochs > trained_epochs:
        if progress:
            _say(f"extending the population from max_epochs={trained_epochs} to {config.max_epochs}")
        # before config.yaml says the new length: a coordinator killed in between extends on the next run
        for member, record in store.members().items():
            if record.status == "done":
                store.set_status(member, "running")  # trains on from its final checkpoint
    atomic_write_bytes(config_path, OmegaConf.to_yaml(config).encode())
    return strategy


def _train_population(config: DictConfig, strategy: PBTStrategy, progress: bool) -> dict[str, Any]:
    """Start the unfinished members of a prepared population, wait, restart, then write the outputs."""
    directory = Path(config.population_dir)
    config_path = directory / "config.yaml"
    store = PopulationStore(directory)
    restarts = {m: 0 for m in range(config.population_size)}
    pending = [m for m, r in store.members().items() if r.status != "done" and m < config.population_size]
    console = _ConsoleProgress(store, config.monitor) if progress else None
    if console is not None and pending:
        _say(f"training members {pending} to max_epochs={config.max_epochs}; logs in {directory / 'logs'}")
    reports_before = len(store.history())
    procs = {m: _start_member(config_path, config, m) for m in pending}
    failed: list[int] = []
    try:
        while procs:
            time.sleep(0.2)
            if console is not None:
                console.print_new()
            for member, proc in list(procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                del procs[member]
                if code == 0 and store.members()[member].status == "done":
                    continue
                if restarts[member] < config.max_restarts:
                    restarts[member] += 1
                    if progress:
                        _say(f"member {member} exited with code {code}; restart {restarts[member]}"
                             f" of {config.max_restarts}")
                    procs[member] = _start_member(config_path, config, member)
                else:
                    store.set_status(member, "failed")  # killed members never say so themselves
                    failed.append(member)
    finally:
        for proc in procs.values():  # only on an interrupt of the coordinator itself
            proc.send_signal(signal.SIGTERM)
    if console is not None:
        console.print_new()  # the reports of the last poll interval
    if failed:
        reported = {r["member"] for r in store.history(reports_before)}
        raise RuntimeError(_failure_message(config, sorted(failed), reported))
    return write_outputs(store, config, strategy)


def _failure_message(config: DictConfig, failed: list[int], reported: set[int]) -> str:
    """What the coordinator says when members failed: whether the others finished, and whether a rerun can help."""
    logs = Path(config.population_dir) / "logs"
    errors = set()
    for member in failed:
        path = _failure_file(config, member)
        errors.add(path.read_text() if path.is_file() else None)
    if len(failed) == config.population_size and not reported & set(failed) and len(errors) == 1 and None not in errors:
        # every member failed before its first report with one error: the same on every rerun
        return (
            f"Every member failed before its first report with the same error: {errors.pop()} (see {logs})."
            " Rerunning alone will not help: fix its cause, then run the same command again to resume."
        )
    others = "none finished" if len(failed) == config.population_size else "the others finished"
    return (
        f"Member(s) {failed} failed (see {logs}); {others}. Run the same command again to resume them from"
        " their last checkpoints."
    )


def write_outputs(store: PopulationStore, config: DictConfig, strategy: PBTStrategy) -> dict[str, Any]:
    """Write best.ckpt, lineage.json, schedules.csv, schedules.png and summary.json (all atomically)."""
    from ganno_lightning.pbt.core import ranked_members
    from ganno_lightning.pbt.plot import plot_schedules

    directory = store.directory
    members = store.members()
    final = {m: r.score for m, r in members.items() if r.score is not None and r.checkpoint}
    if not final:
        raise RuntimeError(f"No member of {str(directory)!r} has reported a score yet.")
    best = ranked_members(final, strategy.mode)[0]
    best_record = members[best]
    with atomic_file(directory / "best.ckpt") as tmp:
        shutil.copyfile(best_record.checkpoint, tmp)  # type: ignore[arg-type]
    schedule, lineage = store.schedule(), store.lineage()
    atomic_write_bytes(directory / "lineage.json", json.dumps([e.to_dict() for e in lineage], indent=1).encode())
    buffer = io.StringIO()
    names = sorted(strategy.space)
    writer = csv.writer(buffer)
    writer.writerow(["member", "step", "event", "score", *names])
    for row in schedule:
        values = (row["hyperparameters"][n] for n in names)
        writer.writerow([row["member"], row["step"], row["event"], row["score"], *values])
    atomic_write_bytes(directory / "schedules.csv", buffer.getvalue().encode())
    plot = plot_schedules(
        schedule, lineage, directory / "schedules.png", {n: d.log for n, d in strategy.space.items()}, config.monitor
    )
    summary = {
        "best_member": best,
        "best_score": best_record.score,
        "monitor": config.monitor,
        "mode": strategy.mode,
        "best_hyperparameters": best_record.hyperparameters,
        "best_checkpoint": str(directory / "best.ckpt"),
        "final_scores": {str(m): s for m, s in final.items()},
        "exploits": len(lineage),
    }
    atomic_write_bytes(directory / "summary.json", json.dumps(summary, indent=1).encode())
    log_summary_to_wandb(config, summary, lineage, plot)
    return summary


def _wandb_on(config: DictConfig) -> bool:
    return bool(config.wandb.enabled) and config.wandb.mode != "disabled"


def log_summary_to_wandb(config: DictConfig, summary: dict[str, Any], lineage: list[Any], plot: Path) -> None:
    """The population's W&B summary run (schedules plot, lineage table, summary), when ``wandb`` is on; used by
    both runners. One run per population, its members' id scheme: a rerun updates it."""
    if not _wandb_on(config):
        return
    import wandb

    group = Path(config.population_dir).resolve().name
    run = wandb.init(  # one summary run per population, its members' id scheme: a rerun updates it
        project=config.wandb.project, group=group, name=config.wandb.name or "population", job_type="pbt-summary",
        id=f"{group}-population-{config.seed}", resume="allow",
        dir=str(config.population_dir), mode=config.wandb.mode, config=OmegaConf.to_container(config),
    )
    columns = ["member", "step", "donor", "donor_step", "score", "donor_score", "old", "new"]
    table = wandb.Table(columns=columns)
    for e in lineage:
        table.add_data(e.member, e.step, e.donor, e.donor_step, e.score, e.donor_score,
                       json.dumps(e.old_hyperparameters), json.dumps(e.new_hyperparameters))
    run.log({"pbt/schedules": wandb.Image(str(plot)), "pbt/lineage": table})
    run.summary.update({k: v for k, v in summary.items() if not isinstance(v, dict)})
    run.finish()


def main(argv: list[str] | None = None) -> int:
    """``ganno-pbt CONFIG.yaml [key=value ...]``; a bad config exits with one line and status 2."""
    cli = ConfigCommandLine("ganno-pbt", __doc__, PopulationConfig,
                            see="configs/pbt_digits.yaml")
    cli.add_argument("--member", type=int, default=None, help=argparse.SUPPRESS)  # internal: run one member
    args = cli.parse_args(argv)
    config = cli.load(load_config, args)
    if args.member is not None:
        try:
            run_member(config, args.member)
        except Exception as err:
            _record_failure(config, args.member, err)
            raise
        return 0
    try:
        # a bad config, task or directory, or one that does not fit the stored population: one line, no traceback
        strategy = prepare_population(config)
    except (ValueError, OSError) as err:
        cli.error(str(err))
    summary = _train_population(config, strategy, progress=True)
    print(json.dumps(summary, indent=1))  # the CLI's result, on stdout
    return 0 if math.isfinite(summary["best_score"]) else 1


if __name__ == "__main__":
    sys.exit(main())
