"""Handcrafted learning-rate schedules the evaluation compares agents against.

A schedule is a plain function ``(step, total_steps) -> multiplier`` of the initial learning rate,
registered by name in :data:`SCHEDULES` (written once in :mod:`ganno_lightning.lr_schedules`, which
GANNO's LR prior uses too):

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
    constant,
    cosine,
    step_decay,
    warmup_cosine,
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


# The attribute `with_schedule` sets on a module instance; its presence marks a wrapped module.
_OVERRIDE = "configure_optimizers"
_MARK = "_baseline_schedule"


class ScheduleMultiplier:
    """``LambdaLR``'s ``lr_lambda``: the schedule named ``name`` over ``total_steps`` steps.

    A small class rather than a closure: ``LambdaLR.state_dict`` saves a callable object's
    ``__dict__``, which here is two plain values, so a checkpoint of a scheduled run stays loadable
    with ``weights_only=True``.

    Args:
        name: A key of :data:`SCHEDULES`.
        total_steps: Optimizer steps of the run.

    Raises:
        ValueError: For an unknown name or a non-positive ``total_steps``.

    Example::

        >>> ScheduleMultiplier("cosine", 10)(10)
        0.0
    """

    def __init__(self, name: str, total_steps: int) -> None:
        if name not in SCHEDULES:
            raise ValueError(f"Unknown schedule {name!r}; known schedules: {', '.join(SCHEDULES)}.")
        if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps <= 0:
            raise ValueError(f"`total_steps` must be a positive int, got {total_steps!r}.")
        self.name = name
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        return SCHEDULES[self.name](step, self.total_steps)

    def __repr__(self) -> str:
        return f"ScheduleMultiplier({self.name!r}, total_steps={self.total_steps})"


def with_schedule(module: LightningModule, schedule: str, total_steps: int) -> LightningModule:
    """Make ``module.configure_optimizers`` return its optimizer plus a per-step ``LambdaLR``.

    The override is an *instance* attribute that shadows the class's method on this one object:
    the module's class (and every other instance of it) is untouched, ``type(module)`` stays the
    user's class (so ``isinstance``, Lightning's ``is_overridden`` checks and checkpoint
    hyperparameters behave as without the wrapper), and :func:`without_schedule` undoes it by
    deleting the attribute. A dynamically created subclass would change ``type(module)`` and could
    not be pickled by reference. Call it on a fresh module, before ``Trainer.fit``.

    The module's own ``configure_optimizers`` may return a bare optimizer, a one-optimizer list or
    tuple, or a dict with an ``"optimizer"`` and no ``"lr_scheduler"``. A module that already
    schedules its LR is refused: a baseline on top would compound two schedules.

    Args:
        module: The LightningModule to wrap (modified in place and returned).
        schedule: A key of :data:`SCHEDULES`.
        total_steps: Optimizer steps of the run (``Trainer(max_steps=...)``).

    Returns:
        ``module`` itself.

    Raises:
        ValueError: For an unknown schedule, a non-positive ``total_steps`` or an already wrapped module.
        TypeError: At ``configure_optimizers`` time, if the module returns several optimizers or
            its own scheduler.

    Example::

        >>> from ganno_lightning.envs.tasks import DigitsMLP
        >>> model = DigitsMLP(depth=1, width=8, lr=0.1, batch_size=32, optimizer="sgd", seed=0)
        >>> config = with_schedule(model, "cosine", total_steps=100).configure_optimizers()
        >>> config["lr_scheduler"]["interval"], type(config["lr_scheduler"]["scheduler"]).__name__
        ('step', 'LambdaLR')
    """
    multiplier = ScheduleMultiplier(schedule, total_steps)
    if _MARK in vars(module):
        raise ValueError(
            f"{type(module).__name__} already follows the {vars(module)[_MARK].name!r} schedule; "
            "call `without_schedule(module)` first or use a fresh module."
        )
    original = module.configure_optimizers  # the class's bound method, looked up before shadowing

    def configure_optimizers() -> dict[str, Any]:
        optimizer = _single_optimizer(original(), type(module).__name__)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        # interval "step": the schedules are defined per optimizer step, not per epoch.
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    configure_optimizers.__doc__ = f"{type(module).__name__}.configure_optimizers under {multiplier!r}."
    object.__setattr__(module, _OVERRIDE, configure_optimizers)  # plain attribute, not a submodule
    object.__setattr__(module, _MARK, multiplier)
    return module


def without_schedule(module: LightningModule) -> LightningModule:
    """Undo :func:`with_schedule`: the class's ``configure_optimizers`` is used again.

    Example::

        >>> from ganno_lightning.envs.tasks import DigitsMLP
        >>> model = with_schedule(DigitsMLP(1, 8, 0.1, 32, "sgd", 0), "constant", 10)
        >>> type(without_schedule(model).configure_optimizers()).__name__
        'SGD'
    """
    for name in (_OVERRIDE, _MARK):
        vars(module).pop(name, None)
    return module


def _single_optimizer(config: Any, owner: str) -> torch.optim.Optimizer:
    """The one optimizer in a ``configure_optimizers`` result that has no scheduler yet."""
    if isinstance(config, torch.optim.Optimizer):
        return config
    if isinstance(config, (list, tuple)) and len(config) == 1 and isinstance(config[0], torch.optim.Optimizer):
        return config[0]
    if isinstance(config, Mapping) and isinstance(config.get("optimizer"), torch.optim.Optimizer):
        if config.get("lr_scheduler") is not None:
            raise TypeError(
                f"{owner}.configure_optimizers already returns an `lr_scheduler`; a baseline schedule would "
                "compound with it. Return the optimizer alone to compare schedules."
            )
        return config["optimizer"]
    raise TypeError(
        f"{owner}.configure_optimizers must return one optimizer (bare, in a one-element list, or as "
        f"{{'optimizer': ...}}) to take a baseline schedule, got {type(config).__name__}."
    )


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
