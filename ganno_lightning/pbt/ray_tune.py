"""The same population on a Ray cluster: Ray Tune's PBT scheduler, with mutated values that stick.

Ray Tune's ``PopulationBasedTraining`` exploits by restarting a trial from a donor's checkpoint with an
explored config. With Lightning the naive route loses the mutation: ``trainer.fit(ckpt_path=...)``
restores the donor's optimizer state *after* ``on_fit_start``, so the donor's learning rate comes back.
:class:`RayTunePBTReporter` applies the config's values in ``on_train_start``, after Lightning's
restore, through the same setters as :class:`~ganno_lightning.pbt.PBTCallback`, and reports the
learning rate actually in effect so that this is checked, not assumed.

Ray is optional and imported lazily: ``pip install "ray[tune]"``. One config serves both runners::

    ganno-pbt-ray configs/pbt_digits.yaml population_dir=/shared/pbt --address auto

On a cluster, ``population_dir`` must be on storage every node can reach (Ray's ``storage_path``).
The outputs are the one-machine runner's: ``best.ckpt``, ``schedules.csv``, ``schedules.png``,
``lineage.json``, ``summary.json`` and ``config.yaml``; with ``wandb.enabled`` the same W&B runs too (one
per member, ids from the member's number, and a population summary run). The members start from the
values ``ganno-pbt`` draws for the same ``seed``, and member ``i`` (Ray's trial ``i``) is seeded ``seed + i``.

Running the same command again resumes: Ray's experiment in ``population_dir/ray_tune`` is restored,
unfinished and failed members continue from their last checkpoints, and a finished population is not
retrained (its outputs are written again). A rerun must keep :data:`RESUMED_SETTINGS`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from ganno_lightning.config import ConfigCommandLine
from ganno_lightning.files import atomic_file, atomic_write_bytes
from ganno_lightning.pbt.core import LineageEvent, ReadyCriterion, ranked_members
from ganno_lightning.tuning.setters import resolve_setters
from ganno_lightning.tuning.space import Hyperparameter, parse_space

__all__ = ["RayTunePBTReporter", "check_population", "make_scheduler", "tune_population"]


def _require_ray() -> Any:
    try:
        import ray
        from ray import tune
    except ImportError as err:  # pragma: no cover - exercised only without ray
        raise ImportError(
            'Running a population on Ray needs Ray Tune: `pip install "ray[tune]>=2.9"`.'
            " On one machine, use `ganno-pbt` instead (no Ray needed)."
        ) from err
    return ray, tune


class RayTunePBTReporter(Callback):
    """Apply a Ray trial's config after Lightning's restore and report to Ray Tune at every ready point.

    Args:
        values: this trial's hyperparameter values (the Ray config entries named in the space).
        space: the search space (for setters and clipping).
        monitor: metric reported to Ray as the PBT objective.
        ready_interval: report every this many ``ready_unit``\\ s (one Ray ``training_iteration``).
        ready_unit: ``"epoch"`` or ``"step"``.
        setters: custom setters, as for :class:`~ganno_lightning.pbt.PBTCallback`.

    Example::

        def trainable(config):
            ckpt = ray.tune.get_checkpoint()
            reporter = RayTunePBTReporter({"lr": config["lr"]}, {"lr": Hyperparameter(1e-4, 1.0, log=True)})
            trainer = Trainer(max_epochs=20, callbacks=[reporter], enable_checkpointing=False)
            with ckpt.as_directory() if ckpt else contextlib.nullcontext() as d:
                trainer.fit(model, data, ckpt_path=f"{d}/member.ckpt" if ckpt else None)
    """

    def __init__(
        self,
        values: Mapping[str, float],
        space: Mapping[str, Hyperparameter],
        monitor: str = "val_loss",
        ready_interval: int = 1,
        ready_unit: str = "epoch",
        setters: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.space = parse_space(space)
        self.values = {name: self.space[name].clip(float(values[name])) for name in self.space}
        self.monitor = monitor
        self.ready = ReadyCriterion(ready_interval, ready_unit)
        self.setters = resolve_setters(list(self.space), setters)
        self._last_ready = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for name, setter in self.setters.items():
            setter.validate(trainer, pl_module, name)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning restored the donor's optimizer state (and its LR) just before this hook
        for name, setter in self.setters.items():
            setter.apply(trainer, pl_module, self.values[name])
        # resume the ready clock from the restored progress, not from zero
        self._last_ready = trainer.current_epoch if self.ready.unit == "epoch" else trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.ready.unit == "step" and self.ready.is_ready(trainer.global_step, self._last_ready):
            self._report(trainer, pl_module, trainer.global_step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        progress = trainer.current_epoch + 1
        if self.ready.unit == "epoch" and self.ready.is_ready(progress, self._last_ready):
            self._report(trainer, pl_module, progress)

    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule, progress: int) -> None:
        _, tune = _require_ray()
        if self.monitor not in trainer.callback_metrics:
            raise RuntimeError(
                f"RayTunePBTReporter monitors `{self.monitor}`, which was never logged; logged:"
                f" {', '.join(f'`{k}`' for k in trainer.callback_metrics) or '(nothing)'}."
            )
        self._last_ready = progress
        score = float(trainer.callback_metrics[self.monitor])
        metrics = {self.monitor: score if math.isfinite(score) else float("inf"), "step": trainer.global_step,
                   "epoch": trainer.current_epoch + 1}
        for name, setter in self.setters.items():
            metrics[f"pbt/{name}"] = self.values[name]
            in_effect = setter.read(trainer, pl_module)
            if in_effect is not None:
                metrics[f"pbt/{name}_in_effect"] = in_effect
        logged = {k: float(v) for k, v in metrics.items() if k.startswith("pbt/")}
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=trainer.global_step)
        with tempfile.TemporaryDirectory(prefix="pbt_ray_") as directory:
            trainer.save_checkpoint(Path(directory) / "member.ckpt")
            if trainer.is_global_zero:
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
            else:
                tune.report(metrics)


def make_scheduler(config: DictConfig, synch: bool = False) -> Any:
    """Ray Tune's PopulationBasedTraining from a runner config: same quantile, factors, resampling, bounds.

    It is :class:`~ganno_lightning.pbt.ray_scheduler.RestorablePopulationBasedTraining`: Ray's own would leave a
    resumed synchronous population waiting forever.

    Unlike ``ganno-pbt``'s, its donors and explored values are not reproducible from ``seed``: Ray's scheduler
    draws them from Python's global ``random`` and takes no seed or generator (seeding that global stream
    would reseed the whole driver process, and asynchronous PBT's decisions follow report timing anyway).
    """
    _, tune = _require_ray()
    from ganno_lightning.pbt.ray_scheduler import RestorablePopulationBasedTraining

    if config.exploit != "truncation":
        raise ValueError(f"On Ray, `exploit` must be 'truncation' (Ray's PBT), got {config.exploit!r}.")
    space = parse_space(OmegaConf.to_container(config.hyperparameters))  # type: ignore[arg-type]

    def clip(new_config: dict[str, Any]) -> dict[str, Any]:
        # Ray multiplies by a factor but does not clip: keep every value inside its bounds
        for name, dim in space.items():
            new_config[name] = dim.clip(new_config[name])
        return new_config

    return RestorablePopulationBasedTraining(  # Ray's, whose synchronous clock survives a rerun's restore
        time_attr="training_iteration",
        perturbation_interval=1,  # one iteration = one ready point of the reporter
        hyperparam_mutations={name: _domain(tune, dim) for name, dim in space.items()},
        quantile_fraction=config.quantile,
        resample_probability=config.resample_probability,
        perturbation_factors=tuple(config.perturb_factors),
        custom_explore_fn=clip,
        synch=synch,
    )


def _domain(tune: Any, dim: Hyperparameter) -> Any:
    if dim.choices is not None:
        return tune.choice(list(dim.choices))
    if dim.integer:
        return tune.lograndint(int(math.ceil(dim.low)), int(dim.high) + 1) if dim.log else tune.randint(
            int(math.ceil(dim.low)), int(dim.high) + 1
        )
    return tune.loguniform(dim.low, dim.high) if dim.log else tune.uniform(dim.low, dim.high)


def _member_of_trial(trial_id: str) -> int:
    """The member a Ray trial is: its creation index, which Ray's trial ids end in (``"a1b2c_00003"``) and a
    restore keeps, so that a rerun continues the same member's W&B run."""
    index = trial_id.rpartition("_")[2]
    if not index.isdigit():
        raise ValueError(
            f"Ray trial id {trial_id!r} does not end in the trial's index (like 'a1b2c_00003'), which"
            " ganno-pbt-ray numbers members by. Use Ray 2.x (`pip install \"ray[tune]>=2.9\"`)."
        )
    return int(index)


