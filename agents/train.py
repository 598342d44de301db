"""Meta-train a GANNO agent with MAPPO (or IPPO) in TorchRL, and export the deployable agent file.

    ganno-train configs/ganno_smoke.yaml                     # seconds
    ganno-train configs/ganno_default.yaml run.workers=2     # the shipped default agent
    ganno-train configs/ganno_default.yaml run.resume=true   # continue a stopped run

The script reads top to bottom: config, environments, networks, loss, then the loop where
collection, advantage estimation (multi-agent GAE) and minibatch PPO updates are all visible.
Metrics go to ``<out_dir>/metrics.csv`` and W&B (offline unless told otherwise); a checkpoint
(``checkpoint.pt``, for ``run.resume``) and the exported agent (``agent.pt``) are written every
``run.checkpoint_every`` iterations and at the end.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import datetime
import functools
import math
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from tensordict import TensorDictBase
from torchrl.collectors import Collector, MultiSyncCollector
from torchrl.data import LazyTensorStorage, ReplayBuffer, SamplerWithoutReplacement
from torchrl.objectives.multiagent import IPPOLoss, MAPPOLoss

from ganno_lightning.agents.imitation import (
    CRITIC_PRIVILEGED_COLUMNS,
    EXPERT_SCHEDULES,
    agreement,
    anchor_loss,
    imitation_loss,
)
from ganno_lightning.agents.networks import (
    LOG_PROB,
    STATE_VALUE,
    RunningNormalizer,
    make_modules,
    recurrent_env,
)
from ganno_lightning.config import WANDB_MODES, ConfigCommandLine, load_config
from ganno_lightning.envs import keys
from ganno_lightning.envs.config import check_runnable, check_task_pool, env_config, family_from_config
from ganno_lightning.envs.layerwise_env import LayerwiseLREnv
from ganno_lightning.files import atomic_file, atomic_write_text, check_writable_dir
from ganno_lightning.layerwise.agent import GANNOAgent
from ganno_lightning.layerwise.lr_search import check_lr_search
from ganno_lightning.layerwise.prior import check_prior_above
from ganno_lightning.layerwise.rollback import check_spike_rule
from ganno_lightning.layerwise.policy import POLICY_HEADS


@dataclass
class AlgoConfig:
    algorithm: str = "mappo"  # mappo (centralised critic) | ippo (critic on own features)
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])  # actor MLP
    recurrent_size: int = 0  # > 0: a GRU on top of the actor's MLP, with this state size per layer
    critic_hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"
    # > 0: the actor starts as the identity policy, "keep the LR" with this probability and the other
    # actions equally likely (zeroed output weights); 0: PyTorch's default init. 0.8 keeps PPO exploring.
    identity_init: float = 0.0
    # categorical: one logit per action and layer; factorised: a network-wide multiplier plus per-layer
    # offsets within [1/layer_offset_factor, layer_offset_factor] of it
    # (ganno_lightning.layerwise.policy.FactorisedHead)
    policy_head: str = "categorical"
    layer_offset_factor: float = 2.0
    lr: float = 3e-4  # Adam, actor and critic
    gamma: float = 0.99
    lmbda: float = 0.95  # GAE
    clip_epsilon: float = 0.2
    entropy_coeff: float = 0.01
    critic_coeff: float = 0.5
    epochs: int = 4  # PPO epochs per collected batch
    minibatch_size: int = 64  # env steps (each with all its agents) per gradient step
    max_grad_norm: float = 1.0
    # > 0: the first this many env steps train the actor to imitate a privileged expert (DAgger, see
    # ganno_lightning.agents.imitation; needs env.privileged) and the critic as usual; PPO after
    imitation_frames: int = 0
    # > 0: after the imitation phase, PPO's actor loss also gets this times the imitation cross-entropy,
    # so PPO improves on the teacher near it instead of drifting away (a behaviour-cloning term as in
    # DAPG, Rajeswaran et al. 2018); needs env.privileged
    ppo_imitation_coef: float = 0.0
    # > 0: the first this many env steps train the critic alone (the actor is not updated): with
    # run.init_agent, a fresh critic learns the inherited actor's values before PPO moves that actor
    critic_warmup_frames: int = 0
    # > 0 (needs run.init_agent): PPO's loss also gets this times KL(starting policy || actor) on the
    # collected observations, keeping the run near the agent it started from (agents/imitation.py anchor_loss)
    anchor_coef: float = 0.0
    # true (needs anchor_coef > 0 and env.long_run_prob > 0): the actor learns (PPO's objective and entropy, the
    # imitation term) from the long-run episodes only; the short ones train the critic and, through the anchor
    # (then theirs alone), hold the actor at the starting policy, so long runs learn without moving short ones
    hold_short_runs: bool = False
    # Under an active env.prior (a decaying schedule), the expert aims each layer's undecayed LR at
    # this times the task's best constant LR: a decaying schedule's best peak sits above it
    expert_peak_factor: float = 1.0
    # What the expert aims at without a prior: constant (the best constant LR) | cosine (a cosine decay
    # over the run from expert_peak_factor times it: the agent learns to anneal; see agents/imitation.py)
    # | calibrated (per task, the constant or the cosine, whichever trains its cell better, the cosine from
    # its calibrated peak LR; needs the table's best_cosine_lr: ganno-calibrate-lrs schedule=cosine)
    expert_schedule: str = "constant"


@dataclass
class RunConfig:
    seed: int = 0
    frames_per_batch: int = 128  # env steps collected per PPO iteration (over all workers)
    total_frames: int = 1024  # env steps in the whole run
    workers: int = 1  # > 1: one environment process each (MultiSyncCollector, synchronous)
    backend: str = "local"  # local | ray (TorchRL's RayCollector; needs `pip install ray`)
    out_dir: str = "runs/ganno"
    checkpoint_every: int = 10  # iterations
    resume: bool = False
    export: str | None = None  # also copy the final agent here (e.g. ganno_lightning/layerwise/default_agent.pt)
    # an agent file ("default": the shipped agent) whose actor and observation statistics this run starts from
    # (it must act with the same action set and actor network and observe no feature env.features lacks; features
    # it lacks start with zero weights, see start_from_agent); the critic starts fresh (algo.critic_warmup_frames)
    init_agent: str | None = None
    wandb: bool = True
    wandb_project: str = "ganno-lightning"
    wandb_mode: str = "offline"  # offline | online | disabled
    progress: bool = True  # a progress bar on stderr (env steps, env steps/s, episode return); false: quiet
    threads: int = 1  # torch threads per process; tiny inner models run fastest on one


@dataclass
class DeployConfig:
    """Acting settings the agent file records for deployed fits where they differ from meta-training's.

    Nothing in training reads them: the env's episodes act with the ``env`` section's settings, so
    a run with and without this section trains the same network (only the exported file differs).
    """

    prior_above: int | None = None  # env.prior acts in deployed fits of more optimizer steps (0: every fit); null: env.prior_above
    # an initial LR search before each deployed fit (GANNOCallback's lr_search): true (its defaults) or
    # {steps, factors, held_batches}; null: none
    lr_search: Any = None
    # roll back to the last good decision on a loss spike (GANNOCallback's recover_on_spike): true (its defaults)
    # or {spike_factor, spike_lr_cut}; null: off in deployed fits (env.recover_on_spike is meta-training's own rule)
    recover_on_spike: Any = None


@dataclass
class MetaTrainingConfig:
    """A meta-training config: the env and family sections (checked by the env), ``algo``, ``run`` and ``deploy``."""

    # As written, not filled with defaults: agent files record them so (ganno_lightning.envs.config checks them).
    env: dict[str, Any] = field(default_factory=dict)  # EnvConfig's keys, see configs/env_default.yaml
    family: dict[str, Any] = field(default_factory=dict)  # the task family: {name, train, heldout} or a mixture
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    run: RunConfig = field(default_factory=RunConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)


METRIC_NAMES = (
    "iteration", "frames", "charts/episode_return", "charts/episodes", "charts/reward_per_step",
    "charts/env_steps_per_s", "charts/diverged_fraction", "losses/objective", "losses/critic", "losses/entropy",
    "losses/approx_kl", "losses/clip_fraction", "losses/explained_variance", "losses/imitation", "losses/anchor_kl",
    "charts/expert_agreement",
)


# (metric name, key in the loss module's output) of each update; the PPO objective's while imitating would mislead
CRITIC_STATS = (("critic", "loss_critic"), ("explained_variance", "explained_variance"))
PPO_STATS = (("objective", "loss_objective"), ("entropy", "entropy"), ("approx_kl", "kl_approx"),
             ("clip_fraction", "clip_fraction"), *CRITIC_STATS)


def parse_config(source: Any, overrides: Sequence[str] = ()) -> MetaTrainingConfig:
    """Load YAML + ``key=value`` overrides onto :class:`MetaTrainingConfig` and check every section.

    Raises:
        ValueError: naming the first unknown key or invalid value (see :mod:`ganno_lightning.config`).

    Example::

        config = parse_config("configs/ganno_smoke.yaml", ["run.seed=1", "algo.hidden_sizes[0]=32"])
    """
    loaded = load_config(MetaTrainingConfig, source, overrides, see="configs/ganno_default.yaml")
    config: MetaTrainingConfig = OmegaConf.to_object(loaded)
    env = env_config(_env_sections(config))  # the env and family sections, checked before any process starts
    check_runnable(env, family_from_config(_env_sections(config)))  # env.max_agents, env.device
    check_task_pool(_env_sections(config))
    algo, run = config.algo, config.run
    if algo.algorithm not in ("mappo", "ippo"):
        raise ValueError(f"`algo.algorithm` must be 'mappo' or 'ippo', got {algo.algorithm!r}.")
    for name in ("frames_per_batch", "total_frames", "workers", "checkpoint_every", "threads"):
        if getattr(run, name) <= 0:
            raise ValueError(f"`run.{name}` must be a positive int, got {getattr(run, name)!r}.")
    if not 0 <= algo.identity_init < 1:
        raise ValueError(f"`algo.identity_init` must be in [0, 1) (0: default init; e.g. 0.8), got {algo.identity_init!r}.")
    if algo.identity_init and 1.0 not in env.action_multipliers:
        raise ValueError("`algo.identity_init` needs an action set with the multiplier 1 (keep the LR); "
                         "`env.action_multipliers` has none.")
    if algo.imitation_frames < 0:
        raise ValueError(f"`algo.imitation_frames` must be >= 0 (0: PPO only), got {algo.imitation_frames!r}.")
    _check_coefficient(algo.anchor_coef, "algo.anchor_coef", "0: off; e.g. 1.0")
    if algo.anchor_coef and run.init_agent is None:
        raise ValueError(f"`algo.anchor_coef={algo.anchor_coef}` needs `run.init_agent`: the anchor is the policy "
                         "the run starts from.")
    if algo.hold_short_runs and not (algo.anchor_coef and env.long_run_prob > 0 and not algo.imitation_frames):
        raise ValueError("`algo.hold_short_runs=true` holds the short-run episodes at the starting policy while the "
                         f"long ones train: it needs `algo.anchor_coef` > 0 (got {algo.anchor_coef}), "
                         f"`env.long_run_prob` > 0 (got {env.long_run_prob}) and no imitation phase, which would "
                         f"teach the short runs too (`algo.imitation_frames: 0`, got {algo.imitation_frames}).")
    if algo.critic_warmup_frames < 0:
        raise ValueError(f"`algo.critic_warmup_frames` must be >= 0 (0: the actor trains from the first batch), "
                         f"got {algo.critic_warmup_frames!r}.")
    if run.init_agent is not None and run.init_agent != "default" and not Path(run.init_agent).is_file():
        raise ValueError(f"`run.init_agent`: no agent file at {run.init_agent!r}; give an agent file's path "
                         "(e.g. runs/ganno/agent.pt), 'default' for the shipped agent, or null to start fresh.")
    _check_coefficient(algo.ppo_imitation_coef, "algo.ppo_imitation_coef", "0: plain PPO; e.g. 0.5")
    if algo.ppo_imitation_coef and not env.privileged:
        raise ValueError(f"`algo.ppo_imitation_coef={algo.ppo_imitation_coef}` needs `env.privileged: true`: the "
                         "expert the actor is kept near reads each layer's LR relative to its task's best.")
    if algo.imitation_frames and not env.privileged:
        raise ValueError(f"`algo.imitation_frames={algo.imitation_frames}` needs `env.privileged: true`: the expert "
                         "the actor imitates reads each layer's LR relative to its task's best.")
    if not (isinstance(algo.expert_peak_factor, (int, float)) and algo.expert_peak_factor > 0):
        raise ValueError(f"`algo.expert_peak_factor` must be a positive number (1: the best constant LR; e.g. 2 "
                         f"under `env.prior: cosine`), got {algo.expert_peak_factor!r}.")
    if algo.expert_schedule not in EXPERT_SCHEDULES:
        raise ValueError(f"`algo.expert_schedule` must be one of {list(EXPERT_SCHEDULES)} (cosine: the expert "
                         f"anneals the LR over the run; calibrated: per task, the better of the two), got {algo.expert_schedule!r}.")
    if algo.policy_head not in POLICY_HEADS:
        raise ValueError(f"`algo.policy_head` must be one of {list(POLICY_HEADS)}, got {algo.policy_head!r}.")
    if not (isinstance(algo.layer_offset_factor, (int, float)) and algo.layer_offset_factor > 1):
        raise ValueError(f"`algo.layer_offset_factor` must be a number > 1 (e.g. 2.0: each layer within x1/2..x2 of "
                         f"the network-wide multiplier), got {algo.layer_offset_factor!r}.")
    if algo.recurrent_size < 0:
        raise ValueError(f"`algo.recurrent_size` must be >= 0 (0: feed-forward actor), got {algo.recurrent_size!r}.")
    for name in ("epochs", "minibatch_size"):
        if getattr(algo, name) <= 0:
            raise ValueError(f"`algo.{name}` must be a positive int, got {getattr(algo, name)!r}.")
    if run.frames_per_batch % run.workers:
        raise ValueError(f"`run.frames_per_batch` ({run.frames_per_batch}) must be a multiple of `run.workers` "
                         f"({run.workers}).")
    if algo.minibatch_size > run.frames_per_batch:
        raise ValueError(f"`algo.minibatch_size` ({algo.minibatch_size}) must not exceed `run.frames_per_batch` "
                         f"({run.frames_per_batch}).")
    if run.backend not in ("local", "ray"):
        raise ValueError(f"`run.backend` must be 'local' or 'ray', got {run.backend!r}.")
    # Flat run.wandb* keys rather than a WandbConfig section: the shipped agent file records them so.
    if run.wandb_mode not in WANDB_MODES:
        raise ValueError(f"`run.wandb_mode` must be 'online', 'offline' or 'disabled', got {run.wandb_mode!r}.")
    if not 0 < algo.gamma <= 1 or not 0 <= algo.lmbda <= 1 or algo.lr <= 0:
        raise ValueError(f"`algo.gamma` must be in (0, 1], `algo.lmbda` in [0, 1] and `algo.lr` > 0, got "
                         f"{algo.gamma}, {algo.lmbda}, {algo.lr}.")
    if config.deploy.prior_above is not None:
        check_prior_above(config.deploy.prior_above, "deploy.prior_above")
    check_lr_search(config.deploy.lr_search, "deploy.lr_search")
    check_spike_rule(config.deploy.recover_on_spike, "deploy.recover_on_spike")
    return config


def _split_held(minibatch: TensorDictBase) -> tuple[TensorDictBase, TensorDictBase]:
    """``minibatch``'s long-run env steps, which train the actor, and its short-run ones, which hold it."""
    long_run = minibatch[keys.LONG_RUN].reshape(-1)
    return minibatch[long_run], minibatch[~long_run]


