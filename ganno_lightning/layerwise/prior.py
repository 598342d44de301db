"""The LR an agent acts around when the user's ``configure_optimizers`` has no LR scheduler.

GANNO's agents multiply a layer's LR by a *scale*; the LR underneath is the user's scheduler's.
A module without a scheduler trains at a constant LR, so an agent that keeps every scale at 1 (an
untrained, identity-initialised one, say) gives a constant-LR run. A *prior* puts a handcrafted
schedule underneath instead (cosine decay to the run's known length, optionally after a short
warm-up), so the identity policy already equals a good heuristic and the agent learns corrections
to it. The effective LR of a layer is ``user_lr x prior(step) x scale``.

A module with its own scheduler keeps it as the prior: :class:`LRPrior` is then inactive, whatever
was asked. So is a run whose length is unknown (an iterable dataset without ``max_steps``, or an
environment episode that hides its length): the LR stays constant, and the caller warns.

A prior can be asked for long fits only (``above``: fits of more than that many optimizer steps). An
agent meta-trained around a constant LR on short runs keeps its own behaviour there, and gets the
prior's annealing where it was never trained to anneal (``benchmarks/results/prior_for_long_runs/``).

The curves are :mod:`ganno_lightning.lr_schedules`' (the evaluation's ``cosine`` and
``warmup_cosine`` baselines), so the identity policy under a prior *is* that baseline.
"""

from __future__ import annotations

from typing import Any

from ganno_lightning.lr_schedules import SCHEDULES

#: Prior names: ``"none"`` keeps the user's LR (or scheduler) as it is.
PRIORS: tuple[str, ...] = ("none", "cosine", "warmup_cosine")
DEFAULT_PRIOR = "none"


def check_prior(prior: Any, name: str = "prior") -> str:
    """Return ``prior`` if it is one of :data:`PRIORS`, else raise a ``ValueError`` naming the fix.

    Example::

        >>> check_prior("cosine")
        'cosine'
        >>> check_prior("linear", "env.prior")
        Traceback (most recent call last):
        ...
        ValueError: `env.prior` must be one of ['none', 'cosine', 'warmup_cosine'], got 'linear'.
    """
    if not isinstance(prior, str) or prior not in PRIORS:
        raise ValueError(f"`{name}` must be one of {list(PRIORS)}, got {prior!r}.")
    return prior


def check_prior_above(above: Any, name: str = "prior_above") -> int:
    """Return ``above`` if it is a fit length (an int >= 0; 0: every fit), else raise a ``ValueError`` naming the fix.

    Example::

        >>> check_prior_above(600)
        600
        >>> check_prior_above(-1, "env.prior_above")
        Traceback (most recent call last):
        ...
        ValueError: `env.prior_above` must be an int >= 0 (the prior acts in fits of more optimizer steps; 0: in every fit), got -1.
    """
    if isinstance(above, bool) or not isinstance(above, int) or above < 0:
        raise ValueError(f"`{name}` must be an int >= 0 (the prior acts in fits of more optimizer steps; 0: in "
                         f"every fit), got {above!r}.")
    return above


class LRPrior:
    """The multiplier of the user's LR at each optimizer step, or an inactive prior (always 1).

    Args:
        name: One of :data:`PRIORS`.
        total_steps: Optimizer steps of the run, or ``None`` when unknown.
        has_scheduler: Whether the user's optimizer has an LR scheduler of its own.
        above: The prior acts only in fits of more optimizer steps than this (0: in every fit); a
            shorter fit is one it was not asked for, and so not a reason to warn.

    Attributes:
        active: Whether the prior changes the LR (a named prior, no user scheduler, a known length of
            more than ``above`` steps).
        inactive_reason: Why a requested prior is not applied (``None`` when it is, or when none
            was asked for).

    Example::

        >>> prior = LRPrior("cosine", total_steps=4)
        >>> prior.active, [prior.factor(s) for s in range(4)]
        (True, [1.0, 0.8535533905932737, 0.5, 0.14644660940672627])
        >>> LRPrior("cosine", total_steps=None).inactive_reason
        'the run length is unknown'
        >>> short = LRPrior("cosine", total_steps=300, above=600)  # a long-fits-only prior in a short fit
        >>> short.active, short.inactive_reason, LRPrior("cosine", total_steps=3000, above=600).active
        (False, None, True)
    """

    def __init__(self, name: str = DEFAULT_PRIOR, total_steps: int | None = None, has_scheduler: bool = False,
                 above: int = 0) -> None:
        self.name = check_prior(name)
        self.total_steps = total_steps
        self.above = check_prior_above(above)
        self.inactive_reason: str | None = None
        asked = self.name != "none" and (not total_steps or total_steps > self.above)
        if asked:
            if has_scheduler:
                self.inactive_reason = "the optimizer has an LR scheduler of its own, which stays the prior"
            elif not total_steps:
                self.inactive_reason = "the run length is unknown"
        self.active = asked and self.inactive_reason is None
        self._curve = SCHEDULES[self.name] if self.active else None

    def factor(self, step: int) -> float:
        """The prior's multiplier of the user's LR during optimizer step ``step`` (0-based)."""
        return self._curve(step, self.total_steps) if self._curve is not None else 1.0

    def __repr__(self) -> str:
        state = "active" if self.active else f"inactive: {self.inactive_reason or 'none asked for'}"
        above = f", above={self.above}" if self.above else ""
        return f"LRPrior({self.name!r}, total_steps={self.total_steps}{above}, {state})"