def _restore_file(checkpoint: Any, trial_dir: str | os.PathLike) -> str | None:
    """The ``member.ckpt`` a trial restores from: Ray's ``checkpoint``'s, or, if that is gone or damaged, the
    trial's own newest readable one in ``trial_dir`` (its ``checkpoint_NNNNNN`` folders), or ``None`` to train
    from scratch; a warning names the missing file and what is used instead.

    Ray restores an exploiting member from its donor's checkpoint, which an asynchronous donor may already have
    deleted (``CheckpointConfig(num_to_keep=...)``), and a resumed run restores from it again on every rerun
    (ray-project/ray#9036): as on ``ganno-pbt``, the member falls back and repeats the steps in between, so that
    the population can finish. ``population_dir`` is a filesystem path, so Ray's checkpoints are local paths.
    """
    from lightning.pytorch.utilities.rank_zero import rank_zero_warn

    from ganno_lightning.pbt.callback import read_checkpoint

    def readable(path: Path) -> bool:
        try:
            return read_checkpoint(path) is not None  # warns naming a damaged file
        except FileNotFoundError:
            return False

    wanted = Path(checkpoint.path) / "member.ckpt"
    if readable(wanted):
        return str(wanted)
    own = sorted(Path(trial_dir).glob("checkpoint_*/member.ckpt"), reverse=True)  # zero-padded: newest first
    fallback = next((str(p) for p in own if p != wanted and readable(p)), None)
    instead = (f"restarts from its own newest checkpoint {fallback!r} and repeats the steps in between" if fallback
               else "starts again from scratch: it has no readable checkpoint of its own")
    rank_zero_warn(f"The Ray trial's checkpoint {str(wanted)!r} is missing or damaged (a donor may have deleted"
                   f" it); the member {instead}.")
    return fallback


