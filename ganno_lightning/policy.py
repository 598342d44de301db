"""The shared per-layer policy network: one MLP for every agent, any number of agents."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU}


def pool_agents(observation: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean and max of the observations over the (unmasked) agents, broadcast back to every agent.

    Args:
        observation: ``[..., num_agents, num_features]``.
        mask: ``[..., num_agents]`` booleans, ``False`` for padded agents; ``None`` for all valid.

    Returns:
        ``[..., num_agents, 2 * num_features]``: the same pooled context for every agent.
    """
    if mask is None:
        mask = torch.ones(observation.shape[:-1], dtype=torch.bool, device=observation.device)
    weights = mask.unsqueeze(-1).to(observation.dtype)
    count = weights.sum(-2, keepdim=True).clamp_min(1.0)
    mean = (observation * weights).sum(-2, keepdim=True) / count
    masked = observation.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    peak = masked.amax(-2, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))  # every agent padded
    return torch.cat([mean, peak], -1).expand(*observation.shape[:-1], 2 * observation.shape[-1])


class ObservationNormalizer(nn.Module):
    """Standardises features with statistics gathered in meta-training, then clips them.

    Args:
        num_features: Feature count.
        clip: Normalised values are clipped to ``[-clip, clip]``.
    """

    def __init__(self, num_features: int, clip: float = 5.0) -> None:
        super().__init__()
        self.clip = clip
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("var", torch.ones(num_features))

    def forward(self, observation: Tensor) -> Tensor:
        return ((observation - self.mean) / (self.var + 1e-8).sqrt()).clamp(-self.clip, self.clip)


class LayerPolicyNet(nn.Module):
    """Shared actor: logits over the action set from each agent's own and pooled features.

    Every agent runs the same MLP on ``[own features, mean over agents, max over agents]``, so a
    single network controls networks of any depth, and padded agents (``mask == False``) never
    influence the others.

    Args:
        num_features: Features per agent.
        num_actions: Size of the action set.
        hidden_sizes: Widths of the hidden layers.
        activation: One of ``"tanh"``, ``"relu"``, ``"elu"``, ``"gelu"``.

    Example::

        >>> net = LayerPolicyNet(num_features=21, num_actions=7)
        >>> net(torch.randn(5, 21)).shape  # 5 agents
        torch.Size([5, 7])
    """

    def __init__(
        self,
        num_features: int,
        num_actions: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {sorted(_ACTIVATIONS)}, got {activation!r}.")
        self.config = {
            "num_features": int(num_features),
            "num_actions": int(num_actions),
            "hidden_sizes": [int(h) for h in hidden_sizes],
            "activation": activation,
        }
        layers: list[nn.Module] = []
        width = 3 * num_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), _ACTIVATIONS[activation]()]
            width = hidden
        layers.append(nn.Linear(width, num_actions))
        self.mlp = nn.Sequential(*layers)

    def forward(self, observation: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.mlp(torch.cat([observation, pool_agents(observation, mask)], -1))