def _check_coefficient(value: Any, name: str, hint: str) -> None:
    """A loss term's weight: a finite number >= 0 (not a bool), else a ``ValueError`` naming ``name``."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0):
        raise ValueError(f"`{name}` must be a number >= 0 ({hint}), got {value!r}.")


def _env_sections(config: MetaTrainingConfig) -> dict[str, Any]:
    return {"env": config.env, "family": config.family}


def resolved_config(config: MetaTrainingConfig) -> dict[str, Any]:
    """Plain dict of the whole run's settings, as stored in checkpoints and agent files.

    ``env``/``family`` as the YAML and overrides wrote them, plus the run lengths the env trained on
    (``env.horizon``, and ``env.long_horizon`` with long runs) even where defaults gave them, so an agent
    always records its horizon (:attr:`GANNOAgent.trained_horizon`); ``algo``/``run`` with every default filled in;
    ``deploy`` only where it sets something (the files of runs without it record what they recorded before).
    """
    plain = OmegaConf.to_container(OmegaConf.structured(config))
    if all(value is None for value in plain["deploy"].values()):
        del plain["deploy"]
    settings = env_config(_env_sections(config))
    lengths = {"horizon": settings.horizon}
    if settings.long_run_prob > 0:
        lengths["long_horizon"] = settings.long_horizon
    plain["env"] = {**(plain.get("env") or {}), **lengths}
    return plain


def start_from_agent(agent: GANNOAgent, normalizer_stats: RunningNormalizer, source: str) -> None:
    """Copy the actor and observation statistics of the agent file ``source`` (``"default"``: the shipped
    agent) into ``agent``, the fresh agent a meta-training run built from its config.

    ``agent`` may observe features the source does not (``env.features: run_length`` on top of a
    ``hypergradient`` agent, say): the actor's first layer reads them with zero weights, so the
    started agent acts exactly as the source until training teaches it to use them, and their
    statistics start from the first batch. The source's statistics continue as if gathered from one
    observation per env step it was trained on (its ``trained_frames``), so new observations move
    them gradually, not at the first batch.

    Raises:
        ValueError: If the source observes a feature this config does not, acts with another action
            set, decides on another interval or grid, or has an actor of another shape
            (``algo.hidden_sizes``, ``algo.recurrent_size``, ``algo.policy_head``).
    """
    initial = GANNOAgent.from_source(source)
    dropped = [name for name in initial.feature_names if name not in agent.feature_names]
    if dropped:
        raise ValueError(f"`run.init_agent`: {source!r} observes {dropped}, which this config's `env.features` "
                         f"does not; start from an agent whose features are among this config's.")
    for setting in ("action_multipliers", "interval", "decision_steps", "prior", "prior_above"):
        theirs, ours = (tuple(v) if isinstance(v, (list, tuple)) else v
                        for v in (getattr(initial, setting), getattr(agent, setting)))
        if theirs != ours:
            raise ValueError(f"`run.init_agent`: {source!r} has {setting}={theirs!r}, this config {ours!r}; "
                             f"start from an agent trained with the same env settings (and `deploy.prior_above`), or set "
                             f"`run.init_agent: null`.")
    columns = torch.tensor([agent.feature_names.index(name) for name in initial.feature_names])
    weights = _widened_actor_state(initial.actor.state_dict(), agent.actor.state_dict(), columns)
    try:
        agent.actor.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(f"`run.init_agent`: {source!r} has another actor network than this config "
                         f"(`algo.hidden_sizes`, `algo.recurrent_size`, `algo.policy_head` must match): "
                         f"{str(err).splitlines()[0][:200]}") from None
    agent.normalizer.mean[columns] = initial.normalizer.mean
    agent.normalizer.var[columns] = initial.normalizer.var
    count = float(initial.training_config.get("trained_frames", 1))
    stats = normalizer_stats.state_dict()
    stats["count"][columns] = count
    stats["mean"][columns] = initial.normalizer.mean.double()
    stats["m2"][columns] = initial.normalizer.var.double() * count
    normalizer_stats.load_state_dict(stats)


def _frozen_anchor(agent: GANNOAgent, source: str, algo: AlgoConfig) -> Any:
    """The TorchRL actor of the agent file ``source`` as ``agent``'s config builds it, frozen (``algo.anchor_coef``).

    Rebuilt from the file, so a resumed run is anchored where it started, not where it stopped.
    """
    start = copy.deepcopy(agent)
    start_from_agent(start, RunningNormalizer(start.normalizer), source)
    anchor, _ = make_modules(start, algo.critic_hidden_sizes, algo.algorithm)
    return anchor.requires_grad_(False)


def _widened_actor_state(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                         columns: torch.Tensor) -> dict[str, torch.Tensor]:
    """``source``'s actor weights, with its first layer's inputs moved to ``columns`` of a wider feature list.

    The first layer reads [own, mean over layers, max over layers] features
    (:func:`~ganno_lightning.layerwise.policy.pool_agents`): each block's columns move alike, and
    the new features' columns are zero. Same features: ``source`` unchanged.
    """
    widened = dict(source)
    for key, weight in source.items():
        wider = target.get(key)
        if weight.dim() == 2 and wider is not None and weight.shape[1] == 3 * len(columns) != wider.shape[1]:
            width = wider.shape[1] // 3
            moved = torch.zeros_like(wider)
            for block in range(3):
                moved[:, block * width + columns] = weight[:, block * len(columns):(block + 1) * len(columns)]
            widened[key] = moved
            break  # only the first layer reads features
    return widened


#: How long TorchRL's Ray weight sync waits for every actor to join its process group. TorchRL fixes it at 60 s
#: (``torchrl/weight_update/_ray.py`` ``_DIST_TIMEOUT``, no argument); actors that start slowly on a loaded machine
#: missed that and failed the run (``DistStoreError: wait timeout``).
RAY_WEIGHT_SYNC_TIMEOUT = datetime.timedelta(minutes=10)


def patient_ray_weight_sync() -> None:
    """Raise TorchRL's Ray weight-sync timeout to :data:`RAY_WEIGHT_SYNC_TIMEOUT` in this process (both ends wait)."""
    from torchrl.weight_update import _ray

    if isinstance(getattr(_ray, "_DIST_TIMEOUT", None), datetime.timedelta):  # absent in other TorchRL versions
        _ray._DIST_TIMEOUT = max(_ray._DIST_TIMEOUT, RAY_WEIGHT_SYNC_TIMEOUT)


