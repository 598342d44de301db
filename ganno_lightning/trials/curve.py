"""``LearningCurve``: the validation curve of a short scored run, and the stop of a run that diverged."""

from __future__ import annotations

import math
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["LearningCurve"]


class LearningCurve(Callback):
    """Record ``monitor`` at every validation as ``(global_step, value)`` and stop a diverged run.

    Points are keyed by the optimizer step, so several validations in one epoch each get their own
    point. A run has diverged, and stops (``trainer.should_stop``), with Lightning's
    :class:`~lightning.pytorch.callbacks.EarlyStopping` semantics:

    - ``check_finite``: the validation value, or the training loss of any batch (the ``loss``
      ``training_step`` returns), is NaN or infinite;
    - ``divergence_threshold``: the validation value is worse than this bound (above it when
      ``mode="min"``, below it when ``mode="max"``);
    - ``divergence_factor``: the training loss exceeds this multiple of the first finite training
      loss of the run, so that a run that blows up stops within a few steps instead of at the next
      validation.

    Every rank reaches the same decision (``trainer.strategy.reduce_boolean_decision``: one rank's
    divergence stops all of them), so no rank waits in a collective for one that stopped. The first
    reason is kept in :attr:`reason`; non-finite values are recorded as they are.

    Args:
        monitor: Validation metric the module logs (``self.log(monitor, ...)``).
        mode: ``"min"`` or ``"max"``: whether a smaller or larger ``monitor`` is better (the
            direction of ``divergence_threshold``).
        check_finite: Stop when the validation value or a training loss is not finite.
        divergence_threshold: Stop as soon as ``monitor`` is worse than this value; ``None``: never.
        divergence_factor: Stop when a training loss exceeds this multiple of the first one; must be
            > 1; ``None``: never.
        strict: Raise when ``monitor`` is missing from a validation's metrics; ``False`` skips that
            validation.

    Raises:
        ValueError: an argument is out of range, or (``strict``) ``monitor`` is never logged.

    Example::

        from ganno_lightning.trials.curve import LearningCurve

        curve = LearningCurve("val_loss", divergence_factor=10.0)
        Trainer(max_steps=100, val_check_interval=25, check_val_every_n_epoch=None, callbacks=[curve]).fit(model)
        curve.curve  # [(25, 0.81), (50, 0.52), (75, 0.44), (100, 0.41)]
        curve.diverged, curve.reason  # (False, '')
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "min",
        check_finite: bool = True,
        divergence_threshold: Optional[float] = None,
        divergence_factor: Optional[float] = None,
        strict: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"`monitor` must be the name of a logged validation metric, got {monitor!r}.")
        if mode not in ("min", "max"):
            raise ValueError(f"`mode` must be 'min' or 'max', got {mode!r}.")
        if divergence_threshold is not None and (
            isinstance(divergence_threshold, bool) or not isinstance(divergence_threshold, (int, float))
            or math.isnan(divergence_threshold)
        ):
            raise ValueError(f"`divergence_threshold` must be a number or None, got {divergence_threshold!r}.")
        if divergence_factor is not None and (
            isinstance(divergence_factor, bool) or not isinstance(divergence_factor, (int, float))
            or not divergence_factor > 1
        ):
            raise ValueError(f"`divergence_factor` must be a float > 1, got {divergence_factor!r}.")
        self.monitor = monitor
        self.mode = mode
        self.check_finite = bool(check_finite)
        self.divergence_threshold = None if divergence_threshold is None else float(divergence_threshold)
        self.divergence_factor = None if divergence_factor is None else float(divergence_factor)
        self.strict = bool(strict)
        self.curve: list[tuple[int, float]] = []
        self.diverged = False
        self.reason = ""
        self._first_loss: Optional[float] = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    # ------------------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if not self.check_finite and self.divergence_factor is None:
            return  # nothing to check: no host sync per batch
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        reason = ""
        if not math.isfinite(value):
            if self.check_finite:
                reason = f"non-finite training loss {value} at step {trainer.global_step}"
        elif self.divergence_factor is not None:
            if self._first_loss is None:
                self._first_loss = abs(value)
            elif value > self.divergence_factor * max(self._first_loss, 1e-12):
                reason = (
                    f"training loss {value:.4g} exceeded {self.divergence_factor:g} x the first loss "
                    f"{self._first_loss:.4g} at step {trainer.global_step}"
                )
        self._stop_if_diverged(trainer, reason)

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.sanity_checking:
            return
        if self.monitor not in trainer.callback_metrics:
            if not self.strict:
                return
            raise ValueError(
                f"`monitor` {self.monitor!r} was not logged during validation; logged metrics: "
                f"{sorted(trainer.callback_metrics)}. Log it with self.log({self.monitor!r}, value) in "
                "validation_step or pass one of the logged names."
            )
        value = float(trainer.callback_metrics[self.monitor])
        step = int(trainer.global_step)
        self.curve.append((step, value))
        reason = ""
        if not math.isfinite(value):
            if self.check_finite:
                reason = f"non-finite {self.monitor} {value} at step {step}"
        elif self.divergence_threshold is not None and self._worse(value, self.divergence_threshold):
            order = ">" if self.mode == "min" else "<"
            reason = f"{self.monitor} {value:.4g} {order} `divergence_threshold` {self.divergence_threshold:g} at step {step}"
        self._stop_if_diverged(trainer, reason)

    def _worse(self, value: float, bound: float) -> bool:
        return value > bound if self.mode == "min" else value < bound

    def _stop_if_diverged(self, trainer: "pl.Trainer", reason: str) -> None:
        # every rank must agree, or one rank stops while the others wait in a collective
        diverged = trainer.strategy.reduce_boolean_decision(bool(reason), all=False)
        if not diverged:
            return
        trainer.should_stop = True
        if not self.diverged:
            self.diverged = True
            self.reason = reason or "another rank diverged"
            rank_zero_info(f"{self.describe()}: stopping the run: {self.reason}.")

    def describe(self) -> str:
        """What the stop message calls this run's recorder; subclasses name what they try."""
        return type(self).__name__

    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "curve": [list(point) for point in self.curve],
            "diverged": self.diverged,
            "reason": self.reason,
            "first_loss": self._first_loss,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.curve = [(int(step), float(value)) for step, value in state_dict.get("curve", [])]
        self.diverged = bool(state_dict.get("diverged", False))
        self.reason = state_dict.get("reason", "")
        self._first_loss = state_dict.get("first_loss")
