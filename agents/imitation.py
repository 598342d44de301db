"""A privileged expert for meta-training's first phase: the actor imitates it before PPO takes over.

In meta-training the env can tell (``env.privileged``) how far each layer's LR is from its task's
calibrated best constant LR; deployment never can. The expert reads that and moves each LR
toward the best; the actor, which sees only the deployable observations, learns by DAgger to
choose what the expert would in the states the actor itself reaches (Ross et al. 2011; learning
from a privileged teacher, Chen et al. 2019). A supervised signal per layer and decision, instead
of PPO's one noisy team return per episode: the features carry which way an LR is wrong
(benchmarks/results/feature_probe.md), and imitation is a direct way to learn to read them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from torch import Tensor
from torchrl.modules import ProbabilisticActor

from ganno_lightning.envs import keys


#: What the expert aims each layer's LR at over a run: ``"constant"`` (the best constant LR),
#: ``"cosine"`` (a cosine decay from ``peak_factor`` times it, to :data:`COSINE_FLOOR` of that) or
#: ``"calibrated"`` (per task, whichever of the two trains its cell better, the cosine from its own
#: calibrated best peak LR; ``ganno-calibrate-lrs schedule=cosine``).
EXPERT_SCHEDULES = ("constant", "cosine", "calibrated")
#: The privileged columns the critic reads under each expert schedule: the calibrated expert's
#: targets depend on all six; the others' on the first three, and the annealing one's on the progress.
CRITIC_PRIVILEGED_COLUMNS = {"constant": 3, "cosine": 4, "calibrated": 6}
#: The cosine expert's last target over its peak: within the action set's reach (2^-1 a decision).
COSINE_FLOOR = 0.01


def expert_actions(privileged: Tensor, multipliers: Sequence[float], peak_factor: float = 1.0,
                   schedule: str = "constant") -> Tensor:
    """Per layer, the action whose multiplier brings its LR closest (in log) to its target.

    The target is the task's best constant LR, or ``peak_factor`` times it where a prior schedule
    decays the LR (the privileged LR is then the schedule's peak): the best peak of a decaying
    schedule sits above the best constant LR (a median 2.5x for the tuned cosine of the dev suite).
    With ``schedule="cosine"`` and no prior, the expert itself follows that tuned cosine: its target
    is ``peak_factor`` times the best constant LR, decayed by the cosine at the run's progress
    (taken at the middle of the coming interval), never below :data:`COSINE_FLOOR` of the peak.
    With ``schedule="calibrated"`` it does so only where the task's cell trains better under the
    cosine than at its best constant LR, from the cell's calibrated best peak LR instead of
    ``peak_factor`` times the constant one, and holds the best constant LR elsewhere.
    Where the episode hides its length, the target stays the best constant LR.

    Args:
        privileged: ``[..., agents, 6]``: log10(LR / best LR), whether the best LR is known, whether
            a prior decays the LR, the progress (-1: unknown), log10(best schedule's peak LR / best
            LR) and whether that schedule is a cosine (see
            ``ganno_lightning.envs.layerwise_env.PRIVILEGED_SIZE``).
        multipliers: The action set.
        peak_factor: The target over the best constant LR under a decaying schedule.
        schedule: One of :data:`EXPERT_SCHEDULES`.

    Example::

        >>> privileged = torch.tensor([[1.0, 1, 0, 0.1, 0, 0], [-0.1, 1, 0, 0.1, 0, 0], [0.0, 1, 0, 0.1, 0, 0],
        ...                            [0.0, 1, 1, 0.1, 0, 0]])
        >>> expert_actions(privileged, [0.5, 1.0, 2.0], peak_factor=2.0).tolist()  # 10x, 0.8x, right, prior
        [0, 1, 1, 2]
        >>> late = torch.tensor([[0.0, 1, 0, 0.9, 0, 0], [0.0, 1, 0, -1.0, 0, 0]])  # best LR, 90% through / unknown
        >>> expert_actions(late, [0.5, 1.0, 2.0], schedule="cosine").tolist()
        [0, 1]
        >>> early = torch.tensor([[0.0, 1, 0, 0.05, 0.6, 1], [0.0, 1, 0, 0.05, 0.3, 0]])  # cosine / constant wins
        >>> expert_actions(early, [0.5, 1.0, 2.0], schedule="calibrated").tolist()
        [2, 1]
    """
    if schedule not in EXPERT_SCHEDULES:
        raise ValueError(f"`schedule` must be one of {list(EXPERT_SCHEDULES)}, got {schedule!r}.")
    steps = torch.tensor([math.log10(m) for m in multipliers], dtype=privileged.dtype, device=privileged.device)
    prior = privileged[..., 2:3]
    target = prior * math.log10(peak_factor)
    if schedule != "constant":
        progress = privileged[..., 3:4]
        decay = (0.5 * (1 + torch.cos(math.pi * progress.clamp(0, 1)))).clamp_min(COSINE_FLOOR)
        follows = (prior == 0) & (progress >= 0)  # under a prior the schedule already decays
        peak: Tensor | float = math.log10(peak_factor)
        if schedule == "calibrated":
            follows, peak = follows & (privileged[..., 5:6] > 0), privileged[..., 4:5]
        target = torch.where(follows, peak + decay.log10(), target)
    return (privileged[..., :1] + steps - target).abs().argmin(-1)


def imitation_loss(actor: ProbabilisticActor, batch: TensorDictBase, multipliers: Sequence[float],
                   peak_factor: float = 1.0, schedule: str = "constant") -> Tensor:
    """Cross-entropy of the actor's action distribution against the expert's actions.

    Over the valid agents whose task has a known best LR; the actor is recomputed from the
    batch's stored observations (and recurrent states), as PPO's loss recomputes it.
    """
    privileged = batch[keys.PRIVILEGED]
    valid = batch[keys.MASK] & (privileged[..., 1] > 0)
    if not valid.any():
        return torch.zeros((), requires_grad=True)
    log_prob = actor.get_dist(batch.clone(False)).log_prob(expert_actions(privileged, multipliers, peak_factor, schedule))
    return -log_prob[valid].mean()


def anchor_loss(actor: ProbabilisticActor, anchor: ProbabilisticActor, batch: TensorDictBase) -> Tensor:
    """``KL(anchor || actor)`` of the action distributions, averaged over the batch's valid agents.

    ``anchor`` is a frozen copy of the policy a run started from (``run.init_agent``): the term
    keeps PPO near what that policy did, where the expert of :func:`imitation_loss` pulls toward a
    teacher the starting policy may already have improved on. Both are recomputed from the batch's
    stored observations and recurrent states; the states are the trained actor's, so for a
    recurrent anchor this is its distribution given the actor's memory, close while the two agree.
    """
    with torch.no_grad():
        reference = torch.log_softmax(anchor.get_dist(batch.clone(False)).logits, -1)
    current = torch.log_softmax(actor.get_dist(batch.clone(False)).logits, -1)
    kl = (reference.exp() * (reference - current)).sum(-1)
    return kl[batch[keys.MASK]].mean()


def agreement(batch: TensorDictBase, multipliers: Sequence[float], peak_factor: float = 1.0,
              schedule: str = "constant") -> float:
    """Share of the batch's sampled actions (valid agents, known best) that equal the expert's."""
    privileged = batch[keys.PRIVILEGED]
    valid = batch[keys.MASK] & (privileged[..., 1] > 0)
    if not valid.any():
        return math.nan
    return float((batch[keys.ACTION] == expert_actions(privileged, multipliers, peak_factor, schedule))[valid].float().mean())
