"""Handcrafted learning-rate schedules the evaluation compares agents against.

A schedule is a plain function ``(step, total_steps) -> multiplier`` of the initial learning rate,
registered by name in :data:`SCHEDULES` (written once in :mod:`ganno_lightning.lr_schedules`, which
GANNO's LR prior and the best-LR calibration use too; so are :func:`with_schedule` and
:func:`without_schedule`, re-exported here):

- ``constant``: 1 throughout.
- ``step_decay``: 1, then x0.1 from 50% of the steps and x0.01 from 75%.
- ``cosine``: half a cosine from 1 down to 0 at ``total_steps``.
- ``warmup_cosine``: linear warm-up over the first 5% of the steps, then cosine to 0.

:func:`with_schedule` makes a LightningModule's ``configure_optimizers`` return its optimizer plus
a per-step :class:`~torch.optim.lr_scheduler.LambdaLR` following one of them, and
:func:`scale_initial_lr` multiplies a module's initial learning rate (the "10x too high / too low"
conditions of ``ganno-evaluate``).

Example::

    >>> [round(cosine(s, 4), 3) for s in range(5)]
    [1.0, 0.854, 0.5, 0.146, 0.0]
    >>> [step_decay(s, 8) for s in range(8)]
    [1.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import LightningModule

from ganno_lightning.lr_schedules import (
    SCHEDULES,
    WARMUP_FRACTION,
    ScheduleMultiplier,
    constant,
    cosine,
    step_decay,
    warmup_cosine,
    with_schedule,
    without_schedule,
)

__all__ = [
    "SCHEDULES",
    "WARMUP_FRACTION",
    "ScheduleMultiplier",
    "constant",
    "cosine",
    "scale_initial_lr",
    "step_decay",
    "warmup_cosine",
    "with_schedule",
    "without_schedule",
]


def scale_initial_lr(module: LightningModule, factor: float, attribute: str = "lr") -> float:
    """Multiply the module's initial learning rate ``module.<attribute>`` by ``factor``.

    The zoo modules build their optimizer from ``self.lr``; ``hparams`` is updated too when it
    holds the same key, so logged hyperparameters show the LR the run really started from.

    Args:
        module: A module whose ``configure_optimizers`` reads ``self.<attribute>``.
        factor: Positive, finite multiplier (10 for "10x too high", 0.1 for "10x too low").
        attribute: Name of the LR attribute.

    Returns:
        The new initial learning rate.

    Raises:
        ValueError: If ``factor`` is not positive and finite, or the module has no numeric
            ``attribute``.

    Example::

        >>> from ganno_lightning.envs.tasks import DigitsMLP
        >>> model = DigitsMLP(depth=1, width=8, lr=0.01, batch_size=32, optimizer="adam", seed=0)
        >>> scale_initial_lr(model, 10), model.configure_optimizers().param_groups[0]["lr"]
        (0.1, 0.1)
    """
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"`factor` must be a positive finite number, got {factor!r}.")
    current = getattr(module, attribute, None)
    if isinstance(current, bool) or not isinstance(current, (int, float)):
        raise ValueError(
            f"{type(module).__name__} has no numeric `{attribute}` attribute (got {current!r}); pass "
            "`attribute=` the name of the attribute its `configure_optimizers` reads the LR from."
        )
    new = float(current) * float(factor)
    setattr(module, attribute, new)
    hparams = getattr(module, "hparams", None)
    if isinstance(hparams, Mapping) and attribute in hparams:
        hparams[attribute] = new
    return new
