"""``BOILCallback``: one BOIL trial inside a Lightning Trainer, every validation committed to the study."""

from __future__ import annotations

import math
import time
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from ganno_lightning.boil.store import BOILStore
from ganno_lightning.trials.curve import LearningCurve

__all__ = ["BOILCallback"]


class BOILCallback(LearningCurve):
    """Record a BOIL trial's learning curve in its study, and stop and mark the trial if it diverges.

    Every validation's ``monitor`` value is committed to the study's store as soon as it is
    logged, keyed by the optimizer step, so several validations per epoch each keep their point
    (``val_check_interval < 1``) and a killed process loses none it reported. The model reads one
    point per epoch: the last validation within it. The end of each epoch, the trial's training
    seconds and its end state are committed too: ``done`` after a full fit, ``diverged`` when it
    was stopped, ``failed`` when training raised, ``interrupted`` on Ctrl-C.

    Divergence has :class:`~ganno_lightning.trials.curve.LearningCurve`'s semantics (non-finite
    validation value or training loss by default; ``divergence_threshold`` and ``divergence_factor``
    as there), decided on all ranks alike. Under DDP only global rank zero writes to the store.

    ``monitor`` and ``mode`` are the study's.

    Args:
        tuner: the :class:`~ganno_lightning.boil.tuner.BOILTuner` that asked for the trial, or the
            study's :class:`~ganno_lightning.boil.store.BOILStore`.
        trial: the trial from ``tuner.ask()`` (or its id).
        check_finite: stop and mark the trial ``diverged`` on a non-finite value or training loss.
        divergence_threshold: also when ``monitor`` is worse than this value.
        divergence_factor: also when a training loss exceeds this multiple of the first one.

    Raises:
        ValueError: the study has no ``monitor`` (not a BOIL study); in ``setup``, a Trainer whose
            ``max_epochs`` is not the trial's.

    Example::

        from lightning.pytorch import Trainer
        from ganno_lightning.boil import BOILCallback, BOILTuner

        tuner = BOILTuner(space={"lr": {"low": 1e-4, "high": 0.1, "log": True}}, epochs=(1, 20), study_dir="runs/boil")
        while (trial := tuner.ask()) is not None and len(tuner.history()) < 10:
            trainer = Trainer(max_epochs=trial.max_epochs, callbacks=[BOILCallback(tuner, trial)])
            trainer.fit(MyModule(**trial.values))
            tuner.tell(trial)
    """

    def __init__(self, tuner: Any, trial: Any, check_finite: bool = True,
                 divergence_threshold: Optional[float] = None, divergence_factor: Optional[float] = None) -> None:
        store = tuner if isinstance(tuner, BOILStore) else getattr(tuner, "store", None)
        if not isinstance(store, BOILStore):
            raise ValueError(f"`tuner` must be a BOILTuner or a BOILStore, got {tuner!r}.")
        settings = store.settings()
        if "monitor" not in settings:
            raise ValueError(
                f"`tuner`'s study in {str(store.directory)!r} has no settings: create it with BOILTuner first."
            )
        super().__init__(settings["monitor"], settings["mode"], check_finite=check_finite,
                         divergence_threshold=divergence_threshold, divergence_factor=divergence_factor)
        self.store = store
        self.trial_id = int(trial if isinstance(trial, int) else trial.id)
        self.max_epochs = store.trial(self.trial_id).max_epochs
        self._started: Optional[float] = None
        self._seconds = 0.0

    def describe(self) -> str:
        return f"BOIL trial {self.trial_id}"

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode, trial=self.trial_id)

    def _elapsed(self) -> float:
        return self._seconds + (0.0 if self._started is None else time.monotonic() - self._started)

    # ------------------------------------------------------------------------------------------
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        if trainer.max_epochs != self.max_epochs:
            raise ValueError(
                f"Trial {self.trial_id} trains for max_epochs={self.max_epochs}, but the Trainer has"
                f" `max_epochs`={trainer.max_epochs}. Pass Trainer(max_epochs=trial.max_epochs)."
            )
        if trainer.is_global_zero:
            self.store.start_trial(self.trial_id)

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._started = time.monotonic()

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        recorded = len(self.curve)
        try:
            super().on_validation_end(trainer, pl_module)  # records the point, may stop a diverged run
        finally:
            if len(self.curve) > recorded and trainer.is_global_zero:
                step, value = self.curve[-1]
                self.store.report(self.trial_id, step, trainer.current_epoch + 1, value, self._elapsed())

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        progress = trainer.fit_loop.epoch_loop.batch_progress
        # an epoch cut short (a diverged run stopped mid-epoch) is not a complete epoch
        if trainer.is_global_zero and getattr(progress, "is_last_batch", True):
            self.store.end_epoch(self.trial_id, trainer.current_epoch + 1, self._elapsed())

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.is_global_zero:
            status = "diverged" if self.diverged else "done"
            self.store.finish_trial(self.trial_id, status, self.reason, self._elapsed())
        last = next((v for _, v in reversed(self.curve)), math.nan)
        rank_zero_info(f"{self.describe()}: {'diverged' if self.diverged else 'done'}, {self.monitor}={last:.4g}.")

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        if trainer.is_global_zero:
            status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed"
            reason = f"{type(exception).__name__}: {exception}"
            try:
                if self.store.trial(self.trial_id).status == "running":  # a trial refused in setup stays queued
                    self.store.finish_trial(self.trial_id, status, reason, self._elapsed())
            except Exception:  # noqa: BLE001 - the training error is the one to raise, not the store's
                pass

    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "trial": self.trial_id, "seconds": self._elapsed()}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._seconds = float(state_dict.get("seconds", 0.0))
