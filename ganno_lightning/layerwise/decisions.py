"""When agents decide: every ``interval`` optimizer steps, optionally after a list of early steps.

By default an agent first decides after ``interval`` steps, then every ``interval`` steps. A run
that starts far from its best LR loses those first steps; ``decision_steps`` adds decisions before
them, e.g. ``[0, 5, 12]`` with ``interval=25`` decides at steps 0, 5, 12, 25, 50, ... A decision at
step 0 comes before any update: it observes one *probe* forward/backward on the first batch (see
:meth:`LayerwiseController.probe <ganno_lightning.layerwise.controller.LayerwiseController.probe>`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: ``decision_steps`` by name: ``"none"`` decides every ``interval`` steps only; ``"front_loaded"``
#: adds steps 0, ``interval // 5`` and ``interval // 2`` (0, 5 and 12 for an interval of 25).
DECISION_STEP_NAMES: tuple[str, ...] = ("none", "front_loaded")

#: ``interval="scaled"``: the agent's interval stretched to the run's length (:func:`paced_to_run`).
SCALED_INTERVAL = "scaled"


def resolve_decision_steps(spec: Any, interval: int, name: str = "decision_steps") -> tuple[int, ...]:
    """The early decision steps ``spec`` stands for: ``None``, a name of :data:`DECISION_STEP_NAMES`, or steps.

    Raises:
        ValueError: If ``spec`` is none of these, or its steps are not increasing ints >= 0.

    Example::

        >>> resolve_decision_steps("front_loaded", interval=25)
        (0, 5, 12)
        >>> resolve_decision_steps([0, 5, 12, 25], interval=25)
        (0, 5, 12, 25)
        >>> resolve_decision_steps(None, 25), resolve_decision_steps("none", 25)
        ((), ())
        >>> resolve_decision_steps([5, 3], 25)
        Traceback (most recent call last):
        ...
        ValueError: `decision_steps` must be 'none', 'front_loaded' or a list of increasing ints >= 0 (e.g. [0, 5, 12]), got [5, 3].
    """
    if spec is None or spec == "none":
        return ()
    if spec == "front_loaded":
        return tuple(sorted({0, interval // 5, interval // 2}))
    steps: tuple[int, ...] | None = None
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        values = list(spec)
        if all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in values) and all(
                a < b for a, b in zip(values, values[1:])):
            steps = tuple(values)
    if steps is None:
        shown = list(spec) if isinstance(spec, Sequence) and not isinstance(spec, str) else spec
        raise ValueError(f"`{name}` must be 'none', 'front_loaded' or a list of increasing ints >= 0 "
                         f"(e.g. [0, 5, 12]), got {shown!r}.")
    return steps


def paced_to_run(interval: int, trained_horizon: int | None, total_steps: int | None) -> int:
    """The interval of an agent trained on ``trained_horizon``-step runs, stretched to a longer run.

    An agent meta-trained on 300-step runs with an interval of 25 makes 12 regular decisions a run,
    and what it learned (when to anneal, what its memory holds) is paced by them; every 25 steps of
    a 3000-step run would give it 120. Stretched by ``total_steps / trained_horizon``, the run gets
    as many at the same fractions of its length as in training. Early decisions are not stretched:
    they correct the starting LR from the run's first steps, as in training (stretching them too
    scored worse on the dev_long suite, ``benchmarks/results/paced_interval/``). Runs no longer than
    the training runs, runs of unknown length and agents of unknown training horizon keep the interval.

    Example::

        >>> paced_to_run(25, trained_horizon=300, total_steps=3000)
        250
        >>> paced_to_run(25, trained_horizon=300, total_steps=200), paced_to_run(25, 300, None)  # unchanged
        (25, 25)
    """
    if not trained_horizon or not total_steps or total_steps <= trained_horizon:
        return interval
    return max(1, round(interval * total_steps / trained_horizon))


class DecisionSteps:
    """The optimizer steps at which agents decide: ``early`` ones, then every multiple of ``interval`` after them.

    Args:
        interval: Optimizer steps between decisions once the early ones are past.
        early: Increasing steps ``>= 0`` (see :func:`resolve_decision_steps`).

    Example::

        >>> steps = DecisionSteps(25, (0, 5, 12))
        >>> steps.first, steps.after(0), steps.after(12), steps.after(25)
        (0, 5, 25, 50)
        >>> DecisionSteps(25).first, DecisionSteps(25).after(25)  # the default: every 25 steps
        (25, 50)
    """

    def __init__(self, interval: int, early: Sequence[int] = ()) -> None:
        if not isinstance(interval, int) or isinstance(interval, bool) or interval <= 0:
            raise ValueError(f"`interval` must be a positive int, got {interval!r}.")
        self.interval = interval
        self.early = resolve_decision_steps(list(early), interval)

    @property
    def first(self) -> int:
        """The first decision of a run (0 when it comes before any update)."""
        return self.early[0] if self.early and self.early[0] == 0 else self.after(0)

    def after(self, step: int) -> int:
        """The first decision step strictly after ``step``: the next early step or the next multiple of
        ``interval``, whichever comes first (an early step past ``interval`` never skips a regular one).

        Example::

            >>> DecisionSteps(10, (0, 5, 12)).after(5), DecisionSteps(10, (0, 5, 12)).after(10)
            (10, 12)
        """
        regular = max(step // self.interval + 1, 1) * self.interval
        later = [s for s in self.early if s > step]
        return min(later[0], regular) if later else regular

    def __repr__(self) -> str:
        return f"DecisionSteps(interval={self.interval}, early={list(self.early)})"
