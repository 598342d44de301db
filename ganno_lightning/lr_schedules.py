"""Handcrafted learning-rate schedules as multipliers of the initial LR: ``(step, total_steps) -> float``.

One home for the formulas that the evaluation's baselines (``ganno_lightning.agents.baselines``)
and GANNO's LR prior (:mod:`ganno_lightning.layerwise.prior`) both use, so "cosine" means the same
curve in a baseline run and under an agent.

- ``constant``: 1 throughout.
- ``step_decay``: 1, then x0.1 from 50% of the steps and x0.01 from 75%.
- ``cosine``: half a cosine from 1 down to 0 at ``total_steps``.
- ``warmup_cosine``: linear warm-up over the first 5% of the steps, then cosine to 0.

:func:`with_schedule` makes a LightningModule's ``configure_optimizers`` return its optimizer plus
a per-step :class:`~torch.optim.lr_scheduler.LambdaLR` following one of them (the evaluation's
baseline runs, and the best-LR calibration of a schedule); :func:`without_schedule` undoes it.

Example::

    >>> [round(cosine(s, 4), 3) for s in range(5)]
    [1.0, 0.854, 0.5, 0.146, 0.0]
    >>> [step_decay(s, 8) for s in range(8)]
    [1.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

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
        optimizer = single_optimizer(original(), type(module).__name__)
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


def single_optimizer(config: Any, owner: str) -> torch.optim.Optimizer:
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
