"""The deployable agent: policy network, observation normaliser and metadata in one file."""

from __future__ import annotations

import copy
import hashlib
import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ganno_lightning.files import atomic_file
from ganno_lightning.layerwise.actions import (
    DEFAULT_ACTION_MULTIPLIERS,
    DEFAULT_EXPLORATION,
    DEFAULT_SCALE_BOUNDS,
    ActionSet,
    check_exploration,
    check_min_change,
    check_scale_bounds,
    resolve_action_multipliers,
)
from ganno_lightning.layerwise.decisions import resolve_decision_steps
from ganno_lightning.layerwise.features import (
    ALL_FEATURE_NAMES,
    FEATURES_VERSION,
    resolve_feature_names,
)
from ganno_lightning.layerwise.policy import (
    DEFAULT_LAYER_OFFSET_FACTOR,
    POLICY_HEADS,
    LayerPolicyNet,
    ObservationNormalizer,
    PolicyEnsemble,
    PolicyNet,
    RecurrentLayerPolicyNet,
    RunLengthRouter,
    build_policy,
    init_identity,
)
from ganno_lightning.layerwise.lr_search import InitialLRSearch, check_lr_search
from ganno_lightning.layerwise.prior import DEFAULT_PRIOR, check_prior, check_prior_above
from ganno_lightning.layerwise.rollback import SpikeRule, check_spike_rule

#: Version of the checkpoint layout; files from newer versions are refused with a clear message.
#: Feed-forward agents are written as version 1 (readable by every release), recurrent ones as 2,
#: agents trained with early ``decision_steps`` or an LR ``prior`` as 3: a release that predates
#: those keys would silently act at other steps or around another LR, so it must refuse them; and
#: agents with a factorised policy head as 4 (an older release cannot build that actor), and ensembles
#: (:meth:`GANNOAgent.ensemble`) as 5, agents routed by fit length (:meth:`GANNOAgent.routed`) as 6, and
#: agents whose prior acts in long fits only (``prior_above``) as 7: an older release would apply it in every fit;
#: and agents that start each fit with an initial LR search (``lr_search``) as 8: an older release would skip it;
#: and agents that recover from loss spikes (``recover_on_spike``) as 9: an older release would not roll back.
FORMAT_VERSION = 9

#: The agent that ships inside the package (produced by ``ganno-train``).
DEFAULT_AGENT_PATH = Path(__file__).with_name("default_agent.pt")

_REQUIRED_KEYS = ("format_version", "feature_names", "action_multipliers", "interval", "scale_bounds", "actor",
                  "normalizer")


class Decision(NamedTuple):
    """What :meth:`GANNOAgent.decide` returns."""

    multipliers: Tensor  #: ``[..., num_agents]``: what each layer's LR scale is multiplied by
    actions: Tensor | None  #: the action indices taken; ``None`` for ``"mean"``
    state: Tensor | None  #: a recurrent policy's memory, to pass to the next call


class AgentCheckpointError(ValueError):
    """An agent file is missing, unreadable, or incompatible with this version of the package."""