def _train_member(trial_config: dict[str, Any], population: dict[str, Any]) -> None:
    """Ray function trainable: build the task, restore from Ray's checkpoint if any, train, report.

    Member ``i`` (:func:`_member_of_trial`) is seeded ``seed + i`` and logs to W&B as on ``ganno-pbt``. Ray stops
    a trial for an exploit by raising ``SystemExit`` in ``tune.report`` and, with ``reuse_actors``, runs the next
    trial (maybe another member) in this process: the W&B run is finished on every exit, or the next member's
    ``WandbLogger`` would log into it.
    """
    import torch
    from lightning.pytorch.loggers import CSVLogger

    from ganno_lightning.pbt.runner import _load_task, member_wandb_logger

    _, tune = _require_ray()
    config = OmegaConf.create(population)
    torch.set_num_threads(config.threads_per_member)
    context = tune.get_context()
    member = _member_of_trial(context.get_trial_id())
    model, data = _load_task(config, seed=config.seed + member)
    space = parse_space(OmegaConf.to_container(config.hyperparameters))  # type: ignore[arg-type]
    reporter = RayTunePBTReporter(
        {name: trial_config[name] for name in space}, space, config.monitor, config.ready_interval,
        config.ready_unit, dict(config.setters),
    )
    trainer_kwargs = dict(OmegaConf.to_container(config.trainer))  # type: ignore[arg-type]
    trainer_kwargs.setdefault("enable_progress_bar", False)
    trainer_kwargs.setdefault("enable_model_summary", False)
    # ganno-pbt's layout; not `context.get_trial_dir()`, a worker's scratch folder that Ray does not keep
    loggers: list[Any] = [CSVLogger(Path(config.population_dir) / "logs", name=f"member_{member:03d}")]
    wandb_logger = member_wandb_logger(config, member)
    if wandb_logger is not None:
        loggers.append(wandb_logger)
    trainer = pl.Trainer(
        max_epochs=config.max_epochs,
        callbacks=[reporter],
        logger=loggers,
        enable_checkpointing=False,
        **trainer_kwargs,
    )
    checkpoint = tune.get_checkpoint()
    # the trial's folder in `population_dir/ray_tune`, where Ray persists its checkpoints (a DeveloperAPI:
    # `get_trial_dir()` is the worker's scratch directory, not the storage)
    ckpt_path = None if checkpoint is None else _restore_file(checkpoint, context.get_storage().trial_fs_path)
    try:
        trainer.fit(model, data, ckpt_path=ckpt_path)
    finally:
        if wandb_logger is not None:
            wandb_logger.experiment.finish()


