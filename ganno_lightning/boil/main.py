"""Tune a Lightning task with BOIL from a YAML config: ``ganno-boil`` (or ``python -m ganno_lightning.boil``).

Usage::

    ganno-boil configs/boil_digits.yaml study_dir=runs/boil_digits budget_epochs=200

Before any trial trains, the config, the search space against the task factory's arguments, the
budget and ``study_dir`` are checked, and (a new study) one batch is fitted to check that
``monitor`` is logged; a problem is one line, ``ganno-boil: error: ...``, and exit status 2. Trials
then train in ``workers`` processes, one line each on stderr as they end. Running the same command
again resumes the study (its settings must match; the budget may grow). At the end it writes
``report/`` (PNG + CSV) and ``summary.json`` into ``study_dir`` and prints the summary on stdout.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from ganno_lightning import config as shared
from ganno_lightning.config import ConfigCommandLine, WandbConfig, check_wandb
from ganno_lightning.files import atomic_write_text
from ganno_lightning.tuning.space import HyperparameterSpec

__all__ = ["BOILConfig", "CoreConfig", "load_config", "main", "make_tuner"]


@dataclass
class CoreConfig:
    initial_random: Optional[int] = None  # random trials (of t_max epochs) before the first model fit; null: 3
    virtual_observations: bool = True  # curve prefixes as extra observations where the model is unsure
    learn_compression: bool = True  # learn how a curve becomes one score (m0, g0) by marginal likelihood
    log_metric: bool = False  # compress the logarithm of a positive metric (a loss), not the metric itself
    fixed_t: bool = False  # train every trial for the longest length (plain BO over curves: an ablation)
    cost_cooling: bool = False  # weigh cost less as the budget runs out
    t_trend: bool = True  # the model's prior mean rises with training length (off: a constant mean)
    t_persistence: bool = False  # part of a configuration's score is shared by every training length (kernel over t)
    gain: str = "target"  # judge (x, t) by: "target" EI at t_max x corr(t, t_max)^2, "lookahead", "curve" (the paper)
    # null below: the core's default (ganno_lightning.boil.core.BOILCore)
    m0: Optional[float] = None  # compression midpoint (epoch / t_max of half weight); the start when learned
    g0: Optional[float] = None  # compression growth; the start when learned
    max_virtual_per_trial: Optional[int] = None  # most virtual observations at one trial's configuration
    max_virtual_total: Optional[int] = None  # most virtual observations in all
    virtual_variance_threshold: Optional[float] = None  # least posterior variance worth a virtual observation
    num_restarts: Optional[int] = None  # local searches when maximising the acquisition
    raw_samples: Optional[int] = None  # quasi-random points scored first, the best of them searched around
    fit_maxiter: Optional[int] = None  # most L-BFGS iterations per GP fit
    cost_unit: Optional[str] = None  # "seconds" or "epochs" a trial is priced in; null: what the budget counts
    t_floor: Optional[float] = None  # shortest suggested training, as a fraction of t_max (0: just t_min)
    max_overhead_share: Optional[float] = None  # a suggestion's seconds at most this share of it + its trial (null: off)
    recommend_kappa: Optional[float] = None  # recommend the best mean - kappa * sd at t_max (0: the best mean)
    refit_every: Optional[int] = None  # optimise the model's hyperparameters after this many new trials


@dataclass
class BOILConfig:
    study_dir: str = "runs/boil"  # the study: SQLite store, report/, summary.json; rerun to resume
    task: str = "ganno_lightning.examples.digits:digits_task"  # "module:factory" -> LightningModule or (module, data)
    task_kwargs: dict[str, Any] = field(default_factory=dict)  # fixed factory arguments
    space: dict[str, HyperparameterSpec] = field(default_factory=dict)  # {low, high, log, integer} or {choices}
    monitor: str = "val_loss"  # the validation metric to optimise
    mode: str = "min"  # "min" or "max"
    epochs: list[int] = field(default_factory=lambda: [1, 30])  # [t_min, t_max]: shortest and longest trial
    budget_epochs: Optional[int] = None  # stop when the trials' epochs (summed) reach this
    budget_seconds: Optional[float] = None  # or their training seconds (summed over trials)
    workers: int = 2  # trials at once, one process each; 0: in this process
    threads_per_worker: int = 1  # torch threads per trial
    seed: int = 0  # seeds the core and every trial's initial weights
    check_task: bool = True  # one-batch fit first: is `monitor` logged?
    max_failures_in_a_row: int = 3  # stop when this many trials in a row fail before training an epoch
    divergence_factor: Optional[float] = None  # also stop a trial whose training loss exceeds this x its first
    trainer: dict[str, Any] = field(default_factory=dict)  # other lightning.Trainer arguments (not its length)
    core: CoreConfig = field(default_factory=CoreConfig)  # BOIL's own options
    report: bool = True  # write report/ (PNG + CSV) at the end
    wandb: WandbConfig = field(default_factory=lambda: WandbConfig(project="ganno-boil"))


def load_config(path: Any = None, overrides: Any = ()) -> DictConfig:
    """Merge a YAML file and ``key=value`` overrides onto :class:`BOILConfig`, then check what types cannot.

    Raises:
        ValueError: an unknown key, a value of the wrong type, or an invalid setting.
    """
    config = shared.load_config(BOILConfig, path, overrides, see="configs/boil_digits.yaml")
    if ":" not in config.task:
        raise ValueError(f"`task` must look like 'package.module:factory', got {config.task!r}.")
    check_wandb(config.wandb)
    return config


def make_tuner(config: DictConfig, progress: bool = True) -> Any:
    """The :class:`~ganno_lightning.boil.tuner.BOILTuner` a loaded config describes (every check that needs no training)."""
    from ganno_lightning.boil.tuner import BOILTuner

    core = {k: v for k, v in OmegaConf.to_container(config.core).items() if v is not None}  # type: ignore[union-attr]
    callback = {"divergence_factor": config.divergence_factor} if config.divergence_factor is not None else {}
    return BOILTuner(
        task=config.task,
        space=OmegaConf.to_container(config.space),  # type: ignore[arg-type]
        monitor=config.monitor,
        mode=config.mode,
        epochs=tuple(config.epochs),
        budget_epochs=config.budget_epochs,
        budget_seconds=config.budget_seconds,
        study_dir=config.study_dir,
        workers=config.workers,
        seed=config.seed,
        trainer_kwargs=OmegaConf.to_container(config.trainer),  # type: ignore[arg-type]
        task_kwargs=OmegaConf.to_container(config.task_kwargs),  # type: ignore[arg-type]
        threads_per_worker=config.threads_per_worker,
        check_task=False,  # main() runs it as part of the checks
        progress=progress,
        max_failures_in_a_row=config.max_failures_in_a_row,
        callback_kwargs=callback,
        **core,
    )


def main(argv: Optional[list[str]] = None) -> int:
    """``ganno-boil CONFIG.yaml [key=value ...]``; a bad config or task exits with one line and status 2."""
    cli = ConfigCommandLine("ganno-boil", __doc__, BOILConfig, see="configs/boil_digits.yaml")
    args = cli.parse_args(argv)
    config = cli.load(load_config, args)
    try:
        tuner = make_tuner(config)
        if config.budget_epochs is None and config.budget_seconds is None:
            raise ValueError("Set a budget: `budget_epochs` (epochs summed over trials) or `budget_seconds`.")
        if config.check_task and not tuner.history():
            tuner.dry_run()
    except (ValueError, OSError) as err:
        cli.error(str(err))
    from ganno_lightning.boil.tuner import TrialFailuresError

    try:
        result = tuner.run()
    except TrialFailuresError as err:
        cli.error(str(err))
    summary = result.to_dict()
    if config.report:
        from ganno_lightning.boil.report import write_report

        written = write_report(tuner.store, core=tuner.core, wandb=config.wandb)
        summary["report"] = {name: str(path) for name, path in written.items()}
    atomic_write_text(os.path.join(tuner.study_dir, "summary.json"), json.dumps(summary, indent=1))
    tuner.close()
    print(json.dumps({k: v for k, v in summary.items() if k != "trials"}, indent=1))  # the result, on stdout
    return 0 if summary["best_value"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
