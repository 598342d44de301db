"""``BOILTuner``: tune a Lightning task's hyperparameters with BOIL, in parallel worker processes or ask/tell.

The tuner is the driver of one study: it asks BOIL's core (:class:`~ganno_lightning.boil.core.BOILCore`,
Lightning-free) for the next configuration and training length given every trial so far and the
ones still running, commits that suggestion to the study's store before the trial starts, and runs
trials in ``spawn``-ed worker processes (:class:`~ganno_lightning.trials.pool.JobPool`), where
:class:`~ganno_lightning.boil.callback.BOILCallback` commits every validation as it is logged.
Rerunning with the same ``study_dir`` resumes: trials already suggested but not started run first,
trials whose process died while they trained keep their curve prefix as data (``interrupted``),
and the budget counts what was spent before.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ganno_lightning.boil.store import PENDING_STATES, BOILStore, TrialRecord
from ganno_lightning.imports import import_callable, keyword_parameters
from ganno_lightning.trials.trainer import LENGTH_ARGUMENTS
from ganno_lightning.tuning.space import (
    Hyperparameter,
    parse_space,
    unit_to_values,
    values_to_unit,
)

__all__ = ["BOILResult", "BOILTrial", "BOILTuner", "TrialFailuresError", "build_task", "make_core", "run_trial"]

#: Seconds between looks at the store while trials of an earlier driver still run.
_POLL_S = 1.0


@dataclass
class BOILTrial:
    """A trial to train: its hyperparameter ``values`` for ``max_epochs`` epochs (from :meth:`BOILTuner.ask`)."""

    id: int
    values: dict[str, Any]
    max_epochs: int
    x: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class BOILResult:
    """What a study found: the recommended configuration, its curve, and every trial.

    ``best_values`` is the configuration to train: of the configurations tried, the one whose score
    the GP predicts best after ``T_max`` epochs (by mean - ``recommend_kappa`` x sd; ``recommended_by="model"``;
    :meth:`BOILCore.recommend`),
    or, before the GP is fitted, the one with the best ``monitor`` value at any epoch
    (``"observed"``). It was tried as trial ``best_trial`` (for ``best_max_epochs``), whose best value
    ``best_value`` came at epoch ``best_epoch``. ``best_seen_value`` is the best value of any trial
    at any epoch (where the best-so-far curve ends).
    """

    monitor: str
    mode: str
    best_values: Optional[dict[str, Any]]
    best_value: Optional[float]
    best_trial: Optional[int]
    best_epoch: Optional[int]
    best_max_epochs: Optional[int]
    best_curve: list[tuple[int, float]]
    recommended_by: Optional[str]
    best_seen_value: Optional[float]
    history: list[TrialRecord]
    spent_epochs: int
    spent_seconds: float
    study_dir: str

    def to_dict(self) -> dict[str, Any]:
        """Plain values for ``summary.json`` (each trial without its raw points)."""
        summary = {k: v for k, v in asdict(self).items() if k != "history"}
        summary["trials"] = [
            {"id": t.id, "values": t.values, "max_epochs": t.max_epochs, "status": t.status,
             "epochs_done": t.epochs_done, "seconds": round(t.seconds, 3), "curve": t.epoch_curve(),
             "source": t.info.get("source")}
            for t in self.history
        ]
        return _json_safe(summary)


def _json_safe(value: Any) -> Any:
    """``value`` with tuples as lists and non-finite floats as ``None`` (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _task_name(task: Any) -> Optional[str]:
    if task is None or isinstance(task, str):
        return task
    return f"{getattr(task, '__module__', '?')}:{getattr(task, '__qualname__', repr(task))}"


def make_core(dims: int, t_min: int, t_max: int, mode: str, seed: int, options: Mapping[str, Any],
              budget_epochs: Optional[int] = None) -> Any:
    """:class:`~ganno_lightning.boil.core.BOILCore` with the caller's ``options`` (the tuner's, the Ray searcher's).

    With an epochs budget (``budget_epochs`` not None) the acquisition prices trials in epochs
    (``cost_unit="epochs"``), else in seconds, unless ``options`` sets ``cost_unit`` itself.

    Raises:
        ValueError: an option the core does not take (naming it and the known ones), or a bad value
            (the core's own message).
    """
    from ganno_lightning.boil.core import BOILCore

    allowed = keyword_parameters(BOILCore)
    if allowed is not None:
        fixed = {"dims", "t_max", "t_min", "mode", "seed"}
        for name in options:
            if name not in allowed or name in fixed:
                known = ", ".join(n for n in allowed if n not in fixed and n != "self")
                raise ValueError(f"Unknown BOIL core option `{name}`={options[name]!r}; known: {known}.")
    options = {"cost_unit": "seconds" if budget_epochs is None else "epochs", **options}
    return BOILCore(dims=dims, t_max=t_max, t_min=t_min, mode=mode, seed=seed, **options)


def build_task(task: Union[str, Callable[..., Any]], values: Mapping[str, Any],
               task_kwargs: Optional[Mapping[str, Any]] = None, seed: int = 0) -> tuple[Any, Any]:
    """``factory(**values, **task_kwargs)`` as ``(LightningModule, datamodule or None)``, seeded.

    The global RNGs are seeded with ``seed`` first (every trial starts from the same weights, so
    trials differ by their hyperparameters), and a factory that takes a ``seed`` argument gets it.

    Raises:
        ValueError: if the factory returns neither a LightningModule nor ``(module, datamodule)``.
    """
    import lightning.pytorch as pl

    factory = import_callable(task, argument="task")
    kwargs = {**dict(task_kwargs or {}), **dict(values)}
    parameters = keyword_parameters(factory)
    if "seed" not in kwargs and parameters is not None and "seed" in parameters:
        kwargs["seed"] = seed
    pl.seed_everything(seed, workers=True, verbose=False)
    built = factory(**kwargs)
    module, data = (built if isinstance(built, tuple) and len(built) == 2 else (built, None))
    if not isinstance(module, pl.LightningModule):
        raise ValueError(
            f"`task` {_task_name(task)!r} returned {type(built).__name__}; it must return a LightningModule"
            " or a (LightningModule, LightningDataModule) pair."
        )
    return module, data


def _trial_trainer(max_epochs: int, callbacks: Sequence[Any], trainer_kwargs: Mapping[str, Any]) -> Any:
    """A quiet Trainer for one trial: no logger, checkpoints, progress bar or sanity check unless asked."""
    from lightning.pytorch import Trainer

    kwargs = dict(trainer_kwargs)
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("enable_progress_bar", False)
    kwargs.setdefault("enable_model_summary", False)
    kwargs.setdefault("num_sanity_val_steps", 0)
    user_callbacks = list(kwargs.pop("callbacks", None) or [])
    return Trainer(max_epochs=max_epochs, callbacks=[*user_callbacks, *callbacks], **kwargs)


class TrialFailuresError(RuntimeError):
    """``BOILTuner.run()`` stopped because its trials kept failing before training an epoch."""


def run_trial(job: dict[str, Any]) -> dict[str, Any]:
    """Train one committed trial (a :class:`~ganno_lightning.trials.pool.JobPool` job; module level to pickle).

    Every point is committed by :class:`~ganno_lightning.boil.callback.BOILCallback`; a task that
    cannot be built or a fit that raises ends the trial ``failed`` with the error as its reason.
    """
    from ganno_lightning.boil.callback import BOILCallback
    from ganno_lightning.trials.trainer import quiet_run

    store = BOILStore(job["study_dir"])
    trial = int(job["trial"])
    try:
        with quiet_run(threads=job["threads"]):
            module, data = build_task(job["task"], job["values"], job["task_kwargs"], job["seed"])
            callback = BOILCallback(store, trial, **job.get("callback_kwargs", {}))
            trainer = _trial_trainer(job["max_epochs"], [callback], job["trainer_kwargs"])
            trainer.fit(module, datamodule=data)
    except Exception as err:  # the trial's own failure: recorded, and the study goes on
        if store.trial(trial).status in PENDING_STATES:
            store.finish_trial(trial, "failed", f"{type(err).__name__}: {err}")
    record = store.trial(trial)
    store.close()
    return {"id": job["id"], "key": job["key"], "trial": trial, "status": record.status}


class BOILTuner:
    """Tune a Lightning task with BOIL (Nguyen, Schulze & Osborne 2020): Bayesian optimisation that
    learns from whole learning curves and chooses each trial's training length as well as its values.

    ``run()`` trains trials in ``workers`` processes until the budget is spent; ``ask()`` /
    ``tell()`` let you train each trial with your own Trainer instead. Everything lives in
    ``study_dir``; rerunning with the same directory resumes the study (its settings must match).

    Args:
        task: ``"package.module:factory"`` (or the factory itself) with ``factory(**values) ->
            LightningModule`` or ``(LightningModule, LightningDataModule)``; a factory with a
            ``seed`` argument gets ``seed``. Only ``run()`` needs it.
        space: the search space: name -> ``{low, high, log, integer}`` or ``{choices: [...]}``
            (:mod:`ganno_lightning.tuning.space`); each name is an argument of the factory.
        monitor: the validation metric the task logs (``self.log(monitor, ...)``).
        mode: ``"min"`` or ``"max"``: whether a smaller or larger ``monitor`` is better.
        epochs: ``(t_min, t_max)``: the shortest and longest training a trial may get, in epochs.
        budget_epochs: stop suggesting when the trials' epochs (summed) would exceed this; a
            trial's length is cut to what is left.
        budget_seconds: or stop when the trials' training seconds (summed over trials, so with 2
            workers about half of it in wall-clock time) reach this.
        study_dir: the study's directory (store and report).
        workers: trials trained at once, each in its own process; 0 trains them in this process.
        seed: seeds the core and every trial's initial weights.
        trainer_kwargs: other ``Trainer`` arguments of every trial (not its length: ``max_epochs``
            and friends are BOIL's choice).
        task_kwargs: fixed factory arguments, the same for every trial.
        threads_per_worker: torch threads of each trial.
        check_task: before the first trial, build the task and fit one batch to check that
            ``monitor`` is logged.
        progress: print a line per finished trial on stderr.
        max_failures_in_a_row: ``run()`` stops, with an error naming the last failure, after this
            many trials in a row failed or died without training an epoch (they spend no budget,
            so a broken task would otherwise be retried forever).
        callback_kwargs: ``check_finite``, ``divergence_threshold``, ``divergence_factor`` of each
            trial's :class:`~ganno_lightning.boil.callback.BOILCallback`.
        **core_options: :class:`~ganno_lightning.boil.core.BOILCore`'s options: ``initial_random``,
            ``virtual_observations``, ``learn_compression``, ``log_metric``, ``m0``, ``g0``, ``fixed_t``,
            ``cost_cooling``, ``cost_unit`` (default: ``"epochs"`` with ``budget_epochs``, ``"seconds"``
            with ``budget_seconds``: the acquisition prices what the budget counts), ``t_floor``,
            ``max_overhead_share``, ``refit_every``, ``t_trend``, ``t_persistence``, ``gain``, ``recommend_kappa``,
            ``max_virtual_per_trial``, ``max_virtual_total``, ``virtual_variance_threshold``, ``num_restarts``,
            ``raw_samples``, ``fit_maxiter``.

    Raises:
        ValueError: before anything trains, naming the argument: a hyperparameter the factory does
            not take, an empty range, a bad ``epochs`` or ``mode``, a trial length in
            ``trainer_kwargs``, a budget smaller than one trial, an unknown core option, or
            settings that differ from the study already in ``study_dir``.
        PermissionError: ``study_dir`` is not writable.

    Example::

        from ganno_lightning.boil import BOILTuner

        if __name__ == "__main__":  # the workers are spawned processes that import this script
            tuner = BOILTuner(
                "ganno_lightning.examples.digits:digits_task",
                space={"lr": {"low": 1e-3, "high": 0.3, "log": True}, "batch_size": {"choices": [32, 64, 128]}},
                monitor="val_loss", epochs=(1, 20), budget_epochs=100, study_dir="runs/boil", workers=2,
            )
            result = tuner.run()
            print(result.best_values, result.best_value, result.best_curve)
    """

    def __init__(
        self,
        task: Union[str, Callable[..., Any], None] = None,
        space: Optional[Mapping[str, Union[Hyperparameter, Mapping[str, Any]]]] = None,
        monitor: str = "val_loss",
        mode: str = "min",
        epochs: Sequence[int] = (1, 30),
        budget_epochs: Optional[int] = None,
        budget_seconds: Optional[float] = None,
        study_dir: Union[str, Path] = "runs/boil",
        workers: int = 2,
        seed: int = 0,
        trainer_kwargs: Optional[Mapping[str, Any]] = None,
        task_kwargs: Optional[Mapping[str, Any]] = None,
        threads_per_worker: int = 1,
        check_task: bool = True,
        progress: bool = False,
        max_failures_in_a_row: int = 3,
        callback_kwargs: Optional[Mapping[str, Any]] = None,
        **core_options: Any,
    ) -> None:
        if not space:
            raise ValueError(
                f"`space` must name at least one hyperparameter, got {space!r}; e.g."
                " space={'lr': {'low': 1e-4, 'high': 0.1, 'log': True}}."
            )
        try:
            self.space = parse_space(space)
        except ValueError as err:
            raise ValueError(f"`space`: {err}") from None
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"`monitor` must be the name of a logged validation metric, got {monitor!r}.")
        if mode not in ("min", "max"):
            raise ValueError(f"`mode` must be 'min' or 'max', got {mode!r}.")
        self.t_min, self.t_max = self._check_epochs(epochs)
        self.budget_epochs, self.budget_seconds = self._check_budget(budget_epochs, budget_seconds)
        for name, value in (("workers", workers), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be an int >= 0, got {value!r}.")
        for name, value in (("threads_per_worker", threads_per_worker), ("max_failures_in_a_row", max_failures_in_a_row)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        self.trainer_kwargs = dict(trainer_kwargs or {})
        for key in LENGTH_ARGUMENTS:
            if key in self.trainer_kwargs:
                raise ValueError(
                    f"`trainer_kwargs` sets `{key}`={self.trainer_kwargs[key]!r}, but BOIL chooses each trial's"
                    f" length within `epochs`=({self.t_min}, {self.t_max}). Remove `{key}` and set `epochs` instead."
                )
        self.task_kwargs = dict(task_kwargs or {})
        self.callback_kwargs = dict(callback_kwargs or {})
        unknown = set(self.callback_kwargs) - {"check_finite", "divergence_threshold", "divergence_factor"}
        if unknown:
            raise ValueError(f"`callback_kwargs` has unknown key(s) {sorted(unknown)}; allowed: check_finite,"
                             " divergence_threshold, divergence_factor.")
        self.task = task
        if task is not None:
            self._check_factory(import_callable(task, argument="task"))
        self.monitor, self.mode, self.seed = monitor, mode, seed
        self.workers, self.threads_per_worker = workers, threads_per_worker
        self.check_task, self.progress = bool(check_task), bool(progress)
        self.max_failures_in_a_row = max_failures_in_a_row
        self._failures_in_a_row: list[TrialRecord] = []  # in this run(): the trials that failed since one trained
        self.core_options = dict(core_options)
        self.core = self._make_core()
        self.store = BOILStore(study_dir)  # PermissionError naming `study_dir`
        self.study_dir = self.store.directory
        self.store.init_study(self.settings())

    # -- argument checks ------------------------------------------------------------------------
    @staticmethod
    def _check_epochs(epochs: Sequence[int]) -> tuple[int, int]:
        valid = (
            isinstance(epochs, Sequence) and not isinstance(epochs, str) and len(epochs) == 2
            and all(isinstance(e, int) and not isinstance(e, bool) for e in epochs)
            and 1 <= epochs[0] <= epochs[1]
        )
        if not valid:
            raise ValueError(
                f"`epochs` must be (t_min, t_max), two ints with 1 <= t_min <= t_max, got {epochs!r}; e.g. epochs=(1, 30)."
            )
        return int(epochs[0]), int(epochs[1])

    def _check_budget(self, budget_epochs: Any, budget_seconds: Any) -> tuple[Optional[int], Optional[float]]:
        if budget_epochs is not None and budget_seconds is not None:
            raise ValueError(
                f"Give one budget, `budget_epochs` or `budget_seconds`, got both ({budget_epochs!r} and {budget_seconds!r})."
            )
        if budget_epochs is not None:
            if isinstance(budget_epochs, bool) or not isinstance(budget_epochs, int):
                raise ValueError(f"`budget_epochs` must be an int, got {budget_epochs!r}.")
            if budget_epochs < self.t_min:
                raise ValueError(
                    f"`budget_epochs`={budget_epochs} is smaller than one trial: the shortest trial trains"
                    f" t_min={self.t_min} epoch(s) (`epochs`=({self.t_min}, {self.t_max})). Raise `budget_epochs`"
                    f" to at least {self.t_min}, preferably to several times {self.t_max}."
                )
        if budget_seconds is not None:
            if isinstance(budget_seconds, bool) or not isinstance(budget_seconds, (int, float)) \
                    or not budget_seconds > 0 or not math.isfinite(budget_seconds):
                raise ValueError(f"`budget_seconds` must be a positive number of seconds, got {budget_seconds!r}.")
            budget_seconds = float(budget_seconds)
        return budget_epochs, budget_seconds

    def _check_factory(self, factory: Callable[..., Any]) -> None:
        overlap = sorted(set(self.task_kwargs) & set(self.space))
        if overlap:
            raise ValueError(f"`task_kwargs` fixes {overlap}, which `space` tunes. Remove them from one of the two.")
        parameters = keyword_parameters(factory)
        if parameters is None:
            return
        for name in [*self.space, *self.task_kwargs]:
            if name not in parameters:
                where = "`space`" if name in self.space else "`task_kwargs`"
                raise ValueError(
                    f"{where} names `{name}`, which `task` {_task_name(self.task)!r} does not take (its arguments:"
                    f" {', '.join(parameters) or 'none'}). Remove `{name}` from {where}, or add it to the factory's"
                    " arguments."
                )

    def _make_core(self) -> Any:
        return make_core(len(self.space), self.t_min, self.t_max, self.mode, self.seed, self.core_options, self.budget_epochs)

    def settings(self) -> dict[str, Any]:
        """What a resumed study must share with the stored one (the budget and workers may change)."""
        return json.loads(json.dumps({
            "monitor": self.monitor,
            "mode": self.mode,
            "space": {name: dim.to_dict() for name, dim in self.space.items()},
            "dimensions": list(self.space),  # the order of x's coordinates (stored settings sort their keys)
            "epochs": [self.t_min, self.t_max],
            "seed": self.seed,
            "task": _task_name(self.task),
            "task_kwargs": self.task_kwargs,
            "core": self.core_options,
        }, default=repr))

    # -- budget ---------------------------------------------------------------------------------
    def _room(self, trials: Sequence[TrialRecord]) -> Optional[float]:
        """Epochs (or seconds) still free after what trials spent and what running ones will; None: no budget."""
        if self.budget_epochs is not None:
            spent = sum(t.epochs_done for t in trials)
            committed = sum(max(0, t.max_epochs - t.epochs_done) for t in trials if t.status in PENDING_STATES)
            return self.budget_epochs - spent - committed
        if self.budget_seconds is not None:
            return self.budget_seconds - sum(t.seconds for t in trials)
        return None

    def _spent_fraction(self, trials: Sequence[TrialRecord]) -> float:
        if self.budget_epochs is not None:
            return min(1.0, sum(t.epochs_done for t in trials) / self.budget_epochs)
        if self.budget_seconds is not None:
            return min(1.0, sum(t.seconds for t in trials) / self.budget_seconds)
        return 0.0

    # -- ask / tell -----------------------------------------------------------------------------
    def ask(self) -> Optional[BOILTrial]:
        """The next trial, committed to the study (status ``queued``) before it trains.

        Returns:
            A :class:`BOILTrial`, or ``None`` when the budget has no room for another trial.
        """
        trials = self.store.trials()
        room = self._room(trials)
        longest = self.t_max
        if self.budget_epochs is not None:
            if room < self.t_min:
                return None
            longest = min(self.t_max, int(room))
        elif room is not None and room <= 0:
            return None
        # a running trial is both data (its curve so far) and pending (believed at its full length)
        observed = [t.observation() for t in trials if t.status != "queued"]
        pending = [t.observation() for t in trials if t.status in PENDING_STATES]
        suggestion = self.core.suggest(observed, pending, spent_fraction=self._spent_fraction(trials))
        values = unit_to_values(self.space, suggestion.x)
        x = values_to_unit(self.space, values)  # the point actually trained (choices and integers snapped)
        max_epochs = min(max(int(suggestion.max_epochs), self.t_min), longest)
        info = dict(suggestion.info)
        if max_epochs != suggestion.max_epochs:
            info["suggested_max_epochs"] = int(suggestion.max_epochs)
        fit = getattr(self.core, "last_fit", None) if "m0" in info or info.get("source") == "acquisition" else None
        trial = self.store.add_trial(x, values, max_epochs, info, fit, observations=len(observed))
        return BOILTrial(trial, values, max_epochs, x, info)

    def tell(self, trial: Union[BOILTrial, int], status: Optional[str] = None,
             curve: Optional[Sequence[tuple[int, float]]] = None, seconds: Optional[float] = None) -> TrialRecord:
        """Close a trial you trained yourself; the model sees it from the next :meth:`ask` on.

        With :class:`~ganno_lightning.boil.callback.BOILCallback` in the Trainer, the curve and the
        end state are already stored. Without it (any training loop), pass the ``curve`` as
        ``(epoch, value)`` points, one per epoch, and its training ``seconds``.

        Args:
            trial: the trial from :meth:`ask`, or its id.
            status: its end state (``done``, ``diverged``, ``failed``, ``interrupted``); default:
                what the callback recorded, else ``done``.
            curve: the trial's ``(epoch, value)`` points, when no BOILCallback recorded them.
            seconds: its training seconds, with ``curve``.

        Returns:
            The trial as stored.

        Raises:
            ValueError: the trial never started and no ``curve`` was given.
        """
        trial_id = trial if isinstance(trial, int) else trial.id
        record = self.store.trial(trial_id)
        if curve is not None:
            if record.status == "queued":
                self.store.start_trial(trial_id)
            self.store.report_curve(trial_id, curve, float(seconds or 0.0))  # one transaction
            record = self.store.trial(trial_id)
        if record.status == "queued":
            raise ValueError(
                f"Trial {trial_id} never started: train it with BOILCallback(tuner, trial) among the Trainer's"
                " callbacks, or pass its `curve` to `tell`."
            )
        if record.status == "running" or (status is not None and status != record.status):
            finite = all(math.isfinite(v) for _, v in record.epoch_curve())
            self.store.finish_trial(trial_id, status or ("done" if finite else "diverged"), record.reason, seconds)
        return self.store.trial(trial_id)

    def history(self) -> list[TrialRecord]:
        """Every trial of the study so far, in order of suggestion."""
        return self.store.trials()

    # -- run ------------------------------------------------------------------------------------
    def dry_run(self) -> None:
        """Build the task at the middle of the space and fit one batch: ``monitor`` must be logged.

        See :func:`~ganno_lightning.trials.preflight.preflight_fit`.

        Raises:
            ValueError: ``monitor`` is never logged (naming what is), the task cannot be built, the
                Trainer refuses ``trainer_kwargs``, or the one-batch fit raises.
        """
        from ganno_lightning.trials.preflight import preflight_fit

        self._require_task()
        values = unit_to_values(self.space, [0.5] * len(self.space))
        preflight_fit(
            lambda: build_task(self.task, values, self.task_kwargs, self.seed),  # type: ignore[arg-type]
            self.monitor,
            task=f"`task` {_task_name(self.task)!r} with {values} (the middle of `space`) and"
                 f" `task_kwargs`={self.task_kwargs}",
            skip="check_task",
            trainer_kwargs=self.trainer_kwargs,
            trainer_key="trainer_kwargs",
            threads=self.threads_per_worker,
        )

    def _require_task(self) -> None:
        if self.task is None:
            raise ValueError("`task` is needed to run trials: pass task='package.module:factory', or train each trial"
                             " yourself with ask() / tell().")

    def _job(self, trial: Union[BOILTrial, TrialRecord]) -> dict[str, Any]:
        return {
            "id": str(trial.id), "key": f"{self.study_dir}:{trial.id}", "trial": trial.id,
            "study_dir": str(self.study_dir), "task": self.task, "task_kwargs": self.task_kwargs,
            "values": trial.values, "max_epochs": trial.max_epochs, "seed": self.seed,
            "trainer_kwargs": self.trainer_kwargs, "threads": self.threads_per_worker,
            "callback_kwargs": self.callback_kwargs,
        }

    def _next_job(self) -> Optional[dict[str, Any]]:
        if len(self._failures_in_a_row) >= self.max_failures_in_a_row:
            return None  # the running trials finish; run() then says why it stopped
        trial = self.ask()
        return None if trial is None else self._job(trial)

    def _on_result(self, result: dict[str, Any], *_: Any) -> None:
        record = self.store.trial(int(result["trial"]))
        if record.status == "failed" or (record.status == "interrupted" and record.epochs_done == 0):
            self._failures_in_a_row.append(record)
        else:
            self._failures_in_a_row.clear()
        self._say(record)

    def _stopped_by_failures(self) -> "TrialFailuresError":
        last = self._failures_in_a_row[-1]
        hint = ""
        if "bootstrapping phase" in (last.reason or ""):
            hint = (" The workers are spawned processes that import your script: put the code that runs the study"
                    " under `if __name__ == \"__main__\":`.")
        return TrialFailuresError(
            f"BOIL stopped: the last {len(self._failures_in_a_row)} trials failed without training an epoch"
            f" (`max_failures_in_a_row`={self.max_failures_in_a_row}); trial {last.id} ended {last.status}:"
            f" {last.reason}.{hint} Fix the task, then run again with the same `study_dir` to resume (the failed"
            " trials stay in the study and cost no budget)."
        )

    def _failure(self, job: dict[str, Any], why: Any) -> dict[str, Any]:
        """A trial whose worker died (or that raised outside the fit): its prefix stays as data."""
        trial = int(job["trial"])
        status = "failed" if why.status == "failed" else "interrupted"
        if self.store.trial(trial).status in PENDING_STATES:
            self.store.finish_trial(trial, status, f"{why.status}: {why.reason}")
        return {"id": job["id"], "key": job["key"], "trial": trial, "status": status}

    def _say(self, record: TrialRecord) -> None:
        if not self.progress:
            return
        curve = record.epoch_curve()
        last = f"{curve[-1][1]:.4g}" if curve else "none"
        values = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.values.items())
        print(f"boil: trial {record.id} {record.status} after {record.epochs_done}/{record.max_epochs} epochs:"
              f" {self.monitor}={last}; {values}", file=sys.stderr, flush=True)

    def run(self) -> BOILResult:
        """Train trials in ``workers`` processes until the budget is spent; resume where a study stopped.

        Returns:
            The :class:`BOILResult`.

        Raises:
            ValueError: no ``task`` or no budget, or (a new study) ``monitor`` is never logged.
            TrialFailuresError: ``max_failures_in_a_row`` trials in a row failed without training an epoch.
        """
        from ganno_lightning.trials.pool import JobPool

        self._require_task()
        if self.budget_epochs is None and self.budget_seconds is None:
            raise ValueError("`run()` needs a budget: pass `budget_epochs` (epochs summed over trials) or"
                             " `budget_seconds`.")
        self.store.recover()
        if self.check_task and not self.store.trials():
            self.dry_run()
        queued = [self._job(t) for t in self.store.trials(["queued"])]  # suggested by an earlier driver
        self._failures_in_a_row.clear()
        with JobPool(run_trial, processes=self.workers, retries=0) as pool:
            pool.run(queued, failure=self._failure, more=self._next_job, on_result=self._on_result)
        while self.store.trials(["running"]):  # trials of an earlier driver whose workers still train
            time.sleep(_POLL_S)
            self.store.recover()
        if len(self._failures_in_a_row) >= self.max_failures_in_a_row:
            raise self._stopped_by_failures()
        return self.result()

    def result(self) -> BOILResult:
        """The recommended configuration so far, its curve, and every trial."""
        trials = self.store.trials()
        sign = 1.0 if self.mode == "min" else -1.0

        def best_point(trial: TrialRecord) -> Optional[tuple[int, float]]:
            """The trial's (epoch, value) with the best finite value; the earliest of equals."""
            finite = [(e, v) for e, v in trial.epoch_curve() if math.isfinite(v)]
            return min(finite, key=lambda p: sign * p[1]) if finite else None

        seen = [(t, p) for t in trials if (p := best_point(t)) is not None]
        best_seen = min(seen, key=lambda tp: sign * tp[1][1], default=None)
        observed = [t for t in trials if t.status != "queued"]
        pick = self.core.recommend([t.observation() for t in observed]) if observed else None
        if pick is not None:
            chosen, recommended_by = (observed[pick], best_point(observed[pick])), "model"
        else:  # no fit yet
            chosen, recommended_by = best_seen, "observed"
        record, point = chosen if chosen else (None, None)
        epochs, seconds = self.store.spent()
        return BOILResult(
            monitor=self.monitor, mode=self.mode,
            best_values=record.values if record else None, best_value=point[1] if point else None,
            best_trial=record.id if record else None, best_epoch=point[0] if point else None,
            best_max_epochs=record.max_epochs if record else None,
            best_curve=record.epoch_curve() if record else [],
            recommended_by=recommended_by if record else None,
            best_seen_value=best_seen[1][1] if best_seen else None, history=trials,
            spent_epochs=epochs, spent_seconds=seconds, study_dir=str(self.study_dir),
        )

    def close(self) -> None:
        self.store.close()
