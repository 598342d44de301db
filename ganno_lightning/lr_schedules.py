"""Handcrafted learning-rate schedules as multipliers of the initial LR: ``(step, total_steps) -> float``.

One home for the formulas that the evaluation's baselines (``ganno_lightning.agents.baselines``)
and GANNO's LR prior (:mod:`ganno_lightning.layerwise.prior`) both use, so "cosine" means the same
curve in a baseline run and under an agent.

- ``constant``: 1 throughout.
- ``step_decay``: 1, then x0.1 from 50% of the steps and x0.01 from 75%.
- ``cosine``: half a cosine from 1 down to 0 at ``total_steps``.
- ``warmup_cosine``: linear warm-up over the first 5% of the steps, then cosine to 0.

Example::

    >>> [round(cosine(s, 4), 3) for s in range(5)]
    [1.0, 0.854, 0.5, 0.146, 0.0]
    >>> [step_decay(s, 8) for s in range(8)]
    [1.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
"""

from __future__ import annotations

import math
from collections.abc import Callable

#: Share of the steps ``warmup_cosine`` spends ramping up.
WARMUP_FRACTION = 0.05
#: ``step_decay``'s milestones (fractions of the steps) and the factor applied at each.
STEP_DECAY_MILESTONES = (0.5, 0.75)
STEP_DECAY_GAMMA = 0.1


def _check(step: int, total_steps: int) -> None:
    if total_steps <= 0:
        raise ValueError(f"`total_steps` must be a positive int, got {total_steps!r}.")
    if step < 0:
        raise ValueError(f"`step` must be >= 0, got {step!r}.")


def constant(step: int, total_steps: int) -> float:
    """Multiplier 1 at every step (the user's initial LR, unchanged).

    Example::

        >>> constant(0, 10), constant(9, 10)
        (1.0, 1.0)
    """
    _check(step, total_steps)
    return 1.0


def step_decay(step: int, total_steps: int) -> float:
    """Multiplier 1, then x0.1 at 50% and again at 75% of ``total_steps``.

    Example::

        >>> step_decay(49, 100), step_decay(50, 100), step_decay(75, 100)
        (1.0, 0.1, 0.01)
    """
    _check(step, total_steps)
    drops = sum(step >= m * total_steps for m in STEP_DECAY_MILESTONES)
    return round(STEP_DECAY_GAMMA**drops, 12)  # 0.1**2 is 0.010000000000000002 in floats


def cosine(step: int, total_steps: int) -> float:
    """Half a cosine from 1 at step 0 to 0 at ``total_steps`` (0 beyond it).

    Example::

        >>> cosine(0, 100), cosine(50, 100), cosine(100, 100)
        (1.0, 0.5, 0.0)
    """
    _check(step, total_steps)
    progress = min(step, total_steps) / total_steps
    # max(): cos(pi) is -1 only up to rounding; the LR must not go negative.
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def warmup_cosine(step: int, total_steps: int) -> float:
    """Linear warm-up over the first 5% of the steps (at least one), then cosine to 0.

    The warm-up multiplier is ``(step + 1) / warmup``: the first step already moves the weights
    (a multiplier of exactly 0 would waste it) and the ramp reaches 1 at its last step.

    Example::

        >>> [round(warmup_cosine(s, 100), 2) for s in (0, 2, 4, 5, 100)]
        [0.2, 0.6, 1.0, 1.0, 0.0]
    """
    _check(step, total_steps)
    warmup = max(1, round(WARMUP_FRACTION * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    if total_steps <= warmup:
        return 0.0 if step >= total_steps else 1.0
    return cosine(step - warmup, total_steps - warmup)


#: Schedule name (as used in configs and reports) -> function.
SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "constant": constant,
    "step_decay": step_decay,
    "cosine": cosine,
    "warmup_cosine": warmup_cosine,
}