def tune_population(
    config: DictConfig,
    address: str | None = None,
    ray_init: Mapping[str, Any] | None = None,
    synch: bool = False,
) -> dict[str, Any]:
    """Run ``config``'s population with Ray Tune's PBT scheduler; write the runner's outputs.

    Args:
        config: a :class:`~ganno_lightning.pbt.runner.PopulationConfig` (``load_config``).
        address: a Ray cluster address (``"auto"``); ``None`` starts a local Ray instance.
        ray_init: extra ``ray.init`` keyword arguments (``num_cpus`` for a local instance).
        synch: synchronous PBT (every trial waits at each ready point), also set by the config's
            ``synchronous``; Ray's default is asynchronous.

    Running it again on the same ``population_dir`` resumes (see the module's docstring), with one line on
    stderr saying so.

    Returns:
        The summary also written to ``summary.json``.

    Raises:
        ValueError / PermissionError: a bad config, task or directory, before Ray starts (:func:`check_population`).
        RuntimeError: if trials failed, or the run was interrupted (Ctrl+C): rerun the same command to resume.

    Example::

        from ganno_lightning.pbt.runner import load_config
        summary = tune_population(load_config("configs/pbt_smoke.yaml", ["population_dir=/tmp/pbt_ray"]),
                                  ray_init={"num_cpus": 2})
    """
    strategy, directory = check_population(config)
    return _tune(config, strategy, directory, address, ray_init, synch)


def check_population(config: DictConfig) -> tuple[Any, Path]:
    """What :func:`tune_population` checks before Ray starts: the config, ``population_dir`` and (``preflight``)
    a two-batch fit of the task; returns the strategy and the directory (``config.population_dir`` made absolute).

    A rerun that resumes a Ray experiment skips the preflight (as ``ganno-pbt`` does on a resume) and must keep
    the settings Ray restores the population with (:data:`RESUMED_SETTINGS`).

    Raises:
        ValueError / PermissionError: a bad config, task or directory, naming it; a rerun that changes one of
            :data:`RESUMED_SETTINGS`, or finds a Ray experiment that this version did not start.
    """
    from ganno_lightning.pbt.runner import checked_config_and_dir, preflight

    strategy, directory = checked_config_and_dir(config)
    if _restorable(directory):
        _check_resumed_settings(config, directory)
    elif config.preflight:
        preflight(config)
    return strategy, directory


#: Ray's experiment folder inside ``population_dir`` (``RunConfig.name``).
_EXPERIMENT = "ray_tune"

#: What a rerun must keep: Ray restores the trials, the search space and the scheduler it saved (a longer
#: ``max_epochs`` cannot train finished trials on), and the seed numbers the members' W&B runs.
RESUMED_SETTINGS = ("population_size", "max_epochs", "seed", "hyperparameters", "monitor", "mode", "ready_interval",
                    "ready_unit", "exploit", "quantile", "perturb_factors", "resample_probability", "synchronous")


def _restorable(directory: Path) -> bool:
    """Whether ``directory`` holds a Ray experiment to resume: one whose state Ray saved (``Tuner.can_restore``
    alone also says yes for a first run that died before ``fit`` saved anything, which cannot be restored)."""
    _, tune = _require_ray()
    experiment = directory / _EXPERIMENT
    return bool(tune.Tuner.can_restore(experiment)) and any(experiment.glob("experiment_state-*.json"))


def _check_resumed_settings(config: DictConfig, directory: Path) -> None:
    started_path = directory / "config.yaml"
    if not started_path.is_file():  # written before every new experiment since ganno-pbt-ray resumes
        raise ValueError(
            f"`population_dir` {str(directory)!r} holds a Ray experiment without the config.yaml this version writes"
            " (an older ganno-pbt-ray started it), so it cannot be resumed safely. Use a new `population_dir`, or"
            f" delete {str(directory / _EXPERIMENT)!r} to start a new population there."
        )
    from ganno_lightning.config import load_config
    from ganno_lightning.pbt.runner import PopulationConfig

    started = OmegaConf.to_container(load_config(PopulationConfig, started_path), resolve=True)
    current = OmegaConf.to_container(config, resolve=True)
    for key in RESUMED_SETTINGS:
        old, new = started.get(key), current.get(key)  # type: ignore[union-attr]
        if old is not None and old != new:
            raise ValueError(
                f"`{key}` is {new!r}, but the Ray population in {str(directory)!r} was started with {key}={old!r};"
                " a rerun resumes the trials, search space and scheduler Ray saved. Rerun with that value to resume"
                " it, or use a new `population_dir`."
            )


