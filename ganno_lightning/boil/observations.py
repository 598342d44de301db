"""What BOIL's algorithm reads and returns: finished or running trials, and its next suggestion.

The contract between the Lightning-free core (:mod:`ganno_lightning.boil.core`) and everything
around it (store, tuner, callback, Ray searcher). Plain data only: configurations are points of
the unit cube (the search space maps them to values), training lengths are epochs, curve values
are the monitored metric as logged (the core orients them by ``mode`` and normalises them).

Example::

    >>> trial = Observation(x=[0.2, 0.7], max_epochs=10, curve=[(1, 0.9), (2, 0.7)], seconds=3.5, status="running")
    >>> trial.epochs_done
    2
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Observation", "SUGGEST_SECONDS", "Suggestion", "TRIAL_STATES", "suggest_seconds"]

#: A trial's life: queued (suggested, committed, not started), running, then one of the ends.
TRIAL_STATES = ("queued", "running", "done", "diverged", "failed", "interrupted")
#: The key of ``Suggestion.info`` (and of the records that keep it) with the core's seconds for choosing the trial.
SUGGEST_SECONDS = "suggest_seconds"


def suggest_seconds(info: Mapping[str, Any]) -> float:
    """The seconds the core spent on a suggestion, read from its ``info`` or a record that keeps it.

    0 for a random suggestion and for a record written before the key existed (an older store or Ray pickle).
    """
    return float(info.get(SUGGEST_SECONDS) or 0.0)


@dataclass
class Observation:
    """One trial as the core sees it.

    Args:
        x: the configuration as a point of the unit cube ``[0, 1]^d`` (search-space order).
        max_epochs: the training length the trial was given (``t``, at most the tuner's ``T_max``).
        curve: ``(epoch, metric)`` points in order of training, one per epoch: the value of the
            monitored metric at the end of that epoch (the last validation within it). A running,
            interrupted or diverged trial has a prefix (a diverged one may end in a non-finite value).
        seconds: wall-clock seconds the trial has trained so far (the cost model's data).
        status: one of :data:`TRIAL_STATES`.
        suggest_seconds: seconds the core spent choosing this trial (its ``Suggestion.info["suggest_seconds"]``;
            0 when random or unknown): what ``max_overhead_share`` weighs against training.
    """

    x: list[float]
    max_epochs: int
    curve: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0
    status: str = "done"
    suggest_seconds: float = 0.0

    @property
    def epochs_done(self) -> int:
        return int(self.curve[-1][0]) if self.curve else 0


@dataclass
class Suggestion:
    """The core's next trial: where to train and for how long, and why.

    Args:
        x: the configuration, a point of the unit cube.
        max_epochs: how many epochs to train it (``1 <= max_epochs <= T_max``).
        info: diagnostics for logs and plots, plain JSON values: at least ``"source"``
            (``"acquisition"`` or ``"random"``), and when a model was fitted ``"m0"``, ``"g0"``,
            ``"log_ei"``, ``"log_cost"``, ``"virtual_observations"``, ``"t_shortest"`` (the shortest length
            it could choose), ``"suggest_seconds"`` (its own time: store it as ``Observation.suggest_seconds``);
            ``"reason"`` when random.
    """

    x: list[float]
    max_epochs: int
    info: dict[str, Any] = field(default_factory=dict)
