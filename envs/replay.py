"""Replay the training run an env draws from a seed, under a chosen policy, to its end.

The same seed draws the same task, starting LR, weights and batches, so two policies replayed from
one seed differ only by their actions: the paired comparisons of ``benchmarks/expert_ceiling.py``
and the per-task LR grids of a task pool (:mod:`.build_task_pool`) both rest on that.

Example::

    from ganno_lightning.envs.config import env_config
    from ganno_lightning.envs.replay import constant_policy, replay

    config = {"env": {"horizon": 100, "interval": 25}, "family": {"name": "mlp_digits"}}
    keep = constant_policy(env_config(config).action_multipliers)
    replay(config, seed=0, policy=keep).final_val_loss      # the run at the user's LR, untouched
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from tensordict import TensorDictBase

from ganno_lightning.envs import keys
from ganno_lightning.envs.config import make_env

__all__ = ["NO_SPIKE_END", "REPLAY_OFF", "Policy", "Replay", "at_lr_factor", "constant_policy", "replay", "replay_config"]

#: Observations (one step's TensorDict) -> one action index per agent.
Policy = Callable[[TensorDictBase], torch.Tensor]
#: A replay ends only when its loss is non-finite: an evaluation does not stop a spiking run either.
NO_SPIKE_END = 1e30


#: Meta-training settings a replay turns off where a recipe turns them on: a replay is the run drawn from its
#: seed (not a pool's task), trained on through a spike as an evaluation trains (not rolled back).
REPLAY_OFF = {"task_pool": None, "final_val_reference": "start", "recover_on_spike": False, "long_run_prob": 0.0,
              "long_task_pool": None}


def replay_config(sections: dict) -> dict:
    """A recipe's plain ``env`` and ``family`` sections, set up for replays: privileged (so a replay knows
    where its LR started against the best), no episode end on a loss spike, no pool, no rollback, and a
    validation loss at the end."""
    env = {**sections["env"], "privileged": True, "divergence_factor": NO_SPIKE_END}
    env.update({key: off for key, off in REPLAY_OFF.items() if key in env})  # keys a recipe left out stay out
    # A run validates at its end only under a final-validation term; the rewards themselves are not used here.
    env["final_val_weight"] = env.get("final_val_weight") or 1.0
    return {"env": env, "family": sections["family"]}


def at_lr_factor(config: dict, factor: float, prior: str | None = None) -> dict:
    """``config`` (from :func:`replay_config`) replaying its run from ``factor`` x the task's drawn LR
    (``init_lr_scale: [factor, factor]``), under ``prior`` where given (then in a run of any length).

    Raises:
        ValueError: If the recipe draws per-layer LRs (``layer_lr_spread`` > 1): those draws come after the
            factor's, so runs at different factors would not share their layers' LRs.
    """
    if float(config["env"].get("layer_lr_spread", 1.0)) != 1.0:
        raise ValueError(f"`env.layer_lr_spread` must be 1 for runs replayed at LR factors (each factor would draw "
                         f"other per-layer LRs), got {config['env']['layer_lr_spread']!r}.")
    under = {"prior": prior, "prior_above": 0} if prior is not None else {}
    env = {**config["env"], "init_lr_scale": [factor, factor], **under}
    return {**config, "env": env}


class Replay(NamedTuple):
    """One replayed run: its task, where its LR started, and how it ended."""

    task: str  #: the task's name, family first
    start: float  #: log10(initial LR / the task's best LR, as the privileged columns know it); nan where unknown
    final_val_loss: float  #: inf if the run diverged
    task_lr: float = math.nan  #: the LR the task drew, before any ``init_lr_scale`` factor or pool draw


def replay(config: dict, seed: int, policy: Policy) -> Replay:
    """Replay the run that ``make_env(config, seed)`` draws first under ``policy``, to the end of its episode.

    ``config`` needs ``env.privileged: true`` for :attr:`Replay.start` (else it is nan) and a validation
    loader (``env.final_val_weight > 0`` or ``val_every``) for the final validation loss.
    """
    env = make_env(config, seed=seed)
    try:
        td = env.reset()
        known = keys.PRIVILEGED in td.keys(True) and td[keys.PRIVILEGED][0, 1].item() > 0
        start = td[keys.PRIVILEGED][0, 0].item() if known else math.nan
        while not td["done"].item():
            td = env.step(td.set(keys.ACTION, policy(td)))["next"]
        value = env.run.validation_loss() if math.isfinite(env.controller.last_interval_loss) else math.inf
        final = math.inf if value is None or not math.isfinite(value) else float(value)
        return Replay(env.task.name, start, final, float(env.task.info.get("lr", math.nan)))
    finally:
        env.close()


def constant_policy(multipliers: Sequence[float]) -> Policy:
    """Every agent's action is the multiplier 1: the LR is left as the user set it.

    Raises:
        ValueError: If the action set has no multiplier 1.
    """
    multipliers = [float(m) for m in multipliers]
    if 1.0 not in multipliers:
        raise ValueError(f"`env.action_multipliers` must hold 1 (keep the LR) for the constant-LR run, got "
                         f"{multipliers}.")
    keep = multipliers.index(1.0)
    return lambda td: torch.full(td[keys.MASK].shape, keep, dtype=torch.long)
