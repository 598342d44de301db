"""TorchRL modules around the shared policy: actor, size-invariant critics, running normaliser."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tensordict.nn import TensorDictModule
from torch import Tensor, nn
from torchrl.data import Composite, Unbounded
from torchrl.envs import EnvBase, TensorDictPrimer, TransformedEnv
from torchrl.modules import ProbabilisticActor

from ganno_lightning.envs import keys
from ganno_lightning.envs.layerwise_env import LayerwiseLREnv
from ganno_lightning.layerwise.agent import GANNOAgent
from ganno_lightning.layerwise.policy import (
    ObservationNormalizer,
    PolicyNet,
    pool_agents,
)

LOGITS = (keys.GROUP, "logits")
LOG_PROB = (keys.GROUP, "action_log_prob")
STATE_VALUE = (keys.GROUP, "state_value")
#: A recurrent actor's per-agent state before the decision; the actor writes ("next", *POLICY_STATE).
POLICY_STATE = keys.POLICY_STATE


class NormalizedPolicy(nn.Module):
    """Normaliser then policy: exactly what :class:`GANNOAgent` runs at deployment."""

    def __init__(self, normalizer: ObservationNormalizer, net: PolicyNet) -> None:
        super().__init__()
        self.normalizer = normalizer
        self.net = net

    def forward(self, observation: Tensor, mask: Tensor, state: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        logits, next_state = self.net.step(self.normalizer(observation), mask, state)
        return logits if next_state is None else (logits, next_state)


def recurrent_env(family: Any, settings: Any, seed: int, state_size: int) -> EnvBase:
    """A :class:`LayerwiseLREnv` that carries a recurrent actor's state from step to step.

    TorchRL's ``TensorDictPrimer`` puts a zero ``POLICY_STATE`` in every reset (a new training run,
    a fresh memory) and declares it in the specs; the actor writes the next state under ``"next"``,
    and the collector moves it to the following step. Losses recompute the actor from the stored
    state of each step (truncated backpropagation through one decision).
    """
    env = LayerwiseLREnv(family, settings, seed=seed)
    state = Unbounded(shape=(env.max_agents, state_size))
    group, name = POLICY_STATE
    primer = TensorDictPrimer(Composite({group: Composite({name: state}, shape=(env.max_agents,))}), default_value=0.0)
    return TransformedEnv(env, primer)


class LayerCritic(nn.Module):
    """Per-agent value; ``centralised`` adds the pooled features of all agents (MAPPO), else own only (IPPO).

    Pooling keeps the critic size-invariant: one network values networks of any depth. With
    ``privileged_size`` > 0 the critic also reads the env's training-only facts (``env.privileged``),
    appended to the normalised observation before pooling (its first ``privileged_size`` columns);
    the actor never sees them.
    """

    def __init__(self, normalizer: ObservationNormalizer, num_features: int, hidden_sizes: Sequence[int],
                 centralised: bool, privileged_size: int = 0) -> None:
        super().__init__()
        self.normalizer = normalizer  # shared with the actor, never trained by the critic loss
        self.centralised = centralised
        self.privileged_size = privileged_size
        width = (3 if centralised else 1) * (num_features + privileged_size)
        layers: list[nn.Module] = []
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, observation: Tensor, mask: Tensor, privileged: Tensor | None = None) -> Tensor:
        x = self.normalizer(observation)
        if privileged is not None:
            x = torch.cat([x, privileged[..., :self.privileged_size]], -1)
        if self.centralised:
            x = torch.cat([x, pool_agents(x, mask)], -1)
        return self.mlp(x)


class RunningNormalizer:
    """Welford statistics of the valid (unmasked) observations, copied into the normaliser on demand.

    The normaliser's buffers change only between PPO iterations, so the log-probabilities stored at
    collection time and those recomputed in the update come from the same inputs. Counts are kept per
    feature, so a run that starts from another agent's statistics (``run.init_agent``) can carry its
    features' counts over while features it adds start from none.
    """

    def __init__(self, normalizer: ObservationNormalizer) -> None:
        self.normalizer = normalizer
        self.count = torch.zeros_like(normalizer.mean, dtype=torch.float64)
        self.mean = torch.zeros_like(normalizer.mean, dtype=torch.float64)
        self.m2 = torch.zeros_like(normalizer.mean, dtype=torch.float64)

    def update(self, observation: Tensor, mask: Tensor) -> None:
        x = observation[mask].double()
        if x.numel() == 0:
            return
        n, mean, var = float(len(x)), x.mean(0), x.var(0, unbiased=False)
        delta, total = mean - self.mean, self.count + n
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + var * n + delta.square() * self.count * n / total
        self.count = total

    #: Variance floor: a feature that never varied in training (a flag, say) must not be blown up
    #: to thousands of standard deviations when it does vary at deployment.
    MIN_VAR = 1e-2

    def apply(self) -> None:
        """Copy the statistics of every feature seen more than once into the normaliser."""
        seen = self.count > 1
        variance = (self.m2 / self.count.clamp_min(1.0)).clamp_min(self.MIN_VAR)
        self.normalizer.mean.copy_(torch.where(seen, self.mean, self.normalizer.mean.double()).float())
        self.normalizer.var.copy_(torch.where(seen, variance, self.normalizer.var.double()).float())

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        # checkpoints before per-feature counts hold one count for every feature
        self.count = torch.as_tensor(state["count"], dtype=torch.float64).expand_as(state["mean"]).clone()
        self.mean, self.m2 = state["mean"], state["m2"]


def make_modules(agent: GANNOAgent, critic_hidden: Sequence[int], algorithm: str,
                 privileged_size: int = 0) -> tuple[ProbabilisticActor, TensorDictModule]:
    """The TorchRL actor (sampling, with log-probs) and critic around ``agent``'s own networks.

    The actor wraps ``agent.actor`` and ``agent.normalizer`` themselves, so training updates the
    very modules that :meth:`GANNOAgent.save` exports. ``privileged_size`` > 0: the critic also
    reads ``("agents", "privileged")`` (an env with ``privileged: true``).
    """
    if algorithm not in ("mappo", "ippo"):
        raise ValueError(f"`algorithm` must be 'mappo' or 'ippo', got {algorithm!r}.")
    if agent.recurrent:
        policy = TensorDictModule(NormalizedPolicy(agent.normalizer, agent.actor),
                                  in_keys=[keys.OBSERVATION, keys.MASK, POLICY_STATE],
                                  out_keys=[LOGITS, ("next", *POLICY_STATE)])
    else:
        policy = TensorDictModule(NormalizedPolicy(agent.normalizer, agent.actor),
                                  in_keys=[keys.OBSERVATION, keys.MASK], out_keys=[LOGITS])
    actor = ProbabilisticActor(policy, in_keys={"logits": LOGITS}, out_keys=[keys.ACTION],
                               distribution_class=torch.distributions.Categorical, return_log_prob=True,
                               log_prob_key=LOG_PROB)
    critic = TensorDictModule(
        LayerCritic(agent.normalizer, agent.actor.config["num_features"], critic_hidden, algorithm == "mappo",
                    privileged_size),
        in_keys=[keys.OBSERVATION, keys.MASK, *([keys.PRIVILEGED] if privileged_size else [])],
        out_keys=[STATE_VALUE])
    return actor, critic
