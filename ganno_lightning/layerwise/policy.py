"""The shared per-layer policy network: one MLP (optionally with a GRU) for every agent, any number of agents."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU}


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """The mean of ``values`` ``[..., agents, F]`` over the agents where ``mask`` holds: ``[..., 1, F]`` (0 if none)."""
    weights = mask.unsqueeze(-1).to(values.dtype)
    return (values * weights).sum(-2, keepdim=True) / weights.sum(-2, keepdim=True).clamp_min(1.0)


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
    mean = masked_mean(observation, mask)
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


#: How a policy turns its features into action logits: ``"categorical"``, one free logit per action
#: and agent; ``"factorised"``, a network-wide log-multiplier plus bounded per-layer offsets
#: (:class:`FactorisedHead`).
POLICY_HEADS = ("categorical", "factorised")

#: Default bound of a layer's offset from the network-wide multiplier, as a factor: within [1/2, 2].
DEFAULT_LAYER_OFFSET_FACTOR = 2.0


def _base_config(num_features: int, num_actions: int, hidden_sizes: Sequence[int], activation: str,
                 factorised: Mapping[str, Any] | None) -> dict[str, Any]:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"`activation` must be one of {sorted(_ACTIVATIONS)}, got {activation!r}.")
    config = {"num_features": int(num_features), "num_actions": int(num_actions),
              "hidden_sizes": [int(h) for h in hidden_sizes], "activation": activation}
    if factorised is not None:  # only then: a categorical policy's config stays what earlier releases wrote
        multipliers = [float(m) for m in factorised["action_multipliers"]]
        if len(multipliers) != num_actions:
            raise ValueError(f"`action_multipliers` must list the {num_actions} actions' multipliers, "
                             f"got {multipliers}.")
        offset = factorised.get("layer_offset_factor", DEFAULT_LAYER_OFFSET_FACTOR)
        if not isinstance(offset, float | int) or isinstance(offset, bool) or not 1.0 < offset < math.inf:
            raise ValueError(f"`layer_offset_factor` must be a float > 1 (e.g. 2.0: each layer within x1/2..x2 of "
                             f"the network-wide multiplier), got {offset!r}.")
        config["factorised"] = {"action_multipliers": multipliers, "layer_offset_factor": float(offset)}
    return config


class FactorisedHead(nn.Module):
    """Action logits from a network-wide log-multiplier plus bounded, mean-zero per-layer offsets.

    A pooled part reads the mean of the (unmasked) agents' features and sets one log-multiplier
    ``c`` for the whole network; each agent's own part sets an offset ``o_i``, bounded to
    ``+-log(layer_offset_factor)`` by a tanh and centred over the agents, so offsets redistribute
    the LR between layers and never move the network as a whole. Agent ``i``'s action distribution
    is a Gaussian over the action set's log-multipliers, discretised: ``logit_k = -(log m_k - c -
    o_i)^2 / (2 s^2)`` with one learned width ``s``. Under ``"mean"`` exploration the change is
    about ``exp(c + o_i)``; sampled actions explore each layer independently around it.

    Why: with one free logit per action and layer, every layer learns alone what is mostly one
    network-wide decision (is the LR too high?), and its credit is spread over the layers' noisy
    advantages; here every layer's advantage trains the same ``c``.

    Args:
        width: Features per agent that the head reads.
        action_multipliers: The action set (the levels the Gaussian is discretised on).
        layer_offset_factor: Bound of a layer's offset, as a factor (> 1).

    Example::

        >>> head = FactorisedHead(8, [0.5, 1.0, 2.0])
        >>> head(torch.randn(4, 8)).shape  # 4 agents, 3 actions
        torch.Size([4, 3])
    """

    #: Floor of the width ``s`` (in log-multiplier units): keeps the logits finite.
    MIN_WIDTH = 0.02

    def __init__(self, width: int, action_multipliers: Sequence[float],
                 layer_offset_factor: float = DEFAULT_LAYER_OFFSET_FACTOR) -> None:
        super().__init__()
        self.register_buffer("levels", torch.tensor([math.log(m) for m in action_multipliers]))
        self.max_offset = math.log(layer_offset_factor)
        self.network = nn.Linear(width, 1)
        self.offset = nn.Linear(width, 1)
        self.log_width = nn.Parameter(torch.tensor(math.log(0.5)))

    def centres(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        """Each agent's ``c + o_i``, ``[..., num_agents]``: the log-multiplier its actions centre on."""
        if mask is None:
            mask = torch.ones(features.shape[:-1], dtype=torch.bool, device=features.device)
        offset = self.max_offset * torch.tanh(self.offset(features))
        return (self.network(masked_mean(features, mask)) + offset - masked_mean(offset, mask)).squeeze(-1)

    def forward(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        width = self.log_width.exp().clamp_min(self.MIN_WIDTH)
        return -(self.levels - self.centres(features, mask).unsqueeze(-1)).square() / (2 * width.square())


def _pooled_mlp_layers(num_features: int, hidden_sizes: Sequence[int], activation: str) -> tuple[list[nn.Module], int]:
    """Hidden ``Linear + activation`` layers over [own, mean, max] features, and their output width."""
    layers: list[nn.Module] = []
    width = 3 * num_features
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, hidden), _ACTIVATIONS[activation]()]
        width = hidden
    return layers, width