def _say(line: str) -> None:
    # the console: stderr, so that stdout carries only the JSON summary (as ganno-pbt)
    print(f"ganno-pbt-ray: {line}", file=sys.stderr, flush=True)


def _initial_search(config: DictConfig, strategy: Any) -> Any:
    """Ray's search algorithm for the first values: member ``i`` (trial ``i``) starts from the values
    :func:`~ganno_lightning.pbt.runner.initial_values` draws for ``ganno-pbt``'s member ``i``, so that they are
    reproducible from ``seed`` and both runners start the same population."""
    _require_ray()
    from ray.tune.search import BasicVariantGenerator

    from ganno_lightning.pbt.runner import initial_values

    points = [initial_values(config, strategy, member) for member in range(config.population_size)]
    return BasicVariantGenerator(points_to_evaluate=points, random_state=config.seed)


def _unfinished(results: Any) -> int:
    # Ray marks a trial's last result `done` when its function returned: an interrupted one never did
    return sum(not (r.metrics or {}).get("done", False) for r in results)


def _tune(config: DictConfig, strategy: Any, directory: Path, address: str | None,
          ray_init: Mapping[str, Any] | None, synch: bool) -> dict[str, Any]:
    ray, tune = _require_ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, **dict(ray_init or {}))
    trainable = tune.with_resources(
        tune.with_parameters(_train_member, population=OmegaConf.to_container(config)),
        {"cpu": config.threads_per_member},
    )
    param_space = {name: _domain(tune, dim) for name, dim in strategy.space.items()}
    experiment = directory / _EXPERIMENT
    if _restorable(directory):
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, param_space=param_space,
                                   resume_unfinished=True, resume_errored=True)
        results = tuner.get_results()  # the saved state, before anything runs
        unfinished = _unfinished(results)
        if unfinished:
            _say(f"resuming the population in {str(experiment)!r}: {unfinished} of {len(results)} member(s)"
                 " continue from their last checkpoints")
            results = tuner.fit()
        else:
            _say(f"the population in {str(experiment)!r} is finished; writing its outputs again"
                 " (a new `population_dir` starts a new one)")
    else:
        # a new experiment; an earlier one killed before Ray saved its state left an exploit log that is not ours
        (experiment / "pbt_global.txt").unlink(missing_ok=True)
        atomic_write_bytes(directory / "config.yaml", OmegaConf.to_yaml(config).encode())  # a rerun checks it
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=_initial_search(config, strategy),
                scheduler=make_scheduler(config, synch or config.synchronous),
                num_samples=config.population_size, metric=config.monitor,
                mode=config.mode, reuse_actors=True,  # an exploit reuses the worker: no re-import
            ),
            run_config=tune.RunConfig(
                name=_EXPERIMENT, storage_path=str(directory), verbose=0,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=4),  # donors must outlive slow cloners
                failure_config=tune.FailureConfig(max_failures=config.max_restarts),
            ),
        )
        results = tuner.fit()
    errors = [r.error for r in results if r.error is not None]
    if errors:
        raise RuntimeError(
            f"{len(errors)} Ray trial(s) failed; first error: {errors[0]!r}. Fix its cause, then run the same"
            " command again to resume them from their last checkpoints."
        )
    unfinished = _unfinished(results)
    if unfinished:  # Ray's fit returns on Ctrl+C, after saving its state
        raise RuntimeError(
            f"The Ray run stopped with {unfinished} of {len(results)} member(s) unfinished (interrupted); its"
            f" state is saved in {str(experiment)!r}. Run the same command again to resume it."
        )
    return _write_ray_outputs(results, config, strategy, directory)


def _reports(result: Any) -> Any:
    """Every report of a trial, as a DataFrame: its ``progress.csv``, which Ray appends to; the result's own
    ``metrics_dataframe`` comes from ``result.json``, which Ray rewrites when PBT restores the trial from a donor,
    so a member that exploited would lose its reports from before."""
    import pandas as pd

    progress = Path(result.path) / "progress.csv"
    return pd.read_csv(progress) if progress.is_file() else result.metrics_dataframe


