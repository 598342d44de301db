"""The action: which multipliers of its LR scale an agent may pick, and how a pick reaches the scale.

Written once for the environment, the callback and meta-training: the default action set, the
default scale bounds, the exploration modes that turn a policy's action distribution into one
multiplier per layer, and the cumulative multiply-and-clip of the scales.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

#: Default action set: multipliers of the current scale, {2^-1, 2^-1/2, 2^-1/4, 1, 2^1/4, 2^1/2, 2}.
DEFAULT_ACTION_MULTIPLIERS: tuple[float, ...] = tuple(2.0**e for e in (-1, -0.5, -0.25, 0, 0.25, 0.5, 1))

#: A wider action set for runs that start far from their best LR: the default levels plus x4 and
#: x8 each way, {2^-3, 2^-2, 2^-1, 2^-1/2, 2^-1/4, 1, 2^1/4, 2^1/2, 2, 4, 8}. The fine levels near 1
#: stay, so the agent can still hold an LR it has found.
WIDE_ACTION_MULTIPLIERS: tuple[float, ...] = tuple(2.0**e for e in (-3, -2, -1, -0.5, -0.25, 0, 0.25, 0.5, 1, 2, 3))

#: Action sets by name, wherever a config takes ``action_multipliers``.
ACTION_SETS: dict[str, tuple[float, ...]] = {"default": DEFAULT_ACTION_MULTIPLIERS, "wide": WIDE_ACTION_MULTIPLIERS}

#: Default ``(low, high)`` clip of every layer's LR scale.
DEFAULT_SCALE_BOUNDS: tuple[float, float] = (1e-2, 1e2)

#: How an agent turns its action distribution into one LR change per layer (names borrowed from
#: TorchRL's ``ExplorationType``; "mean" here is the expected *log*-multiplier).
EXPLORATION_TYPES = ("mean", "mode", "random")
DEFAULT_EXPLORATION = "mean"


def check_exploration(exploration: Any, name: str = "exploration") -> str:
    """Return ``exploration`` if it is one of :data:`EXPLORATION_TYPES`, else raise a ``ValueError``.

    Example::

        >>> check_exploration("mode")
        'mode'
        >>> check_exploration("greedy", "agent.exploration")
        Traceback (most recent call last):
        ...
        ValueError: `agent.exploration` must be one of ['mean', 'mode', 'random'], got 'greedy'.
    """
    if exploration not in EXPLORATION_TYPES:
        raise ValueError(f"`{name}` must be one of {list(EXPLORATION_TYPES)}, got {exploration!r}.")
    return exploration


def check_min_change(min_change: Any, name: str = "min_change") -> float:
    """Return ``min_change`` as a float if it is a finite number >= 1, else raise a ``ValueError``.

    Example::

        >>> check_min_change(1.25)
        1.25
        >>> check_min_change(0.8, "agent.min_change")
        Traceback (most recent call last):
        ...
        ValueError: `agent.min_change` must be a finite number >= 1 (1: every change; 1.25: changes between x0.8 and x1.25 are skipped), got 0.8.
    """
    try:
        value = float(min_change)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(min_change, bool) or not (math.isfinite(value) and value >= 1):
        raise ValueError(f"`{name}` must be a finite number >= 1 (1: every change; 1.25: changes between x0.8 and "
                         f"x1.25 are skipped), got {min_change!r}.")
    return value


def check_scale_bounds(scale_bounds: Sequence[float], name: str = "scale_bounds") -> tuple[float, float]:
    """Validate ``(low, high)`` scale bounds and return them as floats.

    Example::

        >>> check_scale_bounds([0.01, 100])
        (0.01, 100.0)
        >>> check_scale_bounds((2.0, 10.0))
        Traceback (most recent call last):
        ...
        ValueError: `scale_bounds` must satisfy 0 < low <= 1 <= high < inf, got (2.0, 10.0). Example: (0.01, 100.0).
    """
    try:
        low, high = (float(b) for b in scale_bounds)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be two floats (low, high), got {scale_bounds!r}.") from None
    if not (0 < low <= 1 <= high and math.isfinite(high)):
        raise ValueError(
            f"`{name}` must satisfy 0 < low <= 1 <= high < inf, got {scale_bounds!r}. Example: (0.01, 100.0)."
        )
    return low, high


def check_action_multipliers(multipliers: Sequence[float], name: str = "action_multipliers") -> tuple[float, ...]:
    """Validate an action set (a non-empty list of positive finite floats) and return it as floats.

    Example::

        >>> check_action_multipliers([0.5, 1, 2])
        (0.5, 1.0, 2.0)
        >>> check_action_multipliers([0.5, -1.0])
        Traceback (most recent call last):
        ...
        ValueError: `action_multipliers` must be a non-empty list of positive finite floats, got [0.5, -1.0].
    """
    try:
        values = tuple(float(m) for m in multipliers)
    except (TypeError, ValueError):
        values = ()
    if not values or not all(math.isfinite(m) and m > 0 for m in values):
        raise ValueError(f"`{name}` must be a non-empty list of positive finite floats, got {list(multipliers)}.")
    return values


def resolve_action_multipliers(spec: Any, name: str = "action_multipliers") -> tuple[float, ...]:
    """An action set given by name (a key of :data:`ACTION_SETS`) or as multipliers, checked.

    Example::

        >>> len(resolve_action_multipliers("wide")), resolve_action_multipliers("wide")[0]
        (11, 0.125)
        >>> resolve_action_multipliers([0.5, 1, 2])
        (0.5, 1.0, 2.0)
        >>> resolve_action_multipliers("huge", "env.action_multipliers")
        Traceback (most recent call last):
        ...
        ValueError: `env.action_multipliers` must name an action set (one of ['default', 'wide']) or list positive multipliers, got 'huge'.
    """
    if isinstance(spec, str):
        if spec not in ACTION_SETS:
            raise ValueError(f"`{name}` must name an action set (one of {list(ACTION_SETS)}) or list positive "
                             f"multipliers, got {spec!r}.")
        return ACTION_SETS[spec]
    return check_action_multipliers(spec, name)


def clip_scales(scales: Sequence[float], bounds: tuple[float, float]) -> list[float]:
    """Every scale clipped to ``bounds = (low, high)``, as Python floats.

    Example::

        >>> clip_scales([0.001, 1.0, 500.0], (0.01, 100.0))
        [0.01, 1.0, 100.0]
    """
    low, high = bounds
    return [min(max(float(s), low), high) for s in scales]


def apply_multipliers(scales: Sequence[float], multipliers: Sequence[float],
                      bounds: tuple[float, float]) -> list[float]:
    """Multiply each scale by its multiplier (actions are cumulative), then clip to ``bounds``.

    Example::

        >>> apply_multipliers([1.0, 80.0], [0.5, 2.0], DEFAULT_SCALE_BOUNDS)
        [0.5, 100.0]
    """
    return clip_scales([s * m for s, m in zip(scales, multipliers, strict=True)], bounds)


class ActionSet:
    """The multipliers of the current LR scale that an agent's action indices stand for.

    Args:
        multipliers: What action ``i`` multiplies a layer's scale by.

    Raises:
        ValueError: If ``multipliers`` is empty or holds a value that is not positive and finite.

    Example::

        >>> actions = ActionSet()  # the default 7 levels, 2^-1 ... 2
        >>> len(actions), actions.multipliers_of([0, 3, 6])
        (7, [0.5, 1.0, 2.0])
        >>> logits = torch.tensor([[0.0] * 7, [0.0, 0, 0, 0, 0, 0, 9]])
        >>> multipliers, chosen = actions.choose(logits, "mode")
        >>> multipliers.tolist(), chosen.tolist()
        ([0.5, 2.0], [0, 6])
        >>> actions.choose(logits, "mean")[0][0].item()  # uniform over a symmetric set: no change
        1.0
    """

    def __init__(self, multipliers: Sequence[float] = DEFAULT_ACTION_MULTIPLIERS) -> None:
        self.multipliers = check_action_multipliers(multipliers)

    def __len__(self) -> int:
        return len(self.multipliers)

    def __repr__(self) -> str:
        return f"ActionSet({list(self.multipliers)})"

    def multipliers_of(self, actions: Sequence[int]) -> list[float]:
        """The multiplier of each action index."""
        actions = list(actions)
        if actions and (min(actions) < 0 or max(actions) >= len(self.multipliers)):
            raise ValueError(f"Actions must lie in [0, {len(self.multipliers) - 1}], got {actions}.")
        return [self.multipliers[a] for a in actions]

    def choose(self, logits: Tensor, exploration: str = DEFAULT_EXPLORATION,
               generator: torch.Generator | None = None, min_change: float = 1.0) -> tuple[Tensor, Tensor | None]:
        """Turn action logits ``[..., num_actions]`` into one multiplier per agent.

        Args:
            logits: The policy's action logits.
            exploration: One of :data:`EXPLORATION_TYPES`: ``"mean"``: the expected change
                ``exp(sum_a p_a log m_a)``, the drift the sampled actions had in meta-training
                without their noise; ``"mode"``: the most likely action; ``"random"``: a sample.
            generator: Random source of ``"random"``.
            min_change: The smallest change made (>= 1): a multiplier strictly between
                ``1 / min_change`` and ``min_change`` becomes 1 (the LR is kept), so the agent
                moves an LR only when its policy leans clearly one way. 1: every change is made.

        Returns:
            ``(multipliers, actions)``: float64 multipliers ``[...]`` on the CPU and the action
            indices taken (``None`` for ``"mean"``, whose multipliers lie between the set's, and
            where a held change has no action index because the set lacks the multiplier 1).

        Raises:
            ValueError: If ``exploration`` is not one of :data:`EXPLORATION_TYPES`, or ``min_change``
                is not a finite number >= 1.

        Example::

            >>> actions = ActionSet()
            >>> logits = torch.tensor([[0.0, 0, 0, 0, 0, 2, 0], [0.0, 0, 0, 0, 0, 0, 9]])
            >>> [round(m, 3) for m in actions.choose(logits, "mean")[0].tolist()]
            [1.18, 1.999]
            >>> actions.choose(logits, "mean", min_change=1.25)[0].tolist()[0]  # x1.18 is held
            1.0
        """
        check_exploration(exploration)
        min_change = check_min_change(min_change)
        multipliers, actions = self._choose(logits, exploration, generator)
        if min_change > 1:
            held = multipliers.log().abs() < math.log(min_change)
            multipliers = torch.where(held, torch.ones_like(multipliers), multipliers)
            if actions is not None and 1.0 in self.multipliers:
                actions = torch.where(held, self.multipliers.index(1.0), actions)
            elif actions is not None and held.any():
                actions = None  # a held layer's multiplier 1 is no action of this set
        return multipliers, actions

    def _choose(self, logits: Tensor, exploration: str,
                generator: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
        # On the host in float64 (every device has it there): an action's multiplier is then exactly
        # the float the environment applies.
        logits = logits.to("cpu", torch.float64)
        multipliers = torch.tensor(self.multipliers, dtype=torch.float64)
        if exploration == "mean":
            expected = torch.softmax(logits, -1) @ multipliers.log()
            return expected.exp(), None
        if exploration == "mode":
            actions = logits.argmax(-1)
        else:
            flat = torch.softmax(logits, -1).reshape(-1, logits.shape[-1])
            actions = torch.multinomial(flat, 1, generator=generator).reshape(logits.shape[:-1])
        return multipliers[actions], actions