class SeededCollector(Collector):
    """A :class:`~torchrl.collectors.Collector` whose ``set_seed`` also seeds its process's torch RNG.

    TorchRL's worker processes do this themselves; a Ray actor does not, and the policy samples its
    actions there. It runs as the Ray actors' collector, so it also makes their weight sync patient.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        patient_ray_weight_sync()
        super().__init__(*args, **kwargs)

    def set_seed(self, seed: int, static_seed: bool = False) -> int:
        torch.manual_seed(seed)
        return super().set_seed(seed, static_seed=static_seed)


def make_collector(env_fns: list, policy: Any, run: RunConfig, seed: int) -> Any:
    """Synchronous collection (PPO is on-policy): in process, on worker processes, or on Ray.

    On worker processes and Ray actors each worker's environment and global RNG are seeded from
    ``seed``: the policy samples its actions there, and a new process starts unseeded, so without it
    two runs of one config and seed collected different actions from the first batch.
    """
    # Our envs already carry what the policy reads (a recurrent actor's state comes from `recurrent_env`).
    common = dict(frames_per_batch=run.frames_per_batch, total_frames=-1, auto_register_policy_transforms=False)
    if run.backend == "ray":
        from torchrl.collectors.distributed import RayCollector

        patient_ray_weight_sync()
        collector = RayCollector(env_fns, policy, collector_class=SeededCollector, sync=True,
                                 num_collectors=len(env_fns), frames_per_batch=run.frames_per_batch,
                                 total_frames=run.total_frames)
        collector.update_policy_weights_(policy)  # remote collectors start from the central weights
    elif len(env_fns) == 1:
        return Collector(env_fns[0](), policy, **common)
    else:
        collector = MultiSyncCollector(env_fns, policy, cat_results="stack", num_threads=len(env_fns), **common)
    collector.set_seed(seed)
    return collector


class EpisodeTracker:
    """Returns of finished episodes, per environment stream, across batches."""

    def __init__(self) -> None:
        self.running: dict[int, float] = {}

    def __call__(self, batch: Any) -> list[float]:
        rewards = batch["next", keys.REWARD][..., 0, 0].reshape(-1, batch.shape[-1])
        done = batch["next", keys.DONE][..., 0].reshape(-1, batch.shape[-1])
        finished = []
        for stream in range(rewards.shape[0]):
            total = self.running.get(stream, 0.0)
            for r, d in zip(rewards[stream].tolist(), done[stream].tolist()):
                total += r
                if d:
                    finished.append(total)
                    total = 0.0
            self.running[stream] = total
        return finished


#: Config keys a resumed run may change: where and how the run reports, how long it goes on, where the agent is
#: copied, and how collection and the inner runs execute (same batches, other processes or device). Everything else
#: decides what is trained (the env, the family, the networks and PPO, the seed, the batch and its split over
#: `run.workers`, the agent the run started from and is anchored to) and must match the checkpoint. `deploy` only
#: changes what the exported agent file records, not the training (see DeployConfig).
RESUMABLE_CHANGES = ("run.out_dir", "run.resume", "run.progress", "run.wandb", "run.wandb_project", "run.wandb_mode",
                     "run.total_frames", "run.checkpoint_every", "run.export", "run.backend", "run.threads", "env.device",
                     "deploy")


def resume_state(config: MetaTrainingConfig) -> dict[str, Any] | None:
    """The checkpoint ``run.resume=true`` continues from: ``<run.out_dir>/checkpoint.pt``, or None when there is
    none (the run starts fresh) or ``run.resume`` is false.

    Raises:
        ValueError: If the checkpoint was written under a config that differs in a key that changes what is trained
            (any key but :data:`RESUMABLE_CHANGES`), naming the first such key and both values.
    """
    path = Path(config.run.out_dir).expanduser().resolve() / "checkpoint.pt"
    if not (config.run.resume and path.is_file()):
        return None
    state = torch.load(path, weights_only=False)
    stored = state.get("config")
    if stored is not None:  # every checkpoint of this script records it; without it the load below decides
        difference = _first_difference(_comparable(stored), _comparable(resolved_config(config)))
        if difference is not None:
            key, theirs, ours = difference
            raise ValueError(f"`run.resume=true`: {path} was trained with `{key}`={theirs!r}, this config has "
                             f"{ours!r}, and a resumed run must train what the checkpoint trained. Set `{key}` back "
                             f"to {theirs!r} to continue it, or give a new `run.out_dir` to start a fresh run.")
    return state


def _comparable(plain: dict[str, Any]) -> dict[str, Any]:
    """A stored or current resolved config as flat ``section.key`` entries that decide what is trained.

    The env section with every default filled in (a default written out or left out trains the same); the
    family as written; missing algo/run keys (a checkpoint of an older version) as their defaults.
    """
    plain = copy.deepcopy(plain)
    try:
        plain["env"] = dataclasses.asdict(env_config({"env": plain.get("env") or {}}))
    except ValueError:  # a key this version does not know: compare as written
        pass
    defaults = OmegaConf.to_container(OmegaConf.structured(MetaTrainingConfig))
    for section in ("algo", "run"):
        plain[section] = {**defaults[section], **(plain.get(section) or {})}
    flat: dict[str, Any] = {}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for name, item in value.items():
                add(f"{prefix}.{name}", item)
        else:
            flat[prefix] = value

    for section, value in plain.items():
        add(section, value)
    return {key: value for key, value in flat.items()
            if not any(key == free or key.startswith(f"{free}.") for free in RESUMABLE_CHANGES)}


def _first_difference(stored: dict[str, Any], current: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """``(key, stored value, current value)`` of the first key whose values differ (None: key absent), else None."""
    for key in [*current, *(k for k in stored if k not in current)]:
        theirs, ours = stored.get(key), current.get(key)
        if theirs != ours:
            return key, theirs, ours
    return None


def truncate_metrics(csv_path: Path, iteration: int) -> None:
    """Cut ``metrics.csv`` back to its header and the rows of iterations up to ``iteration`` (atomically).

    A run logs every iteration but checkpoints every ``run.checkpoint_every``: the rows a stopped run wrote after
    its last checkpoint were discarded with it and are logged anew by the resumed run.
    """
    if not csv_path.is_file():
        return
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    column = rows[0].index("iteration") if "iteration" in rows[0] else 0

    def kept(row: list[str]) -> bool:  # a row cut short by the kill has too few fields or a partial number
        try:
            return len(row) == len(rows[0]) and int(row[column]) <= iteration
        except ValueError:
            return False

    with atomic_file(csv_path) as tmp, open(tmp, "w", newline="") as handle:
        csv.writer(handle).writerows([rows[0], *filter(kept, rows[1:])])


def check_output_dirs(config: MetaTrainingConfig) -> Path:
    """Create ``run.out_dir`` (and the folder of ``run.export``) and prove both writable, before any training.

    Returns:
        ``run.out_dir`` as an absolute path.

    Raises:
        PermissionError: naming the key and the path, if a folder cannot be created or written.
    """
    out_dir = check_writable_dir(config.run.out_dir, "run.out_dir")
    if config.run.export:  # written once training ends: a bad folder must not cost the whole run
        check_writable_dir(Path(config.run.export).expanduser().parent, "run.export")
    return out_dir


def _checked_config(source: Any, overrides: Sequence[str] = ()) -> MetaTrainingConfig:
    """:func:`parse_config`, :func:`check_output_dirs` and :func:`resume_state`: what the command line checks
    before training."""
    config = parse_config(source, overrides)
    check_output_dirs(config)
    resume_state(config)
    return config


def train(source: Any, overrides: Sequence[str] = ()) -> Path:
    """Run meta-training; returns the path of the exported agent file.

    ``source``: a YAML file's path, a dict, or a :class:`MetaTrainingConfig`, as :func:`parse_config` takes.
    """
    # -- config -----------------------------------------------------------------------------------
    config = parse_config(source, overrides)
    algo, run = config.algo, config.run
    env_settings = env_config(_env_sections(config))
    family = family_from_config(_env_sections(config))
    plain_config = resolved_config(config)
    out_dir = check_output_dirs(config)
    torch.manual_seed(run.seed)
    torch.set_num_threads(run.threads)


    # -- networks and loss ------------------------------------------------------------------------
    agent = GANNOAgent.create(hidden_sizes=algo.hidden_sizes, activation=algo.activation,
                              action_multipliers=env_settings.action_multipliers, interval=env_settings.interval,
                              scale_bounds=tuple(env_settings.scale_bounds), recurrent_size=algo.recurrent_size,
                              seed=run.seed, decision_steps=env_settings.decision_steps, prior=env_settings.prior,
                              # what deployed fits act with (`deploy`); the env's episodes keep the env's settings
                              prior_above=(env_settings.prior_above if config.deploy.prior_above is None
                                           else config.deploy.prior_above),
                              lr_search=check_lr_search(config.deploy.lr_search, "deploy.lr_search"),
                              recover_on_spike=check_spike_rule(config.deploy.recover_on_spike, "deploy.recover_on_spike"),
                              identity_prob=algo.identity_init or None, feature_names=env_settings.features,
                              policy_head=algo.policy_head, layer_offset_factor=algo.layer_offset_factor)
    # env.privileged: the critic also reads the training-only facts (an asymmetric critic); the run's
    # progress only for the annealing expert, so earlier recipes keep their critic (and their random draws)
    critic_privileged = CRITIC_PRIVILEGED_COLUMNS[algo.expert_schedule]
    actor, critic = make_modules(agent, algo.critic_hidden_sizes, algo.algorithm,
                                 critic_privileged if env_settings.privileged else 0)
    normalizer_stats = RunningNormalizer(agent.normalizer)
    loss_class = MAPPOLoss if algo.algorithm == "mappo" else IPPOLoss
    loss_module = loss_class(actor, critic, clip_epsilon=algo.clip_epsilon, entropy_coeff=algo.entropy_coeff,
                             critic_coeff=algo.critic_coeff, normalize_advantage=True, log_explained_variance=True)
    loss_module.set_keys(action=keys.ACTION, sample_log_prob=LOG_PROB, value=STATE_VALUE, reward=keys.REWARD,
                         done=keys.DONE, terminated=keys.TERMINATED)
    loss_module.loss_mask_key = keys.MASK  # padded agents take no part in values, advantages or losses
    loss_module.make_value_estimator(gamma=algo.gamma, lmbda=algo.lmbda)
    optimizer = torch.optim.Adam(loss_module.parameters(), lr=algo.lr)

    iteration, frames, history = 0, 0, []
    checkpoint_path = out_dir / "checkpoint.pt"
    state = resume_state(config)
    if run.resume and state is None:
        print(f"`run.resume=true`, but {out_dir} holds no checkpoint.pt: starting a fresh run.", file=sys.stderr)
    if state is not None:
        try:
            loss_module.load_state_dict(state["loss_module"])
            optimizer.load_state_dict(state["optimizer"])
            normalizer_stats.load_state_dict(state["normalizer_stats"])
        except (RuntimeError, ValueError, KeyError) as err:  # another feature list or network size
            saved = state.get("feature_names")
            features = "" if saved is None or list(saved) == list(agent.feature_names) else (
                f" It observes {len(saved)} features, this config {len(agent.feature_names)} (`env.features`).")
            raise ValueError(f"`run.resume=true`: {checkpoint_path} was written by a different network or version "
                             f"and cannot continue here.{features} Start a fresh run with another `run.out_dir` "
                             f"(or `run.resume=false`). ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
                             ) from None
        normalizer_stats.apply()
        iteration, frames, history = state["iteration"], state["frames"], state["history"]
        torch.set_rng_state(state["rng"])
        truncate_metrics(out_dir / "metrics.csv", iteration)  # rows after the checkpoint: logged again below
        print(f"Resumed from {checkpoint_path} at iteration {iteration} ({frames} env steps).", file=sys.stderr)
    elif run.init_agent is not None:
        start_from_agent(agent, normalizer_stats, run.init_agent)
    anchor = _frozen_anchor(agent, run.init_agent, algo) if algo.anchor_coef else None

    # -- environments -----------------------------------------------------------------------------
    # functools.partial, not lambdas: they pickle to worker processes and are not run here first.
    # A resumed run continues on new task seeds, not on the sequence it already trained on. On worker processes and
    # Ray actors make_collector then re-seeds every worker from seeds[0] (TorchRL's set_seed), superseding the others.
    seeds = [run.seed * 1000 + i + 100_003 * iteration for i in range(run.workers)]
    if algo.recurrent_size:
        env_fns = [functools.partial(recurrent_env, family, env_settings, seed=s, state_size=algo.recurrent_size)
                   for s in seeds]
    else:
        env_fns = [functools.partial(LayerwiseLREnv, family, env_settings, seed=s) for s in seeds]
    buffer = ReplayBuffer(storage=LazyTensorStorage(run.frames_per_batch), sampler=SamplerWithoutReplacement(),
                          batch_size=algo.minibatch_size)
    logger = _Logger(out_dir, plain_config, run, resume=iteration > 0)
    tracker = EpisodeTracker()
    collector = make_collector(env_fns, actor, run, seeds[0])
    progress = _progress(run, frames)

    def checkpoint() -> Path:
        agent.training_config = {**plain_config, "trained_frames": frames, "iterations": iteration}
        with atomic_file(checkpoint_path) as tmp:
            torch.save({"loss_module": loss_module.state_dict(), "optimizer": optimizer.state_dict(),
                        "normalizer_stats": normalizer_stats.state_dict(), "iteration": iteration, "frames": frames,
                        "history": history, "rng": torch.get_rng_state(), "config": plain_config,
                        "feature_names": list(agent.feature_names)}, tmp)
        return agent.save(out_dir / "agent.pt")

    # -- the loop ---------------------------------------------------------------------------------
    try:
        started = time.perf_counter()
        for batch in (collector if frames < run.total_frames else ()):
            # GAE over the collected trajectories ([time] or [workers, time]), with the current critic
            with torch.no_grad():
                loss_module.value_estimator(batch, params=loss_module.critic_network_params,
                                            target_params=loss_module.target_critic_network_params)
            buffer.extend(batch.reshape(-1))
            stats: dict[str, list[float]] = {}
            imitating = frames < algo.imitation_frames
            actor_frozen = frames < algo.critic_warmup_frames
            for _ in range(algo.epochs):
                for minibatch in buffer:
                    losses = loss_module(minibatch)
                    # the env steps the actor learns from, and those that hold it (algo.hold_short_runs)
                    learning, held = _split_held(minibatch) if algo.hold_short_runs else (minibatch, minibatch)
                    actor_losses = losses
                    if learning is not minibatch:  # PPO's actor terms from the learning steps alone, if any
                        actor_losses = loss_module(learning) if len(learning) else None
                    if (imitating or algo.ppo_imitation_coef) and len(learning):
                        imitation = imitation_loss(actor, learning, env_settings.action_multipliers,
                                                   algo.expert_peak_factor, algo.expert_schedule)
                        stats.setdefault("imitation", []).append(float(imitation.detach()))
                    if actor_frozen:  # the critic alone learns the current actor's values
                        total = losses["loss_critic"]
                    elif imitating:  # the actor learns the expert's actions, the critic its values as in PPO
                        total = imitation + losses["loss_critic"]
                    else:
                        total = losses["loss_critic"]
                        if actor_losses is not None:
                            total = total + actor_losses["loss_objective"] + actor_losses["loss_entropy"]
                            if algo.ppo_imitation_coef:  # PPO, kept near the teacher
                                total = total + algo.ppo_imitation_coef * imitation
                        if anchor is not None and len(held):  # ... and near the policy it started from
                            anchored = anchor_loss(actor, anchor, held)
                            stats.setdefault("anchor_kl", []).append(float(anchored.detach()))
                            total = total + algo.anchor_coef * anchored
                    optimizer.zero_grad()
                    total.backward()
                    torch.nn.utils.clip_grad_norm_(loss_module.parameters(), algo.max_grad_norm)
                    optimizer.step()
                    logged = CRITIC_STATS if imitating or actor_frozen else PPO_STATS
                    for name, key in logged:
                        measured = losses if (name, key) in CRITIC_STATS else actor_losses
                        if measured is not None and key in measured.keys():
                            stats.setdefault(name, []).append(float(measured[key].detach().float().mean()))
            # new observation statistics take effect from the next collection on
            normalizer_stats.update(batch[keys.OBSERVATION], batch[keys.MASK])
            normalizer_stats.apply()
            collector.update_policy_weights_()

            iteration += 1
            frames += batch.numel()
            returns = tracker(batch)
            valid_actions = batch[keys.ACTION][batch[keys.MASK]]
            action_fraction = torch.bincount(valid_actions, minlength=len(env_settings.action_multipliers)).float()
            action_fraction /= max(float(action_fraction.sum()), 1.0)
            metrics = {
                "iteration": iteration, "frames": frames,
                "charts/episode_return": sum(returns) / len(returns) if returns else float("nan"),
                "charts/episodes": len(returns),
                "charts/reward_per_step": float(batch["next", keys.REWARD][..., 0, 0].mean()),
                "charts/env_steps_per_s": batch.numel() / max(time.perf_counter() - started, 1e-9),
                "charts/diverged_fraction": float(batch["next", keys.DIVERGED].float().mean()),
                "charts/expert_agreement": (agreement(batch, env_settings.action_multipliers, algo.expert_peak_factor,
                                                      algo.expert_schedule)
                                            if env_settings.privileged else float("nan")),
                **{f"losses/{k}": sum(v) / len(v) for k, v in stats.items()},
            }
            history.append(metrics)
            logger.log(metrics, action_fraction)
            progress.set_postfix({"return": f"{metrics['charts/episode_return']:.3f}",
                                  "kl": f"{metrics.get('losses/approx_kl', 0):.4f}"}, refresh=False)
            progress.update(batch.numel())  # one refresh per iteration, with this iteration's numbers
            if iteration % run.checkpoint_every == 0:
                checkpoint()
            if frames >= run.total_frames:
                break
            started = time.perf_counter()
    finally:
        collector.shutdown()
        progress.close()
    agent_path = checkpoint()
    if run.export:
        export = Path(run.export)
        export.parent.mkdir(parents=True, exist_ok=True)
        agent.save(export)
        agent_path = export
    logger.finish(agent_path)
    return agent_path


class _Logger:
    """Metrics to CSV (always) and W&B (when enabled), with the LR-action histogram."""

    def __init__(self, out_dir: Path, config: dict, run: RunConfig, resume: bool) -> None:
        self.csv_path = out_dir / "metrics.csv"
        new = not (resume and self.csv_path.is_file())
        self.file = open(self.csv_path, "w" if new else "a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=[*METRIC_NAMES, "charts/action_fractions"],
                                     extrasaction="ignore")
        if new:
            self.writer.writeheader()
        self.wandb = None
        if run.wandb and run.wandb_mode != "disabled":
            import wandb

            # one W&B run per training run: a resumed one continues it under the id its start stored
            id_path = out_dir / "wandb_run_id.txt"
            run_id = id_path.read_text().strip() if resume and id_path.is_file() else ""
            if not run_id:
                run_id = secrets.token_hex(4)  # W&B's own id form: 8 lowercase characters
                atomic_write_text(id_path, run_id)
            self.wandb = wandb.init(project=run.wandb_project, mode=run.wandb_mode, dir=str(out_dir), config=config,
                                    id=run_id, resume="allow")

    def log(self, metrics: dict[str, Any], action_fraction: torch.Tensor) -> None:
        row = {**metrics, "charts/action_fractions": " ".join(f"{x:.3f}" for x in action_fraction.tolist())}
        self.writer.writerow({k: (v if not (isinstance(v, float) and math.isnan(v)) else "") for k, v in row.items()})
        self.file.flush()
        if self.wandb is not None:
            import wandb

            histogram = wandb.Histogram(np_histogram=(action_fraction.numpy(), list(range(len(action_fraction) + 1))))
            self.wandb.log({**{k: v for k, v in metrics.items() if k != "iteration"}, "charts/actions": histogram},
                           step=int(metrics["iteration"]))

    def finish(self, agent_path: Path) -> None:
        self.file.close()
        if self.wandb is not None:
            self.wandb.summary["agent_path"] = str(agent_path)
            self.wandb.finish()


def _progress(run: RunConfig, frames: int) -> Any:
    """A bar on stderr (env steps done, env steps/s, the iteration's mean episode return and PPO KL);
    ``run.progress=false`` hides it."""
    from tqdm import tqdm

    return tqdm(total=run.total_frames, initial=frames, disable=not run.progress, desc="meta-training",
                unit="env step", dynamic_ncols=True, mininterval=0)  # every iteration: they are seconds apart


def main(argv: Sequence[str] | None = None) -> int:
    """``ganno-train CONFIG.yaml [key=value ...]``; a bad config exits with one line and status 2."""
    cli = ConfigCommandLine("ganno-train", __doc__, MetaTrainingConfig, see="configs/ganno_default.yaml")
    config = cli.load(_checked_config, cli.parse_args(argv))  # a bad config or out_dir: one line, status 2
    path = train(config)
    print(f"agent written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
