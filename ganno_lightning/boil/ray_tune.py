"""BOIL as a Ray Tune searcher: Ray runs the trials (on a cluster), BOIL chooses each one's values and length.

:class:`BOILSearcher` is a ``ray.tune.search.Searcher``: Tune asks it for a trial's config, whose
``max_epochs`` entry (``epochs_key``) is the training length BOIL chose; the trainable trains that
many epochs and reports ``metric`` once per epoch (``tune.report``). Every result updates that
trial's curve, keyed by ``training_iteration`` (the epoch); running trials are passed to BOIL as
pending. With ``study_dir`` the searcher also keeps the study in a
:class:`~ganno_lightning.boil.store.BOILStore` (one commit per point, the report of
:mod:`ganno_lightning.boil.report` works on it); without one, observations live in memory and
``save`` / ``restore`` (Tune's experiment checkpoints) keep them.

Ray is optional: ``pip install "ganno-lightning[ray,boil]"``.

Example::

    from ray import tune
    from ganno_lightning.boil.ray_tune import BOILSearcher

    def trainable(config):
        model = MyModule(lr=config["lr"])
        trainer = Trainer(max_epochs=config["max_epochs"], callbacks=[ReportEveryEpoch()])
        trainer.fit(model)

    searcher = BOILSearcher({"lr": {"low": 1e-4, "high": 0.1, "log": True}}, metric="val_loss", mode="min",
                            epochs=(1, 20), budget_epochs=200)
    tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=searcher, num_samples=30,
                                                       max_concurrent_trials=4)).fit()
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

from ganno_lightning.boil.observations import SUGGEST_SECONDS, Observation, suggest_seconds
from ganno_lightning.boil.store import PENDING_STATES, BOILStore
from ganno_lightning.files import atomic_write_bytes
from ganno_lightning.tuning.space import (
    Hyperparameter,
    parse_space,
    unit_to_values,
    values_to_unit,
)

try:
    from ray.tune.search import Searcher
except ImportError as err:  # pragma: no cover - exercised only without ray
    raise ImportError(
        'BOILSearcher needs Ray Tune: `pip install "ray[tune]>=2.9"`. On one machine, use BOILTuner (no Ray needed).'
    ) from err

__all__ = ["BOILSearcher"]

_FORMAT = 1  # of what save() writes


class BOILSearcher(Searcher):
    """Suggest Ray Tune trials with BOIL: a configuration and a training length (``config[epochs_key]``).

    Args:
        space: the search space (:mod:`ganno_lightning.tuning.space` entries).
        metric: the metric the trainable reports once per epoch; pass it here (Tune hands ``TuneConfig(metric=...)`` to a searcher only with a non-empty ``param_space``).
        mode: ``"min"`` or ``"max"``; default: Tune's.
        epochs: ``(t_min, t_max)``, the shortest and longest training in epochs.
        budget_epochs: after this many epochs (summed over trials, running ones counted in full) the
            searcher answers ``FINISHED``; ``None``: Tune's ``num_samples`` alone ends the search.
        seed: seeds the core.
        study_dir: keep the study in a :class:`~ganno_lightning.boil.store.BOILStore` there too.
        epochs_key: the config entry that carries the trial's length.
        epoch_attr: the result entry that counts epochs (one report per epoch: ``training_iteration``).
        **core_options: :class:`~ganno_lightning.boil.core.BOILCore` options (as
            :class:`~ganno_lightning.boil.tuner.BOILTuner` takes them).

    Raises:
        ValueError: a bad space, ``epochs``, ``mode`` or budget; ``epochs_key`` clashing with a hyperparameter;
            an unknown or invalid core option.
    """

    def __init__(
        self,
        space: Mapping[str, Union[Hyperparameter, Mapping[str, Any]]],
        metric: Optional[str] = None,
        mode: Optional[str] = None,
        epochs: Sequence[int] = (1, 30),
        budget_epochs: Optional[int] = None,
        seed: int = 0,
        study_dir: Union[str, os.PathLike, None] = None,
        epochs_key: str = "max_epochs",
        epoch_attr: str = "training_iteration",
        **core_options: Any,
    ) -> None:
        from ganno_lightning.boil.tuner import BOILTuner, make_core

        if mode is not None and mode not in ("min", "max"):
            raise ValueError(f"`mode` must be 'min' or 'max', got {mode!r}.")
        super().__init__(metric=metric, mode=mode)
        if not space:
            raise ValueError(f"`space` must name at least one hyperparameter, got {space!r}.")
        try:
            self.space = parse_space(space)
        except ValueError as err:
            raise ValueError(f"`space`: {err}") from None
        if epochs_key in self.space:
            raise ValueError(f"`epochs_key` {epochs_key!r} is also a hyperparameter of `space`; pick another key.")
        self.t_min, self.t_max = BOILTuner._check_epochs(epochs)
        if budget_epochs is not None and (not isinstance(budget_epochs, int) or budget_epochs < self.t_min):
            raise ValueError(f"`budget_epochs` must be an int >= t_min={self.t_min} (one trial), got {budget_epochs!r}.")
        self.budget_epochs, self.seed = budget_epochs, seed
        self.epochs_key, self.epoch_attr = epochs_key, epoch_attr
        self.core_options = dict(core_options)
        # checked now, not at Tune's first suggest (the mode may come later from TuneConfig; any will do here)
        make_core(len(self.space), self.t_min, self.t_max, mode or "min", seed, self.core_options, budget_epochs)
        self.study_dir = None if study_dir is None else str(study_dir)
        self._store: Optional[BOILStore] = None
        self._core: Any = None
        #: Ray trial id -> {"x", "values", "max_epochs", "curve": {epoch: value}, "seconds", "status", "store_id",
        #: "suggest_seconds"}
        self.trials: dict[str, dict[str, Any]] = {}

    # -- Tune's calls ---------------------------------------------------------------------------
    def set_search_properties(self, metric: Optional[str], mode: Optional[str], config: dict, **spec: Any) -> bool:
        if self._core is not None:
            return False  # already suggesting: metric and mode are fixed
        if metric:
            self._metric = metric
        if mode:
            if mode not in ("min", "max"):
                raise ValueError(f"`mode` must be 'min' or 'max', got {mode!r}.")
            self._mode = mode
        return True

    def suggest(self, trial_id: str) -> Optional[dict[str, Any]]:
        core = self._ensure_core()
        # a running trial is both data (its curve so far) and pending (believed at its full length)
        observed = [self._observation(t) for t in self.trials.values() if t["status"] != "queued"]
        pending = [self._observation(t) for t in self.trials.values() if t["status"] in ("queued", "running")]
        longest = self.t_max
        if self.budget_epochs is not None:
            spent = sum(max(t["max_epochs"], len(t["curve"])) if t["status"] in ("queued", "running")
                        else len(t["curve"]) for t in self.trials.values())
            room = self.budget_epochs - spent
            if room < self.t_min:
                return Searcher.FINISHED if not pending else None
            longest = min(longest, room)
        spent_fraction = 0.0 if not self.budget_epochs else min(
            1.0, sum(len(t["curve"]) for t in self.trials.values()) / self.budget_epochs)
        suggestion = core.suggest(observed, pending, spent_fraction=spent_fraction)
        values = unit_to_values(self.space, suggestion.x)
        x = values_to_unit(self.space, values)
        max_epochs = min(max(int(suggestion.max_epochs), self.t_min), longest)
        record = {"x": x, "values": values, "max_epochs": max_epochs, "curve": {}, "seconds": 0.0,
                  "status": "queued", "store_id": None,
                  SUGGEST_SECONDS: suggest_seconds(suggestion.info)}
        store = self._open_store()
        if store is not None:
            info = dict(suggestion.info)
            fit = getattr(core, "last_fit", None) if "m0" in info else None
            record["store_id"] = store.add_trial(x, values, max_epochs, info, fit, observations=len(observed))
        self.trials[trial_id] = record
        return {**values, self.epochs_key: max_epochs}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        record = self.trials.get(trial_id)
        if record is None or self.metric not in result:
            return
        epoch = int(result.get(self.epoch_attr, len(record["curve"]) + 1))
        value = float(result[self.metric])
        seconds = float(result.get("time_total_s", record["seconds"]))
        record["curve"][epoch] = value  # several results in one epoch: the last counts
        record["seconds"] = seconds
        store = self._open_store()
        if store is not None:
            self._open_in_store(store, record)
            store.report(record["store_id"], int(result.get("global_step", epoch)), epoch, value, seconds)
            store.end_epoch(record["store_id"], epoch, seconds)
        record["status"] = "running"

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        record = self.trials.get(trial_id)
        if record is None:
            return
        if result and not error:
            self.on_trial_result(trial_id, result)
        values = list(record["curve"].values())
        if error:
            status = "failed"
        elif values and not math.isfinite(values[-1]):
            status = "diverged"
        elif len(record["curve"]) < record["max_epochs"]:
            status = "interrupted"  # stopped early (a scheduler, or Tune ending): its prefix is data
        else:
            status = "done"
        record["status"] = status
        store = self._open_store()
        if store is not None:
            self._open_in_store(store, record)
            store.finish_trial(record["store_id"], status, "" if status != "failed" else "the Ray trial errored",
                               record["seconds"])

    # -- state ----------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {"format": _FORMAT, "trials": self.trials, "metric": self._metric, "mode": self._mode,
                "settings": self._settings()}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("settings", self._settings()) != self._settings():
            raise ValueError(
                f"The saved BOILSearcher state was made with settings {state['settings']!r}, not {self._settings()!r}."
                " Restore it into a searcher built with the same space, epochs and seed."
            )
        self.trials = dict(state.get("trials", {}))
        self._metric = state.get("metric", self._metric)
        self._mode = state.get("mode", self._mode)
        store = self._open_store() if self._metric and self._mode else None
        if store is not None:  # the store may be newer than Tune's snapshot: what the snapshot lost is interrupted
            kept = {r["store_id"] for r in self.trials.values() if r["status"] in ("queued", "running")}
            for trial in store.trials(list(PENDING_STATES)):
                if trial.id not in kept:
                    store.finish_trial(trial.id, "interrupted", "its Ray trial is not in the restored Tune state")

    def _open_in_store(self, store: BOILStore, record: dict[str, Any]) -> None:
        """Make ``record``'s store trial the one its results go to: started if queued; a new one (same values) if
        the store already closed it (a restored Tune state is older than the store, and Ray trains it again)."""
        status = store.trial(record["store_id"]).status
        if status not in PENDING_STATES:
            record["store_id"] = store.add_trial(record["x"], record["values"], record["max_epochs"],
                                                 {"source": "ray_restore", "rerun_of": record["store_id"]})
            status = "queued"
        if status == "queued":
            store.start_trial(record["store_id"])

    def save(self, checkpoint_path: str) -> None:
        atomic_write_bytes(checkpoint_path, pickle.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(pickle.loads(Path(checkpoint_path).read_bytes()))

    # -- helpers --------------------------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        return {"space": {n: d.to_dict() for n, d in self.space.items()}, "dimensions": list(self.space),
                "epochs": [self.t_min, self.t_max],
                "seed": self.seed, "core": self.core_options}

    def _ensure_core(self) -> Any:
        if self._core is None:
            if not self._metric or not self._mode:
                raise ValueError("BOILSearcher needs `metric` and `mode`: pass them to it, BOILSearcher(space, metric=...,"
                                 " mode=...). (Tune hands TuneConfig's to a searcher only with a non-empty"
                                 " `param_space`, and this searcher owns the space.)")
            from ganno_lightning.boil.tuner import make_core

            self._core = make_core(len(self.space), self.t_min, self.t_max, self._mode, self.seed, self.core_options,
                                   self.budget_epochs)
        return self._core

    def _open_store(self) -> Optional[BOILStore]:
        if self.study_dir is None:
            return None
        if self._store is None:
            self._store = BOILStore(self.study_dir)
            self._store.init_study({"monitor": self._metric, "mode": self._mode,
                                    "backend": "ray_tune", **self._settings()})
        return self._store

    def _observation(self, record: Mapping[str, Any]) -> Observation:
        curve = sorted(record["curve"].items())
        return Observation(x=list(record["x"]), max_epochs=record["max_epochs"], curve=curve,
                           seconds=record["seconds"], status=record["status"],
                           suggest_seconds=suggest_seconds(record))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_store"] = None  # a connection never crosses processes; reopened on use
        return state