class LayerPolicyNet(nn.Module):
    """Shared actor: logits over the action set from each agent's own and pooled features.

    Every agent runs the same MLP on ``[own features, mean over agents, max over agents]``, so a
    single network controls networks of any depth, and padded agents (``mask == False``) never
    influence the others. It is stateless: :meth:`step` returns ``None`` as the next state.

    Args:
        num_features: Features per agent.
        num_actions: Size of the action set.
        hidden_sizes: Widths of the hidden layers.
        activation: One of ``"tanh"``, ``"relu"``, ``"elu"``, ``"gelu"``.
        factorised: ``None``: a linear layer gives every action's logit; else the keyword
            arguments of a :class:`FactorisedHead` (``action_multipliers``, optionally
            ``layer_offset_factor``) that does.

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
        factorised: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.config = _base_config(num_features, num_actions, hidden_sizes, activation, factorised)
        layers, width = _pooled_mlp_layers(num_features, hidden_sizes, activation)
        if factorised is None:  # the layer names of earlier releases' files
            self.mlp = nn.Sequential(*layers, nn.Linear(width, num_actions))
            self.head = None
        else:
            self.mlp = nn.Sequential(*layers)
            self.head = FactorisedHead(width, **self.config["factorised"])

    #: Size of the per-agent state carried between decisions (0: none).
    state_size = 0

    def forward(self, observation: Tensor, mask: Tensor | None = None) -> Tensor:
        features = self.mlp(torch.cat([observation, pool_agents(observation, mask)], -1))
        return features if self.head is None else self.head(features, mask)

    def step(self, observation: Tensor, mask: Tensor | None = None,
             state: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Logits and the next state (always ``None``: this policy has no memory)."""
        return self(observation, mask), None


