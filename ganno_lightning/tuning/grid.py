"""A tuning grid that is never decided at its edge.

A baseline "tuned over an LR grid" is only tuned when its best LR lies inside the grid: a best
point at the grid's largest (or smallest) factor says the optimum may lie beyond it. So after the
planned grid has run, every (task, schedule) whose best factor, for any seed, sits at an edge gets
one more factor past that edge (the grid's own spacing), and so on until every best point is
interior or the grid reaches ``limits``. The evaluation reports how often that happened.

Example::

    >>> losses = {0.1: [0.9, 0.8], 1.0: [0.5, 0.6], 10.0: [0.4, 0.7]}   # factor -> loss per seed
    >>> factors_past_the_edge(losses)   # seed 0 is best at x10, the largest factor: try x100
    [100.0]
    >>> factors_past_the_edge({**losses, 100.0: [0.45, 0.9]})   # now interior for both seeds
    []
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["DEFAULT_LIMITS", "best_factor", "factors_past_the_edge", "grid_step"]

#: Extension stops at these factors of the task's LR (1e-3x .. 1e3x): beyond them a "best LR" is a
#: property of the task's sampling, not of the schedule.
DEFAULT_LIMITS = (1e-3, 1e3)


def best_factor(losses: Mapping[float, Sequence[float]], seed_index: int) -> float:
    """The factor with the lowest final loss of one seed (the smallest factor on ties; inf loses)."""
    return min(sorted(losses), key=lambda f: _finite_or_inf(losses[f][seed_index]))


def grid_step(factors: Sequence[float]) -> float:
    """The grid's ratio between neighbours (the smallest, so a refined grid keeps its resolution).

    Example::

        >>> round(grid_step([0.1, 0.3, 1.0, 3.0, 10.0]), 3)
        3.0
    """
    ordered = sorted(set(factors))
    if len(ordered) < 2:
        raise ValueError(f"a tuning grid needs at least two factors, got {list(factors)}.")
    return min(b / a for a, b in zip(ordered, ordered[1:]))


def factors_past_the_edge(
    losses: Mapping[float, Sequence[float]],
    limits: tuple[float, float] = DEFAULT_LIMITS,
) -> list[float]:
    """The factors to add so that no seed's best factor sits at an edge of the grid.

    Args:
        losses: Factor -> final validation loss per seed (same seed order for every factor;
            ``inf`` for a diverged run).
        limits: The smallest and largest factor the grid may grow to.

    Returns:
        Zero, one or two factors (one past each edge some seed's best touches), inside ``limits``.
    """
    factors = sorted(losses)
    seeds = {len(v) for v in losses.values()}
    if len(seeds) != 1 or 0 in seeds:
        raise ValueError(f"every factor needs one loss per seed, got {dict(losses)!r}.")
    step = grid_step(factors)
    bests = {best_factor(losses, i) for i in range(seeds.pop())}
    extra = []
    if factors[0] in bests and factors[0] / step >= limits[0] * (1 - 1e-9):
        extra.append(factors[0] / step)
    if factors[-1] in bests and factors[-1] * step <= limits[1] * (1 + 1e-9):
        extra.append(factors[-1] * step)
    return [_tidy(f) for f in extra]


def _finite_or_inf(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def _tidy(factor: float) -> float:
    """Round away float noise from repeated multiplication (10 * 3.1623 * 3.1623 -> 100.0)."""
    return float(f"{factor:.6g}")