class GANNOAgent:
    """A trained (or fresh) GANNO policy together with everything needed to deploy it.

    The checkpoint is a ``torch.save`` of plain types and tensors, read with ``weights_only=True``:
    format version, feature names, action multipliers, decision interval, actor config and
    weights, observation-normaliser statistics, scale bounds, and the training config and
    evaluation summary it came from.

    Args:
        actor: The shared policy network (feed-forward, or recurrent with a per-layer GRU state).
        normalizer: Observation statistics from meta-training.
        action_multipliers: The multiplier of the current scale each action applies.
        interval: Optimizer steps between decisions the agent was trained with.
        scale_bounds: ``(low, high)`` bounds of every layer's LR scale.
        training_config: Plain-typed config the agent was trained with.
        evaluation: Plain-typed evaluation summary.
        decision_steps: Early decision steps it was trained with (see
            :func:`~ganno_lightning.layerwise.decisions.resolve_decision_steps`); ``()``: every
            ``interval`` steps only.
        prior: LR prior it acts around (see :mod:`~ganno_lightning.layerwise.prior`).
        prior_above: The prior acts only in fits of more optimizer steps than this (0: in every fit).
        lr_search: The initial LR search deployed fits start with (an
            :class:`~ganno_lightning.layerwise.lr_search.InitialLRSearch` or a mapping of its fields), or
            ``None``; it plays no part in meta-training (the env's episodes start at their sampled LRs).
        recover_on_spike: The spike rule deployed fits recover by (a
            :class:`~ganno_lightning.layerwise.rollback.SpikeRule`, a mapping of its fields, or ``True`` for
            its defaults): :class:`~ganno_lightning.layerwise.callback.GANNOCallback` then rolls back to the
            last good decision on a loss spike unless told otherwise; ``None``: no rollback.

    Raises:
        AgentCheckpointError: If the parts disagree (e.g. action count vs. actor outputs).

    Example::

        >>> agent = GANNOAgent.create(interval=25, seed=0)
        >>> observation = torch.zeros(3, len(agent.feature_names))  # three layers, 23 features each
        >>> agent.decide(observation).multipliers.shape  # one LR-scale change per layer
        torch.Size([3])

    A recurrent agent carries a state from one decision to the next::

        >>> agent = GANNOAgent.create(hidden_sizes=(32,), recurrent_size=16, seed=0)
        >>> first = agent.decide(observation)  # first decision: zero state
        >>> second = agent.decide(observation, first.state, exploration="mode")
        >>> second.state.shape, second.actions.shape
        (torch.Size([3, 16]), torch.Size([3]))
    """

    def __init__(
        self,
        actor: PolicyNet | PolicyEnsemble,
        normalizer: ObservationNormalizer,
        *,
        action_multipliers: Sequence[float] = DEFAULT_ACTION_MULTIPLIERS,
        interval: int = 25,
        scale_bounds: tuple[float, float] = DEFAULT_SCALE_BOUNDS,
        training_config: Mapping[str, Any] | None = None,
        evaluation: Mapping[str, Any] | None = None,
        decision_steps: Sequence[int] | str | None = (),
        prior: str = DEFAULT_PRIOR,
        prior_above: int = 0,
        feature_names: str | Sequence[str] | None = None,
        lr_search: InitialLRSearch | Mapping[str, Any] | None = None,
        recover_on_spike: SpikeRule | Mapping[str, Any] | bool | None = None,
    ) -> None:
        try:
            self.action_set = ActionSet(action_multipliers)
            self.feature_names = resolve_feature_names(feature_names, "feature_names")
        except ValueError as err:
            raise AgentCheckpointError(str(err)) from None
        self.action_multipliers = self.action_set.multipliers
        if actor.config["num_actions"] != len(self.action_multipliers):
            raise AgentCheckpointError(
                f"Action set mismatch: the actor outputs {actor.config['num_actions']} actions but "
                f"{len(self.action_multipliers)} action multipliers are given ({list(self.action_multipliers)})."
            )
        factorised = actor.config.get("factorised")
        if factorised and not torch.allclose(torch.tensor(factorised["action_multipliers"], dtype=torch.float64),
                                             torch.tensor(self.action_multipliers, dtype=torch.float64)):
            raise AgentCheckpointError(
                f"Action set mismatch: the factorised actor was built for the multipliers "
                f"{factorised['action_multipliers']}, the agent acts with {list(self.action_multipliers)}.")
        if actor.config["num_features"] != len(self.feature_names) or normalizer.mean.numel() != len(self.feature_names):
            raise AgentCheckpointError(
                f"Feature count mismatch: actor expects {actor.config['num_features']}, normaliser has "
                f"{normalizer.mean.numel()}, the agent observes {len(self.feature_names)} features."
            )
        if not isinstance(interval, int) or interval <= 0:
            raise AgentCheckpointError(f"`interval` must be a positive int, got {interval!r}.")
        self.actor = actor.eval()
        self.normalizer = normalizer.eval()
        self.interval = interval
        self.scale_bounds = check_scale_bounds(scale_bounds)
        try:
            self.decision_steps = resolve_decision_steps(decision_steps, interval)
            self.prior = check_prior(prior)
            self.prior_above = check_prior_above(prior_above)
            self.lr_search = check_lr_search(lr_search)
            self.recover_on_spike = check_spike_rule(recover_on_spike)
        except ValueError as err:
            raise AgentCheckpointError(str(err)) from None
        self.training_config = dict(training_config or {})
        self.evaluation = dict(evaluation or {})

    @classmethod
    def create(
        cls,
        *,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        action_multipliers: Sequence[float] | str = DEFAULT_ACTION_MULTIPLIERS,
        interval: int = 25,
        scale_bounds: tuple[float, float] = DEFAULT_SCALE_BOUNDS,
        recurrent_size: int = 0,
        seed: int | None = None,
        decision_steps: Sequence[int] | str | None = (),
        prior: str = DEFAULT_PRIOR,
        prior_above: int = 0,
        identity_prob: float | None = None,
        feature_names: str | Sequence[str] | None = None,
        policy_head: str = "categorical",
        layer_offset_factor: float = DEFAULT_LAYER_OFFSET_FACTOR,
        lr_search: InitialLRSearch | Mapping[str, Any] | None = None,
        recover_on_spike: SpikeRule | Mapping[str, Any] | bool | None = None,
    ) -> GANNOAgent:
        """A fresh, untrained agent (the starting point of meta-training); ``recurrent_size > 0`` adds a GRU.

        ``policy_head`` is one of :data:`~ganno_lightning.layerwise.policy.POLICY_HEADS`:
        ``"factorised"`` sets a network-wide multiplier and per-layer offsets within
        ``[1/layer_offset_factor, layer_offset_factor]`` of it (see
        :class:`~ganno_lightning.layerwise.policy.FactorisedHead`).

        ``identity_prob`` (in ``(0, 1)``) starts the policy as the identity: its last layer's weights
        are zeroed and its biases make the multiplier-1 action this likely in every state, the
        others equally likely, so under ``"mode"`` and ``"mean"`` (for a set symmetric in log
        around 1) an untrained agent keeps every LR (see
        :func:`~ganno_lightning.layerwise.policy.init_identity`). ``None``: PyTorch's default init.

        Example::

            >>> agent = GANNOAgent.create(identity_prob=0.8, seed=0)
            >>> agent.decide(torch.randn(3, len(agent.feature_names)), exploration="mode").multipliers.tolist()
            [1.0, 1.0, 1.0]
        """
        action_multipliers = resolve_action_multipliers(action_multipliers)  # a name ("wide") or the multipliers
        feature_names = resolve_feature_names(feature_names, "feature_names")  # a set's name or the names
        num_features = len(feature_names)
        if policy_head not in POLICY_HEADS:
            raise ValueError(f"`policy_head` must be one of {list(POLICY_HEADS)}, got {policy_head!r}.")
        factorised = ({"action_multipliers": action_multipliers, "layer_offset_factor": layer_offset_factor}
                      if policy_head == "factorised" else None)
        if seed is not None:
            torch.manual_seed(seed)
        if recurrent_size:
            actor = RecurrentLayerPolicyNet(num_features, len(action_multipliers), hidden_sizes, activation,
                                            recurrent_size=recurrent_size, factorised=factorised)
        else:
            actor = LayerPolicyNet(num_features, len(action_multipliers), hidden_sizes, activation,
                                   factorised=factorised)
        if identity_prob is not None:
            if 1.0 not in action_multipliers:
                raise ValueError(f"`identity_prob` needs an action set with the multiplier 1 (keep the LR), got "
                                 f"{list(action_multipliers)}.")
            init_identity(actor, action_multipliers.index(1.0), identity_prob)
        return cls(actor, ObservationNormalizer(num_features), action_multipliers=action_multipliers,
                   interval=interval, scale_bounds=scale_bounds, decision_steps=decision_steps, prior=prior,
                   prior_above=prior_above, feature_names=feature_names, lr_search=lr_search,
                   recover_on_spike=recover_on_spike)

    @classmethod
    def ensemble(cls, members: Sequence[GANNOAgent], sources: Sequence[str] | None = None) -> GANNOAgent:
        """One agent that acts as the equal-weight mixture of ``members``' policies (see
        :class:`~ganno_lightning.layerwise.policy.PolicyEnsemble`).

        The members must act alike (the same features in the same order, action set, interval,
        scale bounds, decision steps, prior and its ``prior_above``): they observe the same features
        and their decisions are applied at the same steps. Each keeps its own observation normaliser, so the
        ensemble's own is the identity. Its ``training_config`` records every member's source,
        fingerprint and training config, so a file says what it was made of.

        Args:
            members: Trained agents, for example one per meta-training seed of one recipe.
            sources: Where each member came from (recorded only), e.g. their file paths.

        Raises:
            ValueError: If ``members`` is empty, ``sources`` does not name each member, or two
                members act differently (the message names the member and the setting).

        Example::

            >>> members = [GANNOAgent.create(hidden_sizes=(32,), recurrent_size=16, seed=s) for s in range(3)]
            >>> ensemble = GANNOAgent.ensemble(members)
            >>> decision = ensemble.decide(torch.zeros(4, len(ensemble.feature_names)))  # four layers
            >>> decision.multipliers.shape, decision.state.shape  # the members' states side by side
            (torch.Size([4]), torch.Size([4, 48]))
        """
        members = list(members)
        if not members:
            raise ValueError("`members` must list at least one agent to ensemble, got none.")
        sources = [f"member {i}" for i in range(len(members))] if sources is None else [str(s) for s in sources]
        if len(sources) != len(members):
            raise ValueError(f"`sources` must name each of the {len(members)} members, got {len(sources)}: {sources}.")
        first = members[0]
        _check_act_alike(members, sources, "Ensemble members", ("feature_names", *_ACTING_SETTINGS))
        actor = PolicyEnsemble([(copy.deepcopy(m.normalizer), copy.deepcopy(m.actor)) for m in members])
        identity = ObservationNormalizer(len(first.feature_names), clip=math.inf)  # members normalise themselves
        recorded = [{"source": source, "fingerprint": m.fingerprint(), "training_config": m.training_config}
                    for source, m in zip(sources, members)]
        return cls(actor, identity, action_multipliers=first.action_multipliers, interval=first.interval,
                   scale_bounds=first.scale_bounds, training_config={"ensemble": recorded},
                   decision_steps=first.decision_steps, prior=first.prior, prior_above=first.prior_above,
                   lr_search=first.lr_search, recover_on_spike=first.recover_on_spike,
                   feature_names=first.feature_names)

    @classmethod
    def routed(cls, agents: Sequence[GANNOAgent], boundaries: Sequence[int],
               sources: Sequence[str] | None = None) -> GANNOAgent:
        """One agent that acts as ``agents[k]`` in fits longer than ``boundaries[k - 1]`` optimizer steps and at
        most ``boundaries[k]`` (see :class:`~ganno_lightning.layerwise.policy.RunLengthRouter`).

        The fit's length is known before its first step (the callback reads it from the Trainer), so an
        agent meta-trained on short runs keeps them while one trained on long runs takes the long ones.
        Fits of unknown length go to ``agents[0]``. The agents must act alike (action set, interval, scale
        bounds, decision steps, prior and its ``prior_above``); the routed agent observes the features of
        the agent that observes the most among those that observe the run's length (``log_total_steps``,
        the ``run_length`` feature set), which must include every other's. Its ``training_config`` records each route's
        source, fingerprint, range and training config.

        Args:
            agents: Shortest fits first.
            boundaries: Ascending fit lengths in optimizer steps, one fewer than ``agents``.
            sources: Where each agent came from (recorded only), e.g. their file paths.

        Raises:
            ValueError: If the agents act differently, no agent observes the run's length, or the boundaries
                do not fit the agents (each message names the agent or the value).

        Example::

            >>> short = GANNOAgent.create(hidden_sizes=(16,), seed=0)
            >>> long = GANNOAgent.create(hidden_sizes=(16,), seed=1, feature_names="run_length")
            >>> routed = GANNOAgent.routed([short, long], boundaries=[600])
            >>> len(routed.feature_names) == len(long.feature_names), routed.trained_horizon is None
            (True, True)
        """
        agents = list(agents)
        sources = [f"agent {i}" for i in range(len(agents))] if sources is None else [str(s) for s in sources]
        if len(agents) < 2 or len(sources) != len(agents):
            raise ValueError(f"`agents` must list at least two agents and `sources` name each, got {len(agents)} "
                             f"agents and {len(sources)} sources.")
        if len(boundaries) != len(agents) - 1:
            raise ValueError(f"`boundaries` must hold one fit length fewer than the {len(agents)} agents, got "
                             f"{list(boundaries)}; e.g. [600] for two.")
        _check_act_alike(agents, sources, "Routed agents", _ACTING_SETTINGS)
        told = [agent for agent in agents if "log_total_steps" in agent.feature_names]
        if not told:
            raise ValueError("Routed agents are chosen by the fit's length, which one of them must observe "
                             "(`log_total_steps`, meta-train it with `env.features: run_length`); none does.")
        names = list(max(told, key=lambda agent: len(agent.feature_names)).feature_names)
        for source, agent in zip(sources, agents):
            if not set(agent.feature_names) <= set(names):
                raise ValueError(f"{source} observes {sorted(set(agent.feature_names) - set(names))}, which the "
                                 f"widest agent does not; routed agents must observe subsets of its features.")
        routes = [(copy.deepcopy(agent.normalizer), copy.deepcopy(agent.actor),
                   [names.index(name) for name in agent.feature_names]) for agent in agents]
        actor = RunLengthRouter(routes, boundaries, names.index("log_total_steps"))
        identity = ObservationNormalizer(len(names), clip=math.inf)  # each route normalises its own columns
        ranges = [*[f"<= {b}" for b in boundaries], f"> {boundaries[-1]}"]
        recorded = [{"source": source, "fingerprint": agent.fingerprint(), "fits": fits,
                     "training_config": agent.training_config}
                    for source, agent, fits in zip(sources, agents, ranges)]
        first = agents[0]
        return cls(actor, identity, action_multipliers=first.action_multipliers, interval=first.interval,
                   scale_bounds=first.scale_bounds, training_config={"routes": recorded},
                   decision_steps=first.decision_steps, prior=first.prior, prior_above=first.prior_above,
                   lr_search=first.lr_search, recover_on_spike=first.recover_on_spike,
                   feature_names=names)

    # -- acting -------------------------------------------------------------------------------
    @property
    def recurrent(self) -> bool:
        """Whether the policy carries a state between decisions (see :meth:`decide`)."""
        return self.actor.state_size > 0

    @property
    def trained_horizon(self) -> int | None:
        """Optimizer steps of the longest runs it was meta-trained on (``env.horizon``, or ``env.long_horizon``
        where some episodes were long runs); ``None`` when not recorded.

        An ensemble's is its members' where they agree.

        Example::

            >>> GANNOAgent.default().trained_horizon
            300
        """
        if "routes" in self.training_config:  # the longest fits go to the last route
            return GANNOAgent._horizon_of([self.training_config["routes"][-1]["training_config"]])
        configs = [m["training_config"] for m in self.training_config.get("ensemble", [])] or [self.training_config]
        return GANNOAgent._horizon_of(configs)

    def trained_horizon_for(self, total_steps: int | None) -> int | None:
        """:attr:`trained_horizon` of the policy that acts in a fit of ``total_steps`` optimizer steps: for a
        routed agent (:meth:`routed`) its route's for that length (an unknown length's: its first route's).

        Example::

            >>> GANNOAgent.default().trained_horizon_for(3000)  # one policy for every length
            300
        """
        routes = self.training_config.get("routes")
        if not routes or not isinstance(self.actor, RunLengthRouter):
            return self.trained_horizon
        return GANNOAgent._horizon_of([routes[self.actor.route_for_length(total_steps)]["training_config"]])

    @staticmethod
    def _horizon_of(configs: Sequence[Mapping[str, Any]]) -> int | None:
        envs = [c.get("env") or {} for c in configs]
        horizons = {env.get("long_horizon") if (env.get("long_run_prob") or 0) > 0 else env.get("horizon")
                    for env in envs}
        horizon = horizons.pop() if len(horizons) == 1 else None
        return horizon if isinstance(horizon, int) and not isinstance(horizon, bool) and horizon > 0 else None

    def fingerprint(self) -> str:
        """A short hash of the weights and normaliser: a checkpoint records which agent wrote it.

        Example::

            >>> a, b = GANNOAgent.create(seed=0), GANNOAgent.create(seed=1)
            >>> a.fingerprint() == GANNOAgent.create(seed=0).fingerprint(), a.fingerprint() == b.fingerprint()
            (True, False)
        """
        digest = hashlib.sha256()
        for module in (self.actor, self.normalizer):
            for name, tensor in module.state_dict().items():
                digest.update(name.encode())
                # raw bytes, any dtype (numpy has no bfloat16); a float32 agent hashes as before
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    @torch.no_grad()
    def logits(self, observation: Tensor, mask: Tensor | None = None) -> Tensor:
        """Action logits ``[..., num_agents, num_actions]`` for raw observations (a recurrent policy: zero state)."""
        return self.actor(self.normalizer(observation.float()), mask)

    @torch.no_grad()
    def decide(
        self,
        observation: Tensor,
        state: Tensor | None = None,
        mask: Tensor | None = None,
        exploration: str = DEFAULT_EXPLORATION,
        generator: torch.Generator | None = None,
        min_change: float = 1.0,
    ) -> Decision:
        """One decision: a multiplier of every layer's LR scale, and the state for the next call.

        Args:
            observation: ``[..., num_agents, num_features]`` raw features.
            state: ``Decision.state`` of the previous call; ``None`` at the start of a run.
            mask: ``False`` for padded agents.
            exploration: One of :data:`~ganno_lightning.layerwise.actions.EXPLORATION_TYPES`
                (see :meth:`ActionSet.choose <ganno_lightning.layerwise.actions.ActionSet.choose>`):
                ``"mean"``: the policy's expected change; ``"mode"``: the most likely action;
                ``"random"``: a sample.
            generator: Random source of ``"random"``.
            min_change: Changes smaller than this factor either way keep the LR (1: none is skipped; see
                :meth:`ActionSet.choose <ganno_lightning.layerwise.actions.ActionSet.choose>`).

        Returns:
            A :class:`Decision`; its ``actions`` are ``None`` for ``"mean"``, whose multipliers lie
            between the action set's; ``state`` is ``None`` for a feed-forward policy.

        Raises:
            ValueError: If ``exploration`` is not one of
                :data:`~ganno_lightning.layerwise.actions.EXPLORATION_TYPES`, or ``min_change`` is below 1.
        """
        check_exploration(exploration)  # before the policy runs
        check_min_change(min_change)
        logits, next_state = self.action_logits(observation, state, mask)
        multipliers, actions = self.action_set.choose(logits, exploration, generator, min_change)
        return Decision(multipliers, actions, next_state)

    def action_logits(self, observation: Tensor, state: Tensor | None = None,
                      mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The policy's ``[..., num_agents, num_actions]`` logits over the action set, and the state for the next
        call: what :meth:`decide` chooses from (arguments as there), for diagnostics that score the policy itself.

        Example::

            >>> agent = GANNOAgent.create(seed=0)
            >>> logits, state = agent.action_logits(torch.zeros(3, len(agent.feature_names)))
            >>> logits.shape, state is None
            (torch.Size([3, 7]), True)
        """
        return self.actor.step(self.normalizer(observation.float()), mask, state)

    # -- files --------------------------------------------------------------------------------
    @property
    def _uses_timing_options(self) -> bool:
        return bool(self.decision_steps) or self.prior != DEFAULT_PRIOR

    @property
    def _prior_is_bounded(self) -> bool:  # without a prior a bound means nothing, and is not written
        return self.prior != DEFAULT_PRIOR and self.prior_above > 0

    def to_checkpoint(self) -> dict[str, Any]:
        # The oldest format that holds this agent, so older releases read every file they can use.
        version = (9 if self.recover_on_spike is not None else 8 if self.lr_search is not None
                   else 7 if self._prior_is_bounded else 6 if isinstance(self.actor, RunLengthRouter)
                   else 5 if isinstance(self.actor, PolicyEnsemble) else 4 if "factorised" in self.actor.config
                   else 3 if self._uses_timing_options else 2 if self.recurrent else 1)
        # Written only when set: a file without them is byte for byte what earlier releases wrote.
        timing = {"decision_steps": list(self.decision_steps), "prior": self.prior} if self._uses_timing_options else {}
        if self._prior_is_bounded:
            timing["prior_above"] = self.prior_above
        if self.lr_search is not None:
            timing["lr_search"] = self.lr_search.to_dict()
        if self.recover_on_spike is not None:
            timing["recover_on_spike"] = self.recover_on_spike.to_dict()
        return {
            "format_version": version,
            "feature_names": list(self.feature_names),
            "features_version": FEATURES_VERSION,
            "action_multipliers": list(self.action_multipliers),
            "interval": self.interval,
            "scale_bounds": list(self.scale_bounds),
            **timing,
            "actor": {"config": dict(self.actor.config),
                      "state_dict": {k: v.detach().cpu().clone() for k, v in self.actor.state_dict().items()}},
            "normalizer": {"mean": self.normalizer.mean.cpu().clone(), "var": self.normalizer.var.cpu().clone(),
                           "clip": float(self.normalizer.clip)},
            "training_config": self.training_config,
            "evaluation": self.evaluation,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the agent atomically (a crash never leaves a half-written file at ``path``)."""
        path = Path(path)
        with atomic_file(path) as tmp:
            torch.save(self.to_checkpoint(), tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> GANNOAgent:
        """Load an agent file.

        Raises:
            AgentCheckpointError: If the file is missing, empty, truncated, corrupt, not an agent
                (e.g. a model's ``state_dict``), or does not match this version's features, action
                set or checkpoint format; the message names the file, what is wrong and the fix.

        Example::

            >>> agent = GANNOAgent.load(DEFAULT_AGENT_PATH)  # the bundled agent, as ``GANNOAgent.default()``
            >>> agent.interval
            25
        """
        path = Path(path)
        if not path.is_file():
            raise AgentCheckpointError(
                f"Agent file not found: '{path}'. Pass the path of a file written by `GANNOAgent.save` "
                "(e.g. the `agent.pt` exported by `ganno-train`)."
            )
        problem = _archive_problem(path)
        if problem is not None:
            raise _unreadable(path, problem)
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            # weights_only refuses every object but plain types and tensors, which is all an agent
            # holds: the file is something else, and torch's advice to load it unsafely does not apply.
            found = _UNSUPPORTED_GLOBAL.search(str(err))
            holds = f"a pickled `{found.group(1)}`" if found else "pickled objects"
            raise _unreadable(path, f"not a GANNO agent file: it holds {holds}, and an agent file holds only "
                                    "plain types and tensors (a saved model or a Lightning checkpoint is not an "
                                    "agent)") from None
        except Exception as err:  # the archive checked out, so torch's reader hit something we did not foresee
            raise _unreadable(path, f"corrupt: torch cannot read it ({type(err).__name__}: "
                                    f"{_first_sentence(str(err))})") from None
        return cls.from_checkpoint(checkpoint, source=str(path))

    @classmethod
    def from_checkpoint(cls, checkpoint: Any, source: str = "checkpoint") -> GANNOAgent:
        if not isinstance(checkpoint, dict):
            raise AgentCheckpointError(f"{source} is not a GANNO agent file: expected a dict, got "
                                       f"{type(checkpoint).__name__}. {_FIX_USER_FILE}")
        missing = [k for k in _REQUIRED_KEYS if k not in checkpoint]
        if len(missing) == len(_REQUIRED_KEYS):  # some other dict: a model's state_dict, a Lightning checkpoint
            keys = list(checkpoint)
            shown = f"{keys[:5]} and {len(keys) - 5} more" if len(keys) > 5 else f"{keys}"
            raise AgentCheckpointError(
                f"{source} is not a GANNO agent file: it holds a dict with keys {shown}, none of an agent's "
                f"{list(_REQUIRED_KEYS)} (a model's state_dict or a Lightning checkpoint is not an agent). "
                f"{_FIX_USER_FILE}")
        if missing:
            raise AgentCheckpointError(f"{source} is not a GANNO agent checkpoint: missing keys {missing}.")
        version = checkpoint["format_version"]
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise AgentCheckpointError(
                f"{source} has format version {version!r}; this version of ganno-lightning reads versions 1 to "
                f"{FORMAT_VERSION}. Upgrade ganno-lightning or re-export the agent."
            )
        feature_names = list(checkpoint["feature_names"])
        _check_feature_names(feature_names, source)
        features_version = checkpoint.get("features_version", 1)
        if features_version != FEATURES_VERSION:
            raise AgentCheckpointError(
                f"Feature meaning mismatch: {source} was trained on features version {features_version!r}, this "
                f"version of ganno-lightning computes version {FEATURES_VERSION}. Retrain the agent.")
        actor_part, norm_part = checkpoint["actor"], checkpoint["normalizer"]
        try:
            config = dict(actor_part["config"])
            # The weights are loaded over the network's random init: building it must not advance the
            # caller's RNG, or a seeded fit's dropout and shuffling would depend on the agent's size.
            with torch.random.fork_rng(devices=[]):
                actor = build_policy(config)
            actor.load_state_dict(actor_part["state_dict"])
            normalizer = ObservationNormalizer(config["num_features"], clip=float(norm_part.get("clip", 5.0)))
            normalizer.load_state_dict({"mean": norm_part["mean"], "var": norm_part["var"]})
        except (KeyError, TypeError, RuntimeError, ValueError) as err:
            raise AgentCheckpointError(f"{source} has an invalid actor or normaliser: {err}") from err
        try:
            return cls(actor, normalizer, action_multipliers=checkpoint["action_multipliers"],
                       interval=checkpoint["interval"], scale_bounds=tuple(checkpoint["scale_bounds"]),
                       training_config=checkpoint.get("training_config"), evaluation=checkpoint.get("evaluation"),
                       # absent from files of earlier releases: every `interval` steps, no prior
                       decision_steps=checkpoint.get("decision_steps", ()), prior=checkpoint.get("prior", DEFAULT_PRIOR),
                       prior_above=checkpoint.get("prior_above", 0), feature_names=feature_names,
                       lr_search=checkpoint.get("lr_search"), recover_on_spike=checkpoint.get("recover_on_spike"))
        except AgentCheckpointError as err:
            raise AgentCheckpointError(f"{source}: {err}") from None
        except ValueError as err:
            raise AgentCheckpointError(f"{source}: {err}") from err

    @classmethod
    def default(cls) -> GANNOAgent:
        """The agent that ships with the package."""
        if not DEFAULT_AGENT_PATH.is_file():
            raise AgentCheckpointError(
                "No default GANNO agent ships with this version of ganno-lightning yet. Train one with "
                "`ganno-train configs/ganno_default.yaml` and pass its exported file as "
                "`GANNOCallback(agent='path/to/agent.pt')`."
            )
        return cls.load(DEFAULT_AGENT_PATH)

    @classmethod
    def from_source(cls, source: str | os.PathLike) -> GANNOAgent:
        """``"default"`` (the agent that ships with the package, :meth:`default`) or an agent file's path
        (:meth:`load`), as configs and command lines name an agent."""
        return cls.default() if str(source) == "default" else cls.load(source)

    def __repr__(self) -> str:
        timing = (f", decision_steps={list(self.decision_steps)}, prior={self.prior!r}"
                  if self._uses_timing_options else "")
        if self._prior_is_bounded:
            timing += f", prior_above={self.prior_above}"
        if self.lr_search is not None:
            timing += f", lr_search={self.lr_search}"
        if self.recover_on_spike is not None:
            timing += f", recover_on_spike={self.recover_on_spike}"
        actor = self.actor.config
        if isinstance(self.actor, PolicyEnsemble):  # one line per member would drown the rest
            actor = f"ensemble of {len(actor['members'])}: {[m['policy'] for m in actor['members']]}"
        elif isinstance(self.actor, RunLengthRouter):
            actor = f"routed by fit length at {actor['boundaries']}: {[r['policy'] for r in actor['routes']]}"
        return (f"GANNOAgent(actor={actor}, actions={[round(m, 3) for m in self.action_multipliers]}, "
                f"interval={self.interval}, scale_bounds={self.scale_bounds}{timing})")


#: What agents combined into one (ensembled, routed) must share: they decide at the same steps, with the same actions.
_ACTING_SETTINGS = ("action_multipliers", "interval", "scale_bounds", "decision_steps", "prior", "prior_above",
                    "lr_search", "recover_on_spike")


def _check_act_alike(agents: Sequence[GANNOAgent], sources: Sequence[str], what: str,
                     settings: Sequence[str]) -> None:
    """A ``ValueError`` naming the first agent and setting that differs from ``agents[0]``'s."""
    first = agents[0]
    for source, agent in zip(sources[1:], agents[1:]):
        for setting in settings:
            if getattr(agent, setting) != getattr(first, setting):
                raise ValueError(
                    f"{what} must act alike, but {source} has {setting}={getattr(agent, setting)!r} and "
                    f"{sources[0]} has {getattr(first, setting)!r}. Combine agents trained and exported with the "
                    "same env, action and `deploy` settings.")


_FIX_USER_FILE = ("Pass an agent file written by `GANNOAgent.save` (the `agent.pt` that `ganno-train` exports), "
                  "or pass no agent (`GANNOCallback()`) to use the bundled one.")
_FIX_BUNDLED_FILE = "The agent bundled with ganno-lightning is damaged: reinstall ganno-lightning."
_ZIP_HEADER = b"PK\x03\x04"  # how every file `torch.save` writes begins
# what torch's weights_only unpickler names when it meets an object it does not allow
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _unreadable(path: Path, problem: str) -> AgentCheckpointError:
    fix = _FIX_BUNDLED_FILE if path.resolve() == DEFAULT_AGENT_PATH.resolve() else _FIX_USER_FILE
    return AgentCheckpointError(f"Cannot load agent file '{path}': {problem}. {fix}")


def _archive_problem(path: Path) -> str | None:
    """What is wrong with the zip archive that ``torch.save`` writes, or ``None`` when it is whole.

    Checked before ``torch.load``, whose own errors for these cases are a bare ``OSError``, an
    ``EOFError`` or advice to load the file unsafely.
    """
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes)"
    with path.open("rb") as file:
        head = file.read(4)
    if len(head) < 4 and _ZIP_HEADER.startswith(head):
        return f"truncated: the file has {_bytes(size)}, cut inside its zip header"
    if head != _ZIP_HEADER:
        return (f"not a GANNO agent file: agent files are the zip archives `torch.save` writes, and this file "
                f"starts with {head!r}, not a zip header")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            damaged = archive.testzip()  # checksums every entry: a flipped byte is caught here
    except zipfile.BadZipFile:
        # a zip's index (central directory) sits at its end: a cut-short copy loses it first
        return (f"truncated: the file has {_bytes(size)} and ends before its zip archive does (the archive's "
                "index, written at its end, is missing)")
    except (OSError, EOFError, ValueError, NotImplementedError) as err:
        return f"corrupt: its zip archive cannot be read ({type(err).__name__}: {err})"
    if damaged is not None:
        return f"corrupt: the archive's entry '{damaged}' fails its checksum"
    if not any(name.endswith("/data.pkl") for name in names):
        shown = names[:5] + (["..."] if len(names) > 5 else [])
        return (f"not a GANNO agent file: a zip archive without the `data.pkl` that `torch.save` writes "
                f"(it holds {shown})")
    return None


def _bytes(count: int) -> str:
    return "1 byte" if count == 1 else f"{count} bytes"


def _first_sentence(text: str) -> str:
    """Torch's messages go on to generic advice after their first sentence."""
    return re.split(r"\.\s|\n", text.strip(), maxsplit=1)[0]


def _check_feature_names(saved: list[str], source: str) -> None:
    """An agent may observe any features this version computes, each once, in any order it recorded."""
    unknown = [f for f in saved if f not in ALL_FEATURE_NAMES]
    repeated = sorted({f for f in saved if saved.count(f) > 1})
    if not saved or unknown or repeated:
        problem = (f"features this version does not compute {unknown}" if unknown else
                   f"repeated features {repeated}" if repeated else "no features")
        raise AgentCheckpointError(
            f"Feature mismatch: {source} was trained on {problem}. Retrain the agent with this version or install "
            "the version it was trained with."
        )
