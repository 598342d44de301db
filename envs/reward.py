"""The environment's team reward and its divergence rule, kept apart from how the run is trained."""

from __future__ import annotations

import math

#: What ``divergence_factor`` multiplies: the run's first interval loss, or its lowest so far.
DIVERGENCE_REFERENCES = ("first", "best")

#: Losses are floored here before the log, so a loss of exactly 0 gives a large finite reward.
LOSS_FLOOR = 1e-12


def log_improvement(previous: float, current: float) -> float:
    """``log(previous) - log(current)``: positive when the loss fell; sums telescope over an episode.

    Example::

        >>> round(log_improvement(2.0, 1.0), 4)
        0.6931
    """
    return math.log(max(previous, LOSS_FLOOR)) - math.log(max(current, LOSS_FLOOR))


class EpisodeReward:
    """The team reward of one episode, interval by interval, and when the run counts as diverged.

    Reward of an interval: ``train_loss_weight * (log(L_prev) - log(L_now))`` of the interval-mean
    training loss, so that term of an episode's return telescopes to
    ``train_loss_weight * log(L_first / L_last)``; plus, when validation is measured,
    ``val_weight * log(V_prev / V_now)``; plus, on the last interval of a run that did not diverge,
    ``final_val_weight * clip(log(V_start / V_end), -final_val_clip, final_val_clip)``: the final
    validation loss, what users are scored on, against the run's own at the first decision
    (:meth:`final_term`). A run diverges when its loss is non-finite or exceeds ``divergence_factor``
    times the reference loss (the first interval's, or the lowest so far); that interval's reward is
    ``-divergence_penalty``.

    Why the final term is relative to the run's start and not to a reference run (issue #18 item 4
    suggests a cached tuned-schedule run, ``log(L_ref / L_end)``): that is ``log(V_start / V_end)``
    minus ``log(V_start / L_ref)``, which no action changes (before clipping). Both give unbiased
    policy gradients; they differ in variance, and a reference correlated with the run's own progress
    might lower it, as a per-task baseline, where the learned critic is the baseline here. Without a
    task pool meta-training draws a fresh task every episode, so no cache can hold references; a pool
    (``env.task_pool``) holds one per task, its tuned constant LR's loss (``PoolTask.best_loss``), and
    ``env.final_val_reference: pool`` passes it to :meth:`final_term` in place of the start. Not yet
    tried in a meta-training run.

    Args:
        divergence_factor: How far above the reference loss a run diverges (> 1).
        divergence_reference: ``"first"`` or ``"best"`` (see :data:`DIVERGENCE_REFERENCES`).
        divergence_penalty: Reward of the interval on which the run diverges is its negative.
        val_weight: Weight of the validation term (0: off).
        train_loss_weight: Weight of the training-loss term (0: the reward is the validation terms and penalties).
        final_val_weight: Weight of the final validation term (0: off).
        final_val_clip: Bound of the final term's log-ratio, before its weight.

    Example::

        >>> reward = EpisodeReward(divergence_factor=10.0, divergence_reference="best",
        ...                        divergence_penalty=5.0, val_weight=0.0)
        >>> reward.start(1.0)
        >>> reward.diverged(0.5), round(reward.of_interval(0.5), 4)
        (False, 0.6931)
        >>> reward.diverged(6.0), reward.penalty   # 6.0 > 10 x the best loss so far, 0.5
        (True, -5.0)
    """

    def __init__(self, divergence_factor: float, divergence_reference: str, divergence_penalty: float,
                 val_weight: float, train_loss_weight: float = 1.0, final_val_weight: float = 0.0,
                 final_val_clip: float = 3.0) -> None:
        if divergence_reference not in DIVERGENCE_REFERENCES:
            raise ValueError(f"`divergence_reference` must be one of {list(DIVERGENCE_REFERENCES)}, "
                             f"got {divergence_reference!r}.")
        self.divergence_factor = divergence_factor
        self.divergence_reference = divergence_reference
        self.divergence_penalty = divergence_penalty
        self.val_weight = val_weight
        self.train_loss_weight = train_loss_weight
        self.final_val_weight = final_val_weight
        if not final_val_clip > 0:
            raise ValueError(f"`final_val_clip` must be > 0 (the bound of log(V_start / V_end)), "
                             f"got {final_val_clip!r}.")
        self.final_val_clip = final_val_clip
        self.first_loss = self.previous_loss = self.best_loss = math.nan

    def start(self, first_loss: float) -> None:
        """Begin an episode whose first interval's loss is ``first_loss``."""
        self.first_loss = self.previous_loss = self.best_loss = first_loss

    @property
    def penalty(self) -> float:
        """The reward of the interval on which a run diverges."""
        return -self.divergence_penalty

    def diverged(self, loss: float) -> bool:
        """Whether an interval-mean loss of ``loss`` ends the run as diverged."""
        reference = self.best_loss if self.divergence_reference == "best" else self.first_loss
        return not math.isfinite(loss) or loss > self.divergence_factor * reference

    def of_interval(self, loss: float) -> float:
        """The reward of a (not diverged) interval that ended at ``loss``; ``loss`` becomes the previous one."""
        reward = self.train_loss_weight * log_improvement(self.previous_loss, loss)
        self.previous_loss = loss
        self.best_loss = min(self.best_loss, loss)
        return reward

    def validation_term(self, previous: float | None, current: float | None) -> float | None:
        """``val_weight * log(V_prev / V_now)``, or ``None`` when it is off or a measurement is missing."""
        if self.val_weight > 0 and current is not None and previous is not None:
            return self.val_weight * log_improvement(previous, current)
        return None

    def final_term(self, start: float | None, end: float | None) -> float | None:
        """``final_val_weight * clip(log(V_start / V_end))`` of a run that ended without diverging.

        ``None`` when the term is off or the start was not measured; an end that could not be
        measured (a non-finite validation loss) scores the clip's worst.

        Example::

            >>> reward = EpisodeReward(10.0, "first", 5.0, 0.0, final_val_weight=2.0, final_val_clip=3.0)
            >>> round(reward.final_term(1.0, 0.5), 4), reward.final_term(1.0, None), reward.final_term(None, 0.5)
            (1.3863, -6.0, None)
        """
        if self.final_val_weight <= 0 or start is None:
            return None
        ratio = -self.final_val_clip if end is None else log_improvement(start, end)
        return self.final_val_weight * min(max(ratio, -self.final_val_clip), self.final_val_clip)