def _write_ray_outputs(results: Any, config: DictConfig, strategy: Any, directory: Path) -> dict[str, Any]:
    from ganno_lightning.pbt.plot import plot_schedules
    from ganno_lightning.pbt.runner import log_summary_to_wandb

    names = sorted(strategy.space)
    # Ray lists trials in creation order (a restore keeps it): member i. Not by the metrics' `trial_id`: a member
    # that copied a donor at its last ready point ends with the donor's report (and score), id included.
    final = {i: float(r.metrics[config.monitor]) for i, r in enumerate(results)}
    best = ranked_members(final, strategy.mode)[0]
    best_result = results[best]
    with best_result.checkpoint.as_directory() as ckpt_dir, atomic_file(directory / "best.ckpt") as tmp:
        shutil.copyfile(Path(ckpt_dir) / "member.ckpt", tmp)
    schedule = []
    for i, result in enumerate(results):
        frame = _reports(result)
        for _, row in frame.iterrows():
            schedule.append({
                "member": i, "step": int(row["step"]), "event": "report", "score": float(row[config.monitor]),
                "hyperparameters": {n: float(row[f"pbt/{n}"]) for n in names},
            })
    lineage = _ray_lineage(Path(best_result.path).parent / "pbt_global.txt", names)
    buffer = ["member,step,event,score," + ",".join(names)]
    buffer += [
        f"{r['member']},{r['step']},{r['event']},{r['score']}," + ",".join(str(r["hyperparameters"][n]) for n in names)
        for r in schedule
    ]
    atomic_write_bytes(directory / "schedules.csv", ("\n".join(buffer) + "\n").encode())
    atomic_write_bytes(directory / "lineage.json", json.dumps([e.to_dict() for e in lineage], indent=1).encode())
    plot = plot_schedules(schedule, lineage, directory / "schedules.png",
                          {n: d.log for n, d in strategy.space.items()}, config.monitor)
    summary = {
        "best_member": best,
        "best_score": final[best],
        "monitor": config.monitor,
        "mode": strategy.mode,
        "best_hyperparameters": {n: float(best_result.metrics[f"pbt/{n}"]) for n in names},
        "best_checkpoint": str(directory / "best.ckpt"),
        "final_scores": {str(m): s for m, s in final.items()},
        "exploits": len(lineage),
        "backend": "ray_tune",
    }
    atomic_write_bytes(directory / "summary.json", json.dumps(summary, indent=1).encode())
    log_summary_to_wandb(config, summary, lineage, plot)  # ganno-pbt's summary run
    return summary


def _ray_lineage(path: Path, names: list[str]) -> list[LineageEvent]:
    """Parse Ray's pbt_global.txt ([trial tag, donor tag, iteration, donor iteration, donor cfg, new cfg]).

    Ray logs the donor's config, not the target's, so on Ray ``old_hyperparameters`` are the donor's
    values that were explored, and steps are Ray ``training_iteration``\ s (ready points).
    """
    if not path.exists():
        return []

    def member_of(tag: str) -> int:
        # Ray's experiment tags start with the trial's creation index: "3_lr=0.0123"
        head = tag.split("_")[0]
        return int(head) if head.isdigit() else -1

    events = []
    for line in path.read_text().splitlines():
        target, donor, iteration, donor_iteration, donor_config, new_config = json.loads(line)
        events.append(LineageEvent(
            member=member_of(str(target)), step=int(iteration), donor=member_of(str(donor)),
            donor_step=int(donor_iteration), score=float("nan"), donor_score=float("nan"),
            old_hyperparameters={n: float(donor_config[n]) for n in names},
            new_hyperparameters={n: float(new_config[n]) for n in names},
        ))
    return events


def main(argv: list[str] | None = None) -> int:
    """``ganno-pbt-ray CONFIG.yaml [key=value ...] [--address A]``; a bad config exits
    with one line and status 2."""
    from ganno_lightning.pbt.runner import PopulationConfig, load_config

    cli = ConfigCommandLine("ganno-pbt-ray", __doc__, PopulationConfig,
                            see="configs/pbt_digits.yaml")
    cli.add_argument("--address", default=None, help="Ray cluster address, e.g. auto; default: local Ray")
    cli.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray instance")
    args = cli.parse_args(argv)
    config = cli.load(load_config, args)
    ray_init = {"num_cpus": args.num_cpus} if args.num_cpus and args.address is None else {}
    try:  # a bad config, task or directory: one line, before Ray starts
        strategy, directory = check_population(config)
    except (ValueError, OSError) as err:
        cli.error(str(err))
    print(json.dumps(_tune(config, strategy, directory, args.address, ray_init, False), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
