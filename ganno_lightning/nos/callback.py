"""``RuleSearchCallback``: train a LightningModule with an update rule and report how it did."""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ganno_lightning.nos.dsl import Rule
from ganno_lightning.nos.optimizer import NonFiniteUpdateError, RuleOptimizer, resolve_rule

__all__ = ["RuleSearchCallback"]


class RuleSearchCallback(Callback):
    """Install a :class:`~ganno_lightning.nos.RuleOptimizer` for a rule, watch for divergence and
    turn the validation metric into a search reward.

    At fit start the callback replaces whatever ``configure_optimizers`` returned with
    ``RuleOptimizer(rule, lr)`` over the module's trainable parameters (LR schedulers of the replaced
    optimizer are dropped, with a warning). After every training batch it checks the loss: a
    non-finite loss, or one above ``divergence_factor`` times the first loss, stops training early
    and marks the run diverged, so a bad candidate costs a few steps instead of a full run. Each
    validation appends ``(global_step, metric)`` to :attr:`curve`; :attr:`reward` is the last value,
    negated when ``mode="min"`` so that higher is always better.

    Args:
        rule: named rule, rule text or parsed :class:`~ganno_lightning.nos.dsl.Rule`.
        lr: learning rate of the rule, a positive float.
        monitor: validation metric logged by the module (``self.log(monitor, ...)``).
        mode: ``"min"`` or ``"max"``: whether a smaller or larger ``monitor`` is better.
        divergence_factor: stop when the training loss exceeds this multiple of the first loss;
            must be > 1.
        optimizer_kwargs: further :class:`RuleOptimizer` arguments (``betas``, ``decay_steps``...);
            ``decay_steps`` defaults to ``trainer.max_steps`` when the rule needs it.

    Raises:
        ValueError: an argument is out of range, the rule does not parse, or ``monitor`` is never logged.

    Example::

        import lightning.pytorch as pl
        from ganno_lightning.nos import RuleSearchCallback
        from ganno_lightning.examples.digits import DigitsClassifier, DigitsDataModule

        cb = RuleSearchCallback("powersign", lr=1e-2, monitor="val_acc", mode="max")
        pl.Trainer(max_steps=50, callbacks=[cb], logger=False).fit(DigitsClassifier(), datamodule=DigitsDataModule())
        print(cb.reward, cb.diverged, cb.curve)
    """

    def __init__(
        self,
        rule: Union[str, Rule],
        lr: float = 1e-3,
        monitor: str = "val_loss",
        mode: str = "min",
        divergence_factor: float = 10.0,
        optimizer_kwargs: Optional[dict] = None,
    ) -> None:
        super().__init__()
        self.rule = resolve_rule(rule)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"`lr` must be a positive float, got {lr!r}.")
        if mode not in ("min", "max"):
            raise ValueError(f"`mode` must be 'min' or 'max', got {mode!r}.")
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"`monitor` must be the name of a logged validation metric, got {monitor!r}.")
        if isinstance(divergence_factor, bool) or not isinstance(divergence_factor, (int, float)) or not divergence_factor > 1:
            raise ValueError(f"`divergence_factor` must be a float > 1, got {divergence_factor!r}.")
        self.lr = float(lr)
        self.monitor = monitor
        self.mode = mode
        self.divergence_factor = float(divergence_factor)
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.curve: list[tuple[int, float]] = []
        self.diverged = False
        self.reason = ""
        self._first_loss: Optional[float] = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(rule=self.rule.text, lr=self.lr)

    @property
    def reward(self) -> Optional[float]:
        """Last validation value, sign-adjusted so higher is better; None if diverged or not validated."""
        if self.diverged or not self.curve:
            return None
        value = self.curve[-1][1]
        return value if self.mode == "max" else -value

    def result(self) -> dict:
        """Plain-type summary: rule, lr, reward, diverged, reason, curve."""
        return {
            "rule": self.rule.text,
            "lr": self.lr,
            "reward": self.reward,
            "diverged": self.diverged,
            "reason": self.reason,
            "curve": [list(point) for point in self.curve],
        }

    # ------------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        kwargs = dict(self.optimizer_kwargs)
        if self.rule.uses_decay and kwargs.get("decay_steps") is None:
            if trainer.max_steps is None or trainer.max_steps <= 0:
                raise ValueError(
                    f"rule `{self.rule.text}` uses a decay operand: pass `optimizer_kwargs={{'decay_steps': N}}` "
                    f"or set `Trainer(max_steps=N)`, got max_steps={trainer.max_steps!r}."
                )
            kwargs["decay_steps"] = int(trainer.max_steps)
        params = [p for p in pl_module.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the module has no trainable parameter; RuleSearchCallback has nothing to optimize.")
        optimizer = RuleOptimizer(params, rule=self.rule, lr=self.lr, **kwargs)
        if trainer.strategy.lr_scheduler_configs:
            rank_zero_warn(
                "RuleSearchCallback replaced the module's optimizer; its LR scheduler(s) were dropped. "
                "Use a decay operand (ld, cd, rd, lcd) in the rule to schedule the step size."
            )
            trainer.strategy.lr_scheduler_configs = []
        trainer.strategy.optimizers = [optimizer]
        self._first_loss = None

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        reason = ""
        if not math.isfinite(value):
            reason = f"non-finite training loss {value} at step {trainer.global_step}"
        elif self._first_loss is None:
            self._first_loss = abs(value)
        elif value > self.divergence_factor * max(self._first_loss, 1e-12):
            reason = (
                f"training loss {value:.4g} exceeded {self.divergence_factor:g} x the first loss "
                f"{self._first_loss:.4g} at step {trainer.global_step}"
            )
        self._maybe_stop(trainer, reason)

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.sanity_checking:
            return
        if self.monitor not in trainer.callback_metrics:
            raise ValueError(
                f"`monitor` {self.monitor!r} was not logged during validation; logged metrics: "
                f"{sorted(trainer.callback_metrics)}. Log it with self.log({self.monitor!r}, value) in "
                "validation_step or pass one of the logged names."
            )
        value = float(trainer.callback_metrics[self.monitor])
        self.curve.append((int(trainer.global_step), value))
        reason = "" if math.isfinite(value) else f"non-finite {self.monitor} {value} at step {trainer.global_step}"
        self._maybe_stop(trainer, reason)

    def _maybe_stop(self, trainer: "pl.Trainer", reason: str) -> None:
        # every rank must agree, or one rank stops while the others wait in a collective
        diverged = trainer.strategy.reduce_boolean_decision(bool(reason), all=False)
        if diverged and not self.diverged:
            self.diverged = True
            self.reason = reason or "another rank diverged"
            trainer.should_stop = True
            rank_zero_info(f"RuleSearchCallback: stopping `{self.rule.text}`: {self.reason}.")

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        if isinstance(exception, NonFiniteUpdateError):
            self.diverged = True
            self.reason = str(exception).splitlines()[0]

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        metrics = {"nos/diverged": float(self.diverged)}
        if self.reward is not None:
            metrics["nos/reward"] = self.reward
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "rule": self.rule.text,
            "lr": self.lr,
            "curve": [list(p) for p in self.curve],
            "diverged": self.diverged,
            "reason": self.reason,
            "first_loss": self._first_loss,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        saved_rule = state_dict.get("rule", self.rule.text)
        if saved_rule != self.rule.text:
            rank_zero_warn(
                f"RuleSearchCallback: checkpoint was trained with rule `{saved_rule}`, resuming with `{self.rule.text}`."
            )
        self.curve = [(int(s), float(v)) for s, v in state_dict.get("curve", [])]
        self.diverged = bool(state_dict.get("diverged", False))
        self.reason = state_dict.get("reason", "")
        self._first_loss = state_dict.get("first_loss")