class RecurrentLayerPolicyNet(nn.Module):
    """Shared actor with memory: the MLP's features feed a GRU cell per agent, read by a linear head.

    The state ``[..., num_agents, recurrent_size]`` carries each layer's history from one decision
    to the next (zeros at the start of a run), so the policy can react to trends that a single
    interval's features do not show. Agents share the weights, never their states.

    Args:
        num_features: Features per agent.
        num_actions: Size of the action set.
        hidden_sizes: Widths of the MLP layers before the GRU.
        activation: One of ``"tanh"``, ``"relu"``, ``"elu"``, ``"gelu"``.
        recurrent_size: Width of the GRU state.
        factorised: ``None`` or a :class:`FactorisedHead`'s arguments (see :class:`LayerPolicyNet`).

    Example::

        >>> net = RecurrentLayerPolicyNet(num_features=21, num_actions=7, recurrent_size=16)
        >>> logits, state = net.step(torch.randn(5, 21))  # 5 agents, initial (zero) state
        >>> logits.shape, state.shape
        (torch.Size([5, 7]), torch.Size([5, 16]))
        >>> logits, state = net.step(torch.randn(5, 21), state=state)  # the next decision
    """

    def __init__(
        self,
        num_features: int,
        num_actions: int,
        hidden_sizes: Sequence[int] = (64,),
        activation: str = "tanh",
        recurrent_size: int = 32,
        factorised: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(recurrent_size, int) or recurrent_size <= 0:
            raise ValueError(f"`recurrent_size` must be a positive int, got {recurrent_size!r}.")
        self.config = {**_base_config(num_features, num_actions, hidden_sizes, activation, factorised),
                       "recurrent_size": recurrent_size}
        layers, width = _pooled_mlp_layers(num_features, hidden_sizes, activation)
        self.encoder = nn.Sequential(*layers)
        self.gru = nn.GRUCell(width, recurrent_size)
        self.head = (nn.Linear(recurrent_size, num_actions) if factorised is None
                     else FactorisedHead(recurrent_size, **self.config["factorised"]))
        self.state_size = recurrent_size

    def initial_state(self, batch_shape: Sequence[int]) -> Tensor:
        """The zero state for ``batch_shape`` (ending in the number of agents)."""
        return torch.zeros(*batch_shape, self.state_size, device=self.gru.weight_hh.device)

    def forward(self, observation: Tensor, mask: Tensor | None = None) -> Tensor:
        """Logits from the initial state (a first decision); use :meth:`step` to carry the state."""
        return self.step(observation, mask)[0]

    def step(self, observation: Tensor, mask: Tensor | None = None,
             state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Logits and the next state from observations ``[..., agents, features]`` and the last state."""
        features = self.encoder(torch.cat([observation, pool_agents(observation, mask)], -1))
        batch_shape = features.shape[:-1]
        if state is None:
            state = self.initial_state(batch_shape)
        next_state = self.gru(features.reshape(-1, features.shape[-1]),
                              state.reshape(-1, self.state_size)).reshape(*batch_shape, self.state_size)
        logits = self.head(next_state) if isinstance(self.head, nn.Linear) else self.head(next_state, mask)
        return logits, next_state


PolicyNet = LayerPolicyNet | RecurrentLayerPolicyNet


def init_identity(net: PolicyNet, identity_action: int, probability: float) -> None:
    """Start ``net`` as the identity policy: action ``identity_action`` (multiplier 1) with ``probability``.

    The output layer's weights are zeroed, so the logits do not depend on the observation, and its
    biases are ``log(probability * (K - 1) / (1 - probability))`` for the identity action and 0 for
    the ``K - 1`` others, which share the rest equally. Under ``"mode"`` the agent keeps every LR;
    under ``"mean"`` too when the action set is symmetric in log around 1 (the default and
    ``"wide"`` sets): the other actions' log-multipliers cancel. An untrained agent then does no
    harm, and meta-training learns corrections to "keep the LR".

    Why not probability 1: PPO learns only from actions it samples. With 0.8 (the setting
    suggested for meta-training) one decision in five still explores, each non-identity action
    equally, and the policy's entropy is far from zero. The hidden layers get no gradient until the
    first update has made the output weights non-zero; the output layer learns from the first batch.

    Raises:
        ValueError: If ``probability`` is not in ``(0, 1)`` or ``identity_action`` is not an action.

    Example::

        >>> net = LayerPolicyNet(num_features=21, num_actions=7)
        >>> init_identity(net, identity_action=3, probability=0.8)
        >>> probs = torch.softmax(net(torch.randn(5, 21)), -1)
        >>> round(probs[0, 3].item(), 6), round(probs[0, 0].item(), 6)
        (0.8, 0.033333)
    """
    num_actions = net.config["num_actions"]
    if not isinstance(probability, float | int) or isinstance(probability, bool) or not 0 < probability < 1:
        raise ValueError(f"`identity_prob` must be a probability in (0, 1) (e.g. 0.8), got {probability!r}.")
    if not 0 <= identity_action < num_actions:
        raise ValueError(f"`identity_action` must index one of the {num_actions} actions, got {identity_action!r}.")
    if isinstance(net.head, FactorisedHead):
        _init_identity_factorised(net.head, identity_action, probability)
        return
    last = net.head if isinstance(net, RecurrentLayerPolicyNet) else net.mlp[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        if num_actions > 1:
            last.bias[identity_action] = math.log(probability * (num_actions - 1) / (1 - probability))


def _init_identity_factorised(head: FactorisedHead, identity_action: int, probability: float) -> None:
    """Zero centres (the identity's level, which must be ``log 1 = 0``) and the width that gives it ``probability``.

    The identity's probability falls as the width grows, so the width is found by bisection in log.
    """
    if abs(float(head.levels[identity_action])) > 1e-12:
        raise ValueError(f"A factorised head starts as the identity only around the multiplier 1; action "
                         f"{identity_action} multiplies by {math.exp(float(head.levels[identity_action]))}.")
    levels = head.levels.double()
    low, high = math.log(FactorisedHead.MIN_WIDTH), math.log(10.0)
    for _ in range(60):
        middle = (low + high) / 2
        p = torch.softmax(-levels.square() / (2 * math.exp(2 * middle)), 0)[identity_action]
        low, high = (middle, high) if p > probability else (low, middle)
    with torch.no_grad():
        for linear in (head.network, head.offset):
            linear.weight.zero_()
            linear.bias.zero_()
        head.log_width.fill_((low + high) / 2)


class PolicyEnsemble(nn.Module):
    """Several meta-trained policies acting as one: the mixture of their action distributions.

    Meta-training seeds of one recipe differ more than recipes do, so a policy picked from one
    seed is a lottery ticket. The ensemble's action distribution is the equal-weight mixture of
    the members' (``log mean_k softmax(logits_k)``), so under ``"mean"`` exploration the LR change
    is the geometric mean of the members' expected changes, and a decision that one member gets
    wrong is outvoted by the others. Each member keeps its own observation normaliser (they were
    trained on different statistics); recurrent members' states are concatenated along the last
    dimension, in member order.

    Args:
        members: ``(normalizer, policy)`` pairs, all with the same feature and action counts.

    Raises:
        ValueError: If there are no members, or their feature or action counts differ.

    Example::

        >>> members = [(ObservationNormalizer(21), RecurrentLayerPolicyNet(21, 7, recurrent_size=16)),
        ...            (ObservationNormalizer(21), LayerPolicyNet(21, 7))]
        >>> ensemble = PolicyEnsemble(members)
        >>> logits, state = ensemble.step(torch.randn(5, 21))  # 5 agents
        >>> logits.shape, state.shape  # the mixture's logits; the recurrent member's state
        (torch.Size([5, 7]), torch.Size([5, 16]))
    """

    def __init__(self, members: Sequence[tuple[ObservationNormalizer, PolicyNet]]) -> None:
        super().__init__()
        if not members:
            raise ValueError("An ensemble needs at least one member policy, got none.")
        first = members[0][1].config
        for index, (normalizer, policy) in enumerate(members):
            counts = (policy.config["num_features"], policy.config["num_actions"], normalizer.mean.numel())
            if counts != (first["num_features"], first["num_actions"], first["num_features"]):
                raise ValueError(f"Ensemble member {index} has {counts[0]} features, {counts[1]} actions and a "
                                 f"normaliser of {counts[2]} features; member 0 has {first['num_features']} features "
                                 f"and {first['num_actions']} actions. Ensemble agents trained with the same "
                                 "features and action set.")
        self.normalizers = nn.ModuleList(normalizer for normalizer, _ in members)
        self.policies = nn.ModuleList(policy for _, policy in members)
        self.config = {"num_features": first["num_features"], "num_actions": first["num_actions"],
                       "members": [{"policy": dict(policy.config), "clip": float(normalizer.clip)}
                                   for normalizer, policy in members]}
        self._state_sizes = [policy.state_size for policy in self.policies]
        self.state_size = sum(self._state_sizes)

    def forward(self, observation: Tensor, mask: Tensor | None = None) -> Tensor:
        """The mixture's logits from the initial state (a first decision); use :meth:`step` to carry the state."""
        return self.step(observation, mask)[0]

    def step(self, observation: Tensor, mask: Tensor | None = None,
             state: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The mixture's logits and the members' next states (``None`` when no member has one)."""
        states = [None] * len(self.policies) if state is None else list(state.split(self._state_sizes, -1))
        log_probs, next_states = [], []
        for normalizer, policy, member_state in zip(self.normalizers, self.policies, states, strict=True):
            # a feed-forward member ignores its (empty) state
            logits, next_state = policy.step(normalizer(observation), mask, member_state)
            log_probs.append(torch.log_softmax(logits, -1))
            if next_state is not None:
                next_states.append(next_state)
        mixture = torch.logsumexp(torch.stack(log_probs), 0) - math.log(len(log_probs))
        return mixture, (torch.cat(next_states, -1) if next_states else None)


class RunLengthRouter(nn.Module):
    """Policies that share out fits by their length: each acts in the fits of its range of lengths.

    A policy meta-trained on short runs and one trained on long runs can keep their strengths
    side by side: which one acts is fixed before the fit's first step, by the fit's total
    optimizer steps, which the observation carries as the ``log_total_steps`` feature (the log of
    the length; 0 when unknown). Route ``k`` acts where the length is above ``boundaries[k - 1]``
    and at most ``boundaries[k]``; fits of unknown length go to route 0. Each route reads its own
    features' columns of the observation, normalised by its own statistics. Every route steps
    its recurrent state at each decision (states concatenated in route order), so the logits are
    the chosen route's exactly as it would act alone.

    Args:
        routes: ``(normalizer, policy, columns)`` per route, shortest fits first: ``columns`` index
            the observation's features the policy reads, in its order.
        boundaries: Ascending fit lengths in optimizer steps, one fewer than the routes.
        length_column: The observation's ``log_total_steps`` column.

    Raises:
        ValueError: If the routes and boundaries do not fit together, or a route's counts disagree.

    Example::

        >>> short = (ObservationNormalizer(2), LayerPolicyNet(2, 3, [8]), [0, 1])
        >>> long = (ObservationNormalizer(3), LayerPolicyNet(3, 3, [8]), [0, 1, 2])
        >>> router = RunLengthRouter([short, long], boundaries=[600], length_column=2)
        >>> fit = torch.tensor([[0.1, 0.2, math.log(3000)]])  # one layer of a 3000-step fit
        >>> normalizer, policy, _ = long
        >>> torch.equal(router(fit), policy(normalizer(fit)))  # acts as the long-run policy alone
        True
    """

    def __init__(self, routes: Sequence[tuple[ObservationNormalizer, PolicyNet, Sequence[int]]],
                 boundaries: Sequence[float], length_column: int) -> None:
        super().__init__()
        if len(routes) < 2 or len(boundaries) != len(routes) - 1:
            raise ValueError(f"A router needs at least two routes and one boundary fewer, got {len(routes)} routes "
                             f"and boundaries {list(boundaries)}.")
        if any(b <= 1 for b in boundaries) or list(boundaries) != sorted(set(boundaries)):
            raise ValueError(f"`boundaries` must be ascending fit lengths above 1 step, got {list(boundaries)}.")
        num_actions = routes[0][1].config["num_actions"]
        num_features = max(max(columns) for _, _, columns in routes) + 1
        for index, (normalizer, policy, columns) in enumerate(routes):
            counts = (policy.config["num_features"], normalizer.mean.numel(), len(columns))
            if len(set(counts)) != 1 or policy.config["num_actions"] != num_actions:
                raise ValueError(f"Route {index} reads {len(columns)} columns into a policy of "
                                 f"{counts[0]} features and {policy.config['num_actions']} actions with a normaliser "
                                 f"of {counts[1]}; every route must read as many columns as its policy's features "
                                 f"and act with {num_actions} actions, as route 0 does.")
        self.normalizers = nn.ModuleList(normalizer for normalizer, _, _ in routes)
        self.policies = nn.ModuleList(policy for _, policy, _ in routes)
        self.columns = [list(columns) for _, _, columns in routes]
        self.register_buffer("log_boundaries", torch.log(torch.tensor([float(b) for b in boundaries])))
        self.length_column = int(length_column)
        self.config = {"num_features": num_features, "num_actions": num_actions,
                       "routes": [{"policy": dict(policy.config), "clip": float(normalizer.clip),
                                   "columns": list(columns)} for normalizer, policy, columns in routes],
                       "boundaries": [float(b) for b in boundaries], "length_column": self.length_column}
        self._state_sizes = [policy.state_size for policy in self.policies]
        self.state_size = sum(self._state_sizes)

    def route(self, observation: Tensor) -> Tensor:
        """The index of the route that acts for each row of ``observation`` ``[..., agents]``."""
        log_length = observation[..., self.length_column].contiguous()
        known = log_length > 0
        return torch.where(known, torch.bucketize(log_length, self.log_boundaries), torch.zeros_like(log_length).long())

    def route_for_length(self, total_steps: int | None) -> int:
        """The index of the route that acts in a fit of ``total_steps`` optimizer steps (``None``: unknown), read
        as the observer writes the length (``log_total_steps``), so it is the route :meth:`route` picks."""
        log_length = math.log(total_steps) if total_steps else 0.0
        return int(self.route(torch.full((self.length_column + 1,), log_length)))

    def forward(self, observation: Tensor, mask: Tensor | None = None) -> Tensor:
        """The acting route's logits from the initial state (a first decision); :meth:`step` carries the state."""
        return self.step(observation, mask)[0]

    def step(self, observation: Tensor, mask: Tensor | None = None,
             state: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The acting route's logits for each row and every route's next state (``None`` when none has one)."""
        states = [None] * len(self.policies) if state is None else list(state.split(self._state_sizes, -1))
        logits, next_states = [], []
        for normalizer, policy, columns, route_state in zip(self.normalizers, self.policies, self.columns, states,
                                                            strict=True):
            route_logits, next_state = policy.step(normalizer(observation[..., columns]), mask, route_state)
            logits.append(route_logits)
            if next_state is not None:
                next_states.append(next_state)
        chosen = self.route(observation)[None, ..., None].expand(1, *logits[0].shape)
        return torch.stack(logits).gather(0, chosen)[0], (torch.cat(next_states, -1) if next_states else None)


def build_policy(config: Mapping[str, Any]) -> PolicyNet | PolicyEnsemble | RunLengthRouter:
    """The policy a saved ``config`` describes: recurrent when it has a positive ``recurrent_size``,
    with a :class:`FactorisedHead` when it has ``factorised`` settings, a :class:`PolicyEnsemble`
    when it lists ``members``, a :class:`RunLengthRouter` when it lists ``routes``."""
    if "members" in config:
        return PolicyEnsemble([(ObservationNormalizer(config["num_features"], clip=float(member["clip"])),
                                build_policy(member["policy"])) for member in config["members"]])
    if "routes" in config:
        return RunLengthRouter([(ObservationNormalizer(len(route["columns"]), clip=float(route["clip"])),
                                 build_policy(route["policy"]), route["columns"]) for route in config["routes"]],
                               config["boundaries"], config["length_column"])
    args = (config["num_features"], config["num_actions"], config["hidden_sizes"], config.get("activation", "tanh"))
    factorised = config.get("factorised")
    if config.get("recurrent_size"):
        return RecurrentLayerPolicyNet(*args, recurrent_size=int(config["recurrent_size"]), factorised=factorised)
    return LayerPolicyNet(*args, factorised=factorised)
