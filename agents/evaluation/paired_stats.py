"""Paired statistics of an agent against one other method, over tasks x seeds.

Every comparison is paired: the agent and the other method train the same task from the same
initial weights and data order (one seed), so their final validation losses form a pair, and the
pair's log-ratio ``log(agent / other)`` is the unit of evidence (negative: the agent is better).

- **Ties**: a pair within ``tie`` (default 0.5%) of each other is a tie, not a win or a loss, and so
  is a pair where both losses are below ``floor`` (a task both methods solve: which of two
  near-zero losses is smaller decides nothing). A single loss below the floor is raised to it.
- **Harm**: a pair where the agent ends more than ``harm`` (default 2%) worse; counted against the
  constant LR it says how often the agent made a user's run worse than doing nothing.
- **Intervals**: a 95% bootstrap interval of the mean log-ratio. Seeds of one task are not
  independent evidence about other tasks, so the bootstrap resamples *tasks* (with all their seeds;
  a cluster bootstrap), and per task it resamples seeds. With few tasks or seeds the intervals are
  wide: that is the honest answer, not a defect.

A diverged run's loss is ``inf``: against a finite loss it is a clear loss (or win), and two
diverged runs tie. Ratios are clipped at ``RATIO_CLIP`` in log space so that one divergence cannot
make a mean infinite.

Example::

    >>> pairs = {"task_a": [(0.50, 1.00), (0.52, 0.98)], "task_b": [(0.30, 0.30), (0.40, 0.20)]}
    >>> result = compare_paired(pairs, seed=0)
    >>> result.wins, result.ties, result.losses, result.harms
    (2, 1, 1, 1)
    >>> round(result.ratio, 3), result.interval[0] < result.ratio < result.interval[1]
    (0.853, True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["HARM_MARGIN", "RATIO_CLIP", "Comparison", "PairedComparison", "TaskComparison", "compare_paired", "log_ratio"]

#: Largest |log-ratio| a pair contributes (e^4.6 ~ 100x): a diverged run is a loss, not an infinity.
RATIO_CLIP = math.log(100.0)
#: Issue #18's harm margin: the agent's loss more than 2% above another method's.
HARM_MARGIN = 0.02


def log_ratio(agent: float, other: float, floor: float = 0.0) -> float:
    """``log(agent / other)`` of two final losses, with the floor and divergence rules of this module.

    Example::

        >>> round(log_ratio(0.5, 1.0), 4), log_ratio(1e-6, 1e-5, floor=1e-3), log_ratio(math.inf, 1.0)
        (-0.6931, 0.0, 4.605170185988092)
    """
    if math.isnan(agent) or math.isnan(other):
        raise ValueError(f"losses must not be NaN (a diverged run's loss is inf), got {agent!r} and {other!r}.")
    if math.isinf(agent) and math.isinf(other):
        return 0.0
    if math.isinf(agent) or math.isinf(other):
        return RATIO_CLIP if math.isinf(agent) else -RATIO_CLIP
    agent, other = max(agent, floor), max(other, floor)
    if agent <= 0 or other <= 0:
        raise ValueError(f"losses must be positive (or set `floor` > 0), got {agent!r} and {other!r}.")
    return float(np.clip(math.log(agent / other), -RATIO_CLIP, RATIO_CLIP))


@dataclass
class Comparison:
    """Figures of a set of pairs (the agent's point of view).

    Attributes:
        ratio: ``exp(mean log-ratio)``, the geometric mean of agent/other (below 1: the agent is better).
        interval: 95% bootstrap interval of ``ratio``.
        wins, ties, losses: Pair counts.
        harms: Pairs where the agent is more than ``harm`` worse.
    """

    ratio: float
    interval: tuple[float, float]
    wins: int
    ties: int
    losses: int
    harms: int


@dataclass
class TaskComparison(Comparison):
    """One task's pairs over its seeds (the interval resamples seeds)."""

    task: str = ""
    log_ratios: list[float] = field(default_factory=list)


@dataclass
class PairedComparison(Comparison):
    """The agent against one method over every task x seed pair (the interval resamples tasks, then
    seeds within each), with the same figures per task."""

    pairs: int = 0
    tasks: list[TaskComparison] = field(default_factory=list)

    def as_dict(self) -> dict:
        """Plain values for ``results.json``."""
        return {"ratio": self.ratio, "interval": list(self.interval), "wins": self.wins, "ties": self.ties,
                "losses": self.losses, "harms": self.harms, "pairs": self.pairs,
                "tasks": [{**vars(t), "interval": list(t.interval)} for t in self.tasks]}


def compare_paired(
    pairs: Mapping[str, Sequence[tuple[float, float]]],
    *,
    floors: Mapping[str, float] | None = None,
    tie: float = 0.005,
    harm: float = HARM_MARGIN,
    resamples: int = 2000,
    seed: int = 0,
) -> PairedComparison:
    """Compare the agent with another method from their paired final losses.

    Args:
        pairs: Task name -> ``(agent_loss, other_loss)`` for each seed, in the same seed order.
        floors: Task name -> the loss floor of that task (e.g. 1e-3 of its initial loss); 0 if absent.
        tie: Relative band counted as a tie (0.005: within 0.5%).
        harm: Relative excess of the agent's loss counted as harm (0.02: more than 2% worse).
        resamples: Bootstrap resamples (deterministic for a given ``seed``).
        seed: Seed of the bootstrap's random generator.

    Raises:
        ValueError: No pair at all, a task without pairs, or an argument out of range.
    """
    if not pairs or any(len(v) == 0 for v in pairs.values()):
        raise ValueError(f"`pairs` needs at least one (agent, other) pair per task, got {dict(pairs)!r}.")
    if not 0 <= tie < harm:
        raise ValueError(f"`tie` must be >= 0 and below `harm`, got tie={tie!r}, harm={harm!r}.")
    if not (isinstance(resamples, int) and resamples >= 100):
        raise ValueError(f"`resamples` must be an int >= 100, got {resamples!r}.")
    floors = floors or {}
    tie_band, harm_band = math.log1p(tie), math.log1p(harm)
    rng = np.random.default_rng(seed)
    per_task: list[TaskComparison] = []
    for task, task_pairs in pairs.items():
        values = np.array([log_ratio(a, o, floors.get(task, 0.0)) for a, o in task_pairs])
        wins, ties, losses = _counts(values, tie_band)
        per_task.append(TaskComparison(
            task=task, log_ratios=values.tolist(), ratio=float(np.exp(values.mean())),
            interval=_interval(values, [values], rng, resamples),
            wins=wins, ties=ties, losses=losses, harms=int((values > harm_band).sum())))
    every = np.concatenate([np.array(t.log_ratios) for t in per_task])
    wins, ties, losses = _counts(every, tie_band)
    clusters = [np.array(t.log_ratios) for t in per_task]
    return PairedComparison(
        ratio=float(np.exp(every.mean())), interval=_interval(every, clusters, rng, resamples),
        wins=wins, ties=ties, losses=losses, harms=int((every > harm_band).sum()), pairs=int(every.size),
        tasks=per_task)


def _counts(values: np.ndarray, band: float) -> tuple[int, int, int]:
    return int((values < -band).sum()), int((np.abs(values) <= band).sum()), int((values > band).sum())


def _interval(values: np.ndarray, clusters: list[np.ndarray], rng: np.random.Generator,
              resamples: int) -> tuple[float, float]:
    """95% percentile interval of ``exp(mean)``: clusters resampled, then the values within each."""
    if values.size == 1:
        return float(np.exp(values[0])), float(np.exp(values[0]))
    means = np.empty(resamples)
    for i in range(resamples):
        chosen = rng.integers(len(clusters), size=len(clusters))
        drawn = [c[rng.integers(c.size, size=c.size)] for c in (clusters[j] for j in chosen)]
        means[i] = np.concatenate(drawn).mean()
    low, high = np.percentile(means, [2.5, 97.5])
    return float(np.exp(low)), float(np.exp(high))
