"""``RuleSearchCallback``: train a LightningModule with an update rule and report how it did."""

from __future__ import annotations

from typing import Optional, Union

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn

from ganno_lightning.nos.dsl import Rule
from ganno_lightning.nos.optimizer import NonFiniteUpdateError, RuleOptimizer
from ganno_lightning.nos.rules import resolve_rule
from ganno_lightning.trials.curve import LearningCurve

__all__ = ["RuleSearchCallback"]


class RuleSearchCallback(LearningCurve):
    """Install a :class:`~ganno_lightning.nos.RuleOptimizer` for a rule, watch for divergence and
    turn the validation metric into a search reward.

    At fit start the callback replaces whatever ``configure_optimizers`` returned with
    ``RuleOptimizer(rule, lr)`` over the module's trainable parameters (LR schedulers of the replaced
    optimizer are dropped, with a warning). The curve and the stop are
    :class:`~ganno_lightning.trials.curve.LearningCurve`'s: a non-finite loss, or a training loss
    above ``divergence_factor`` times the first one, stops training early and marks the run
    diverged, so a bad candidate costs a few steps instead of a full run. Each validation appends
    ``(global_step, metric)`` to :attr:`curve`; :attr:`reward` is the last value, negated when
    ``mode="min"`` so that higher is always better.

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
        self.rule = resolve_rule(rule)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"`lr` must be a positive float, got {lr!r}.")
        super().__init__(monitor=monitor, mode=mode, divergence_factor=divergence_factor)
        self.lr = float(lr)
        self.optimizer_kwargs = dict(optimizer_kwargs or {})

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
    def describe(self) -> str:
        return f"RuleSearchCallback `{self.rule.text}`"

    def state_dict(self) -> dict:
        return {"rule": self.rule.text, "lr": self.lr, **super().state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        saved_rule = state_dict.get("rule", self.rule.text)
        if saved_rule != self.rule.text:
            rank_zero_warn(
                f"RuleSearchCallback: checkpoint was trained with rule `{saved_rule}`, resuming with `{self.rule.text}`."
            )
        super().load_state_dict(state_dict)
