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


def expert_actions(privileged: Tensor, multipliers: Sequence[float], peak_factor: float = 1.0) -> Tensor:
    """Per layer, the action whose multiplier brings its LR closest (in log) to its target.

    The target is the task's best constant LR, or ``peak_factor`` times it where a prior schedule
    decays the LR (the privileged LR is then the schedule's peak): the best peak of a decaying
    schedule sits above the best constant LR (a median 2.5x for the tuned cosine of the dev suite).

    Args:
        privileged: ``[..., agents, 3]``: log10(LR / best LR), whether the best LR is known and
            whether a prior decays the LR (see ``ganno_lightning.envs.layerwise_env.PRIVILEGED_SIZE``).
        multipliers: The action set.
        peak_factor: The target over the best constant LR under a prior.

    Example::

        >>> privileged = torch.tensor([[1.0, 1, 0], [-0.1, 1, 0], [0.0, 1, 0], [0.0, 1, 1]])  # 10x, 0.8x, right, prior
        >>> expert_actions(privileged, [0.5, 1.0, 2.0], peak_factor=2.0).tolist()
        [0, 1, 1, 2]
    """
    steps = torch.tensor([math.log10(m) for m in multipliers], dtype=privileged.dtype, device=privileged.device)
    target = privileged[..., 2:3] * math.log10(peak_factor)
    return (privileged[..., :1] + steps - target).abs().argmin(-1)


def imitation_loss(actor: ProbabilisticActor, batch: TensorDictBase, multipliers: Sequence[float],
                   peak_factor: float = 1.0) -> Tensor:
    """Cross-entropy of the actor's action distribution against the expert's actions.

    Over the valid agents whose task has a known best LR; the actor is recomputed from the
    batch's stored observations (and recurrent states), as PPO's loss recomputes it.
    """
    privileged = batch[keys.PRIVILEGED]
    valid = batch[keys.MASK] & (privileged[..., 1] > 0)
    if not valid.any():
        return torch.zeros((), requires_grad=True)
    log_prob = actor.get_dist(batch.clone(False)).log_prob(expert_actions(privileged, multipliers, peak_factor))
    return -log_prob[valid].mean()


def agreement(batch: TensorDictBase, multipliers: Sequence[float], peak_factor: float = 1.0) -> float:
    """Share of the batch's sampled actions (valid agents, known best) that equal the expert's."""
    privileged = batch[keys.PRIVILEGED]
    valid = batch[keys.MASK] & (privileged[..., 1] > 0)
    if not valid.any():
        return math.nan
    return float((batch[keys.ACTION] == expert_actions(privileged, multipliers, peak_factor))[valid].float().mean())
