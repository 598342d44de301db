"""LayerwiseLREnv: a LightningModule's training run as a TorchRL multi-agent environment.

This module holds the TorchRL face (specs, ``_reset``, ``_step``, ``_set_seed``); the training run
itself is :mod:`ganno_lightning.envs.inner_run` and the reward :mod:`ganno_lightning.envs.reward`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from ganno_lightning.envs import keys
from ganno_lightning.envs.inner_run import InnerRun, TaskError, sample_task
from ganno_lightning.rng import RNGStates
from ganno_lightning.envs.reward import DIVERGENCE_REFERENCES, EpisodeReward
from ganno_lightning.envs.task import SPLITS, TaskFamily, TrainingTask
from ganno_lightning.envs.task_pool import PoolTask, TaskPool
from ganno_lightning.envs.tasks.best_lr import SPREAD, around
from ganno_lightning.layerwise.actions import (
    DEFAULT_ACTION_MULTIPLIERS,
    DEFAULT_SCALE_BOUNDS,
    check_scale_bounds,
    resolve_action_multipliers,
)
from ganno_lightning.layerwise.controller import LayerwiseController
from ganno_lightning.layerwise.decisions import resolve_decision_steps
from ganno_lightning.layerwise.features import check_lr_probe_decisions, resolve_feature_names
from ganno_lightning.layerwise.prior import DEFAULT_PRIOR, check_prior, check_prior_above
from ganno_lightning.layerwise.rollback import DEFAULT_SPIKE_LR_CUT, check_spike_settings


#: Columns of ``("agents", "privileged")``: log10(LR / best LR), whether the best LR is known,
#: whether a prior schedule decays the LR (whose peak then is the LR of the first column), the
#: run's progress at the middle of the coming interval (-1 where the episode hides its length),
#: log10(best schedule's peak LR / best LR) and whether that schedule is a cosine decay (the
#: calibrated schedule that trains the task's cell best, ``envs.tasks.best_lr.best_schedule``).
PRIVILEGED_SIZE = 6
#: What the terminal reward term measures the final validation loss against (``final_val_reference``).
FINAL_VAL_REFERENCES = ("start", "pool")


@dataclass
class EnvConfig:
    """Episode settings of :class:`LayerwiseLREnv` (the ``env:`` section of a YAML config).

    Attributes:
        horizon: Optimizer steps per episode (one training run).
        interval: Optimizer steps per env step (between two decisions).
        max_agents: Agents are padded to this count; ``None`` uses the family's bound.
        split: Which ranges of the family to sample: ``"train"`` or ``"heldout"``.
        init_lr_scale: ``[low, high]``: at reset every LR of the task is multiplied by a
            log-uniform factor from this range (initial conditions the agent must recover from).
        layer_lr_spread: Task augmentation: at reset each layer's initial LR is also multiplied by
            its own log-uniform factor from ``[1 / layer_lr_spread, layer_lr_spread]`` (1: off), so
            the layers of one run start at different distances from their best LR and the agents
            must tell them apart. Meta-training only: deployment never rescales a user's LRs.
        action_multipliers: What each action multiplies a layer's scale by, or the name of an
            action set: ``"default"`` (7 levels, 2^-1 ... 2) or ``"wide"`` (11 levels, 2^-3 ... 2^3).
            Validation resolves a name to its list.
        decision_steps: Early decision steps before the regular ones every ``interval``:
            ``None``/``"none"`` (the default: every ``interval`` steps), ``"front_loaded"`` (0,
            ``interval // 5``, ``interval // 2``) or a list of increasing steps, e.g. ``[0, 5, 12]``.
            With step 0, ``reset`` trains nothing: it probes (one forward/backward on the first
            batch, no update) and the first decision comes before any update. Validation resolves
            it to a list.
        prior: LR prior under the agents' scales when the task's module has no LR scheduler:
            ``"none"`` (constant), ``"cosine"`` or ``"warmup_cosine"`` over ``horizon`` (see
            :mod:`ganno_lightning.layerwise.prior`). An episode that hides its length
            (``unknown_total_prob``) trains at a constant LR, as a Trainer without a known length would.
        prior_above: The prior acts only in episodes of more optimizer steps than this (0: in every
            episode), as ``GANNOCallback(prior_above=...)`` in fits.
        features: What agents observe: ``"default"`` (the base set),
            ``"hypergradient"`` (those and the scale-free ``update_grad_cos`` and
            ``log_loss_vs_initial``; the shipped agent's), ``"scale_free"`` (``hypergradient`` without the absolute
            ``log_lr`` and ``log_loss``), ``"lr_probe"`` (``hypergradient`` and the step-0 probe's
            loss change after the first update at 1/8x, 1x and 8x; with a decision at step 0),
            ``"run_length"`` (``hypergradient`` and ``log_total_steps``, the log of the run's
            length; for agents meta-trained with ``long_run_prob``) or a list of names (see
            :mod:`ganno_lightning.layerwise.features`).
            Validation resolves it to a list.
        privileged: Also emit ``("agents", "privileged")``, facts that exist only in meta-training,
            for an asymmetric critic (Pinto et al. 2018) that the actor never sees: per layer,
            log10 of its current LR over its task's calibrated best constant LR
            (``lr_sampling: around_best``), whether that best LR is known (1) or not (0 and 0), and
            whether an active ``prior`` decays the LR (1; the first column is then the LR the
            prior decays from, the scale's LR, not the decayed one) or not (0), and the run's
            progress at the middle of the coming interval (-1 where the episode hides its length;
            the critic reads it only with ``algo.expert_schedule: cosine``).
            With it, the critic need not guess from noisy training features how far a run's LR is
            from right, which is what the advantage of a decision mostly depends on.
        scale_bounds: ``[low, high]`` clip of every scale.
        grad_samples: Gradient measurements per interval (as in the callback).
        divergence_factor: An interval loss above this times the reference loss ends the episode.
        divergence_reference: ``"first"``: the first interval's loss; ``"best"``: the lowest interval
            loss so far, so a run that blows up after making progress diverges too.
        divergence_penalty: Team reward of the step on which a run diverges.
        recover_on_spike: Turn a divergence into a lesson, as ``GANNOCallback(recover_on_spike=True)``
            deploys it: an interval whose loss is non-finite or above ``divergence_factor`` times the
            lowest so far (or the first step's) still gets ``-divergence_penalty``, but the run goes on
            from the last decision's weights and optimizer state with every LR cut by
            ``spike_lr_cut`` (:class:`~ganno_lightning.layerwise.rollback.SpikeRollback`); only a
            ``training_step`` that raises ends the episode. Unlike the callback, which skips the
            decision after a non-finite interval, the env always asks for the next action.
        spike_lr_cut: With ``recover_on_spike``: what a rollback multiplies every LR by.
        val_every: Env steps between validation-loss measurements (0: never). Measured losses
            reach the observation exactly as a logged ``val_loss`` reaches GANNOCallback's.
        val_prob: Probability that an episode validates at all, so agents see runs with and
            without validation, as users run them.
        val_batches: Validation batches per measurement: the val loader's first ones, kept for the
            episode, so measurements differ only by training.
        val_weight: Weight of the validation term ``log(V_prev / V_now)`` in the reward (0: off).
        train_loss_weight: Weight of the training-loss term ``log(L_prev / L_now)`` in the reward (0:
            off, so the reward is the validation terms and the divergence penalties).
        final_val_weight: Weight of a terminal reward on what users are scored on: on the last step of
            a run that did not diverge, ``clip(log(V_start / V_end), -final_val_clip, final_val_clip)``,
            the validation loss at the end against the run's own at the first decision (or a pool's
            tuned run, ``final_val_reference``; see
            :class:`~ganno_lightning.envs.reward.EpisodeReward` for why not against a reference run);
            a non-finite end scores ``-final_val_clip``. Measured in every episode on the same
            ``val_batches``, whether or not the episode validates; the agents observe only the
            validations ``val_prob`` grants. That last step ends the episode as terminated rather than
            truncated: the score is the return's last word, with nothing after it to bootstrap. With
            ``recover_on_spike``, a rollback on the last step gets the penalty and the score of the
            restored weights (0: off).
        final_val_clip: Bound of the terminal term's log-ratio (> 0).
        final_val_reference: What the terminal term measures the final validation loss against:
            ``"start"``, the run's own at the first decision, or ``"pool"`` (with ``task_pool``), the
            final loss of the same task, weights and batches at its tuned constant LR, so the term is
            ``clip(log(L_tuned / V_end))``: positive only where the run beat the tuned constant LR
            (issue #18 item 4). Before the clip they differ by ``log(V_start / L_tuned)``, which no
            action changes (the start is measured at the first decision), so they rank an episode's
            possible runs alike; the clip and the variance of the return differ.
        unknown_total_prob: Probability that an episode hides its length from the observation
            (``progress_unknown``; ``progress`` and ``log_total_steps`` read 0), as for a Trainer
            whose total steps cannot be estimated.
        max_reset_attempts: Tasks whose first interval diverges are resampled up to this many times.
        task_pool: A pool file (``ganno-build-task-pool``, :mod:`ganno_lightning.envs.task_pool`): each
            episode replays one of its tasks from an LR drawn log-uniformly within ``pool_start_spread``
            x of that task's own tuned best constant LR, and the privileged columns measure LRs against that
            best instead of the task's cell's (a per-task teacher). ``init_lr_scale`` must then be
            [1, 1]; ``make_env`` checks that the pool was built for the config's family and
            :data:`~ganno_lightning.envs.task_pool.MATCHED_ENV_KEYS`. ``None``: fresh tasks every episode.
        pool_start_spread: With ``task_pool``: an episode starts within this factor of its task's own
            best constant LR (>= 1; default 10, both sides of the optimum). 3 mimics where an initial
            LR search (``GANNOCallback(lr_search=True)``) starts a fit: on the dev suite its picks sit
            a median 1x, a tenth of them below 1/3 and a tenth above 3.3x the task's best constant LR.
        long_run_prob: Probability that an episode is a long run of ``long_horizon`` steps instead of
            ``horizon`` (issue #18: a run's best LR moves with its length, so an agent trained on short
            runs only learns their LR levels). 0: every episode runs ``horizon`` steps, drawing nothing.
        long_horizon: Optimizer steps of a long run (a multiple of ``interval``, above ``horizon``).
        long_task_pool: The pool built for the long runs (``ganno-build-task-pool ...
            horizon=<long_horizon>``, over seeds of ``task_pool``), required with ``long_run_prob`` > 0.
            A long episode draws one of its tasks, and its privileged best LR is that task's best
            for ``long_horizon`` steps; its LR starts where a short run of the same task starts
            (within ``pool_start_spread`` x of the task's best for ``horizon`` steps), as a user
            picks an LR that works for short runs and then trains longer.
        device: Device the inner training runs on.
    """

    horizon: int = 500
    interval: int = 25
    max_agents: int | None = None
    split: str = "train"
    init_lr_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    layer_lr_spread: float = 1.0
    # Any: a list of floats or an action set's name (omegaconf has no list-or-str union)
    action_multipliers: Any = field(default_factory=lambda: list(DEFAULT_ACTION_MULTIPLIERS))
    decision_steps: Any = None  # None | "none" | "front_loaded" | [increasing steps]
    prior: str = DEFAULT_PRIOR
    prior_above: int = 0
    features: Any = None  # None | a set's name | [feature names]
    privileged: bool = False
    scale_bounds: list[float] = field(default_factory=lambda: list(DEFAULT_SCALE_BOUNDS))
    grad_samples: int = 2
    divergence_factor: float = 10.0
    divergence_reference: str = "first"
    divergence_penalty: float = 5.0
    recover_on_spike: bool = False
    spike_lr_cut: float = DEFAULT_SPIKE_LR_CUT
    val_every: int = 2
    val_prob: float = 0.5
    val_batches: int = 4
    val_weight: float = 0.0
    train_loss_weight: float = 1.0
    final_val_weight: float = 0.0
    final_val_clip: float = 3.0
    final_val_reference: str = "start"
    unknown_total_prob: float = 0.2
    max_reset_attempts: int = 10
    task_pool: str | None = None
    pool_start_spread: float = SPREAD
    long_run_prob: float = 0.0
    long_horizon: int | None = None
    long_task_pool: str | None = None
    device: str = "cpu"

    def validate(self, prefix: str = "env") -> EnvConfig:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"`{prefix}.{name}` must be a positive int, got {value!r}.")

        for name in ("horizon", "interval", "grad_samples", "val_batches", "max_reset_attempts"):
            positive_int(name)
        if self.val_every < 0:
            raise ValueError(f"`{prefix}.val_every` must be >= 0 (0: never), got {self.val_every!r}.")
        for name in ("val_prob", "unknown_total_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{prefix}.{name}` must be a probability in [0, 1], got {getattr(self, name)!r}.")
        if self.horizon % self.interval:
            raise ValueError(f"`{prefix}.horizon` ({self.horizon}) must be a multiple of `{prefix}.interval` "
                             f"({self.interval}), so that episodes end on a decision.")
        if self.horizon < 2 * self.interval:
            raise ValueError(
                f"`{prefix}.horizon` ({self.horizon}) must be at least 2 x `{prefix}.interval` ({self.interval}): "
                "an episode needs one interval to observe and one to act on.")
        if self.max_agents is not None:
            positive_int("max_agents")
        if not 0.0 <= self.long_run_prob <= 1.0:
            raise ValueError(f"`{prefix}.long_run_prob` must be a probability in [0, 1], got {self.long_run_prob!r}.")
        if self.long_run_prob > 0:
            long = self.long_horizon
            if not (isinstance(long, int) and not isinstance(long, bool) and long > self.horizon
                    and long % self.interval == 0):
                raise ValueError(f"`{prefix}.long_horizon` must be a multiple of `{prefix}.interval` ({self.interval}) "
                                 f"above `{prefix}.horizon` ({self.horizon}) when `{prefix}.long_run_prob` > 0, got "
                                 f"{long!r}; e.g. {4 * self.horizon}.")
            if self.task_pool is None or self.long_task_pool is None:
                # without pools a long run's best LR would be its cell's, calibrated on short runs
                raise ValueError(f"`{prefix}.task_pool` and `{prefix}.long_task_pool` are required with long runs "
                                 f"(`{prefix}.long_run_prob` > 0), got {self.task_pool!r} and {self.long_task_pool!r}: "
                                 f"build the long runs' pool with `ganno-build-task-pool configs/task_pool.yaml "
                                 f"horizon={long} out=<path>`, or set `{prefix}.long_run_prob: 0`.")
        if self.long_task_pool is not None and self.task_pool is None:
            raise ValueError(f"`{prefix}.long_task_pool` needs `{prefix}.task_pool` (the short runs' pool), got "
                             f"{self.long_task_pool!r} without one.")
        if self.split not in SPLITS:
            raise ValueError(f"`{prefix}.split` must be one of {list(SPLITS)}, got {self.split!r}.")
        low, high = (list(self.init_lr_scale) + [None, None])[:2]
        if len(self.init_lr_scale) != 2 or not (0 < low <= high):
            raise ValueError(f"`{prefix}.init_lr_scale` must be [low, high] with 0 < low <= high, "
                             f"got {list(self.init_lr_scale)}.")
        if self.final_val_reference not in FINAL_VAL_REFERENCES:
            raise ValueError(f"`{prefix}.final_val_reference` must be one of {list(FINAL_VAL_REFERENCES)}, got "
                             f"{self.final_val_reference!r}.")
        if self.final_val_reference == "pool" and self.task_pool is None:
            raise ValueError(f"`{prefix}.final_val_reference: pool` needs `{prefix}.task_pool` (the pool holds each "
                             f"task's tuned loss); set one, or use `start`.")
        if self.task_pool is not None and (low, high) != (1.0, 1.0):
            raise ValueError(f"`{prefix}.init_lr_scale` must be [1, 1] with `{prefix}.task_pool` (a pool task's "
                             f"LR is drawn around its own best LR), got {list(self.init_lr_scale)}.")
        spread = self.pool_start_spread
        if not (isinstance(spread, (int, float)) and not isinstance(spread, bool) and 1.0 <= spread < math.inf):
            raise ValueError(f"`{prefix}.pool_start_spread` must be a number >= 1 (episodes start within that factor "
                             f"of their pool task's best LR; e.g. {SPREAD:g}), got {spread!r}.")
        if self.task_pool is None and spread != SPREAD:
            raise ValueError(f"`{prefix}.pool_start_spread` needs `{prefix}.task_pool` (it spreads the starts around a "
                             f"pool task's own best LR), got {spread!r} without one.")
        if self.task_pool is not None and self.layer_lr_spread != 1.0:
            raise ValueError(f"`{prefix}.layer_lr_spread` must be 1 with `{prefix}.task_pool` (a pool's best LRs are "
                             f"for the layers' LRs as the task drew them), got {self.layer_lr_spread!r}.")
        if not (isinstance(self.layer_lr_spread, (int, float)) and 1.0 <= self.layer_lr_spread < math.inf):
            raise ValueError(f"`{prefix}.layer_lr_spread` must be a number >= 1 (1: every layer starts at the task's "
                             f"LR; 3: each within x1/3..x3 of it), got {self.layer_lr_spread!r}.")
        self.action_multipliers = list(resolve_action_multipliers(self.action_multipliers,
                                                                  f"{prefix}.action_multipliers"))
        self.decision_steps = list(resolve_decision_steps(self.decision_steps, self.interval,
                                                          f"{prefix}.decision_steps"))
        if self.decision_steps and self.decision_steps[-1] >= self.horizon:
            raise ValueError(f"`{prefix}.decision_steps` must lie before `{prefix}.horizon` ({self.horizon}), "
                             f"got {self.decision_steps}.")
        check_prior(self.prior, f"{prefix}.prior")
        check_prior_above(self.prior_above, f"{prefix}.prior_above")
        self.features = list(resolve_feature_names(self.features, f"{prefix}.features"))
        check_lr_probe_decisions(self.features, self.decision_steps, f"{prefix}.decision_steps")
        check_scale_bounds(self.scale_bounds, f"{prefix}.scale_bounds")
        if self.divergence_reference not in DIVERGENCE_REFERENCES:
            raise ValueError(f"`{prefix}.divergence_reference` must be one of {list(DIVERGENCE_REFERENCES)}, "
                             f"got {self.divergence_reference!r}.")
        check_spike_settings(self.divergence_factor, self.spike_lr_cut, f"{prefix}.", "divergence_factor")
        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        for name in ("divergence_penalty", "val_weight", "train_loss_weight", "final_val_weight"):
            value = getattr(self, name)
            if not (number(value) and value >= 0):
                raise ValueError(f"`{prefix}.{name}` must be a finite number >= 0 (0: off; e.g. 1.0), got {value!r}.")
        if not (number(self.final_val_clip) and self.final_val_clip > 0):
            raise ValueError(f"`{prefix}.final_val_clip` must be a finite number > 0 (the bound of "
                             f"log(V_start / V_end); e.g. 3.0), got {self.final_val_clip!r}.")
        return self


class LayerwiseLREnv(EnvBase):
    """Each env step trains a LightningModule for ``interval`` optimizer steps; each layer is an agent.

    ``reset`` samples a task from the family (fresh weights, LR, seed, and architecture and data
    from the family's ranges), trains its first interval at the task's own LR, and returns the
    first observation. ``step`` applies one action per layer (a multiplier of that layer's LR
    scale), trains the next interval and returns the team reward
    ``log(L_prev) - log(L_now)`` of the interval-mean training loss, so an episode's return
    telescopes to ``log(L_first / L_last)``. With ``decision_steps`` the intervals up to the last
    early step are shorter; with step 0 among them ``reset`` trains nothing and observes a probe
    (one forward/backward on the first batch, no update), so ``L_first`` is the loss at
    initialisation. A run whose loss turns non-finite or exceeds
    ``divergence_factor`` times its first (or, with ``divergence_reference="best"``, its lowest)
    interval loss (or whose ``training_step`` raises mid-run)
    ends the episode with ``-divergence_penalty``; the env itself never crashes on it.

    Observations and actions go through :class:`~ganno_lightning.layerwise.controller.LayerwiseController`,
    the same code :class:`~ganno_lightning.layerwise.callback.GANNOCallback` runs in a Trainer. Agents are
    padded to ``max_agents``; ``("agents", "mask")`` is False for padding, so tasks of different
    depth batch together in a ``ParallelEnv``.

    Args:
        family: Where tasks come from.
        config: Episode settings.
        seed: Seed of the env's generator (tasks, initial conditions, inner training).

    Raises:
        TaskError: At reset, if the task's code fails, its dataloader is empty or nothing is trainable.
        ValueError: For invalid settings, or a task with more layers than ``max_agents``.

    Example::

        >>> from ganno_lightning.envs.tasks import make_family
        >>> env = LayerwiseLREnv(make_family("mlp_digits"), EnvConfig(horizon=50, interval=10), seed=0)
        >>> td = env.rollout(3)
        >>> td["agents", "observation"].shape[-1] == len(env.config.features)  # the default set: 23
        True
    """

    def __init__(self, family: TaskFamily, config: EnvConfig | None = None, seed: int = 0) -> None:
        config = (config or EnvConfig()).validate()
        super().__init__(device="cpu", batch_size=())  # TensorDicts live on CPU; training may run elsewhere
        self.family = family
        self.config = config
        self.max_agents = config.max_agents or family.max_layers(config.split)
        self.num_actions = len(config.action_multipliers)
        n = self.max_agents
        # Specs are built whole, then assigned: EnvBase's spec setters expect complete specs.
        observation_spec = Composite({keys.GROUP: Composite(shape=(n,)),
                                      keys.EPISODE_LOSS: Unbounded((1,)),
                                      keys.NUM_AGENTS: Unbounded((1,), dtype=torch.int64),
                                      keys.DIVERGED: Categorical(2, (1,), dtype=torch.bool),
                                      keys.LONG_RUN: Categorical(2, (1,), dtype=torch.bool)})
        observation_spec[keys.OBSERVATION] = Unbounded((n, len(config.features)))
        observation_spec[keys.MASK] = Categorical(2, (n,), dtype=torch.bool)
        if config.privileged:
            observation_spec[keys.PRIVILEGED] = Unbounded((n, PRIVILEGED_SIZE))
        action_spec = Composite({keys.GROUP: Composite(shape=(n,))})
        action_spec[keys.ACTION] = Categorical(self.num_actions, (n,))
        reward_spec = Composite({keys.GROUP: Composite(shape=(n,))})
        reward_spec[keys.REWARD] = Unbounded((n, 1))
        self.observation_spec, self.action_spec, self.reward_spec = observation_spec, action_spec, reward_spec
        self.done_spec = Composite({
            name: Categorical(2, (1,), dtype=torch.bool) for name in (keys.DONE, keys.TERMINATED, keys.TRUNCATED)})
        self.pool = None if config.task_pool is None else TaskPool.load(config.task_pool)
        # validate() asks for both pools with long runs
        self.long_pool = TaskPool.load(config.long_task_pool, "env.long_task_pool") if config.long_run_prob > 0 else None
        self.pool_task: PoolTask | None = None  # the pool's task of the episode
        self.horizon = config.horizon  # this episode's run length: ``long_horizon`` in a long run
        self.task: TrainingTask | None = None
        self.run: InnerRun | None = None
        self.controller: LayerwiseController | None = None
        self.episode_reward = EpisodeReward(config.divergence_factor, config.divergence_reference,
                                            config.divergence_penalty, config.val_weight, config.train_loss_weight,
                                            config.final_val_weight, config.final_val_clip)
        self._set_seed(seed)

    # -- TorchRL API --------------------------------------------------------------------------
    def _set_seed(self, seed: int | None) -> None:
        self._generator = torch.Generator().manual_seed(int(seed) if seed is not None else 0)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        for _ in range(self.config.max_reset_attempts):
            self._start_run()
            try:
                if self.controller.probe_due:  # a decision at step 0: observe a probe, train nothing yet
                    self.controller.probe(self.run.probe)
                else:
                    self._train_interval()
            except TaskError:  # already says what is wrong with the task (an empty iterable loader)
                raise
            except Exception as err:
                raise TaskError(f"Task {self.task.name}: `training_step`/`backward`/`optimizer.step` raised in "
                                f"the first interval: {type(err).__name__}: {err}") from err
            observation = self.controller.observe()
            first_loss = self.controller.last_interval_loss
            if math.isfinite(first_loss):
                break
            if self.run.skipped_in_a_row >= self.controller.step > 0:  # the task's own code, not its LR: no resample
                raise self.run.nothing_trains(f"every batch of the first interval ({self.controller.step} steps)")
        else:
            raise TaskError(f"{self.config.max_reset_attempts} sampled tasks in a row diverged in their first "
                            f"interval (last: {self.task.name}); lower the family's `lr` range or `init_lr_scale`.")
        if first_loss <= 0:
            raise TaskError(f"Task {self.task.name}: the training loss must be positive (the reward is a log-ratio "
                            f"of losses), got {first_loss!r}; shift the loss, e.g. use an NLL offset.")
        if self.controller.recover_from_spike():  # as the callback at its first decision
            first_loss = self.controller.rollback.lowest_loss  # the run is back at its first step
        self.episode_reward.start(first_loss)
        self._env_steps = 0
        self._prev_val = self._measure_validation()
        if self.config.final_val_reference == "pool":
            self._start_val = self.pool_task.best_loss
        else:
            self._start_val = self._prev_val if self._validates else self._reward_validation()
        return self._output(observation, reward=None, terminated=False, truncated=False)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        n = self.controller.num_agents
        self.controller.apply(tensordict.get(keys.ACTION)[:n])
        self._env_steps += 1
        failed, val, measured = False, None, False
        try:
            self._train_interval()
        except Exception as err:  # a run that blows up mid-episode is a diverged run, not a crashed env
            self.controller.recover_from_exception()
            warnings.warn(f"Task {self.task.name} raised at step {self.controller.step}; ending the episode "
                          f"as diverged: {type(err).__name__}: {err}", RuntimeWarning, stacklevel=2)
            failed = True
        observation = self.controller.observe()
        loss = self.controller.last_interval_loss
        if math.isfinite(loss) and loss <= 0:  # no divergence either: a log-ratio reward has nothing to compare
            raise TaskError(f"Task {self.task.name}: the training loss must stay positive (the reward is a log-ratio "
                            f"of losses), got {loss!r} at step {self.controller.step}; shift the loss, e.g. add a "
                            "constant that keeps it above 0.")
        rolled_back = not failed and self.controller.recover_from_spike()  # always False unless recover_on_spike
        diverged = failed or (not self.config.recover_on_spike and self.episode_reward.diverged(loss))
        if diverged or rolled_back:
            reward = self.episode_reward.penalty
        else:
            reward = self.episode_reward.of_interval(loss)
            # Measured after the observation: like a validation epoch, it informs the next decision.
            if self._validates and self._env_steps % self.config.val_every == 0:
                val, measured = self._measure_validation(), True
                term = self.episode_reward.validation_term(self._prev_val, val)
                if term is not None:
                    reward += term
                self._prev_val = val
        ended = not diverged and self.controller.step >= self.horizon
        scored_at_end = ended and self.config.final_val_weight > 0
        if scored_at_end:
            end_val = val if measured else self._reward_validation()
            term = self.episode_reward.final_term(self._start_val, end_val)
            if term is not None:
                reward += term
        # At the horizon the run is cut (truncated: the critic bootstraps), except when its final validation
        # loss scores it: that reward is the episode's last word, with nothing after it to bootstrap from.
        return self._output(observation, reward=reward, terminated=diverged or scored_at_end,
                            truncated=ended and not scored_at_end, diverged=diverged)

    # -- one training run: sampled, trained and observed --------------------------------------
    def _start_run(self) -> None:
        if self.controller is not None:
            self.controller.close()
            self.controller = None
        config = self.config
        # Drawn only where long runs are on: a recipe without them keeps its episodes' random stream.
        long = config.long_run_prob > 0 and float(torch.rand((), generator=self._generator)) < config.long_run_prob
        self.horizon = config.long_horizon if long else config.horizon
        if self.pool is None:
            self.task, rng = sample_task(self.family, self._generator, config.split, config.device)
            lr_factor = self._initial_lr_factor()
        else:
            self.task, rng, lr_factor = (self._sample_pool_task(self.long_pool, starts=self.pool) if long
                                         else self._sample_pool_task(self.pool))
        self.run = InnerRun(self.task, config.device, rng, lr_factor=lr_factor,
                            val_batches=config.val_batches if config.val_every or config.final_val_weight else 0)
        validate_draw, hide_draw = torch.rand(2, generator=self._generator).tolist()
        self._validates = config.val_every > 0 and self.run.val_loader is not None and validate_draw < config.val_prob
        total_steps = None if hide_draw < config.unknown_total_prob else self.horizon
        try:
            self.controller = LayerwiseController(
                self.run.module, self.run.optimizer, action_multipliers=config.action_multipliers,
                interval=config.interval, scale_bounds=tuple(config.scale_bounds),
                lr_schedulers=self.run.schedulers, total_steps=total_steps, grad_samples=config.grad_samples,
                decision_steps=config.decision_steps, prior=config.prior, prior_above=config.prior_above,
                feature_names=config.features,
                recover_on_spike=config.recover_on_spike, spike_factor=config.divergence_factor,
                spike_lr_cut=config.spike_lr_cut)
        except ValueError as err:
            raise TaskError(f"Task {self.task.name}: {err}") from err
        if self.controller.num_agents > self.max_agents:
            raise ValueError(f"Task {self.task.name} has {self.controller.num_agents} layers but `max_agents` is "
                             f"{self.max_agents}; raise `env.max_agents`.")
        if config.layer_lr_spread > 1.0:  # after the split: one param group per layer
            spread = math.log(config.layer_lr_spread)
            factors = torch.exp(spread * (2 * torch.rand(self.controller.num_agents, generator=self._generator) - 1))
            self.run.scale_initial_lrs([1.0 if agent is None else float(factors[agent])
                                        for agent in self.controller.lr.group_agent])
            self.controller.record_initial_lrs()  # the schedule's first row was recorded before the draw

    def _sample_pool_task(self, pool: TaskPool,
                          starts: TaskPool | None = None) -> tuple[TrainingTask, RNGStates, float]:
        """A task of ``pool`` as its replays drew it, its best LR the per-task one; the factor that starts it
        log-uniformly within ``pool_start_spread`` x of that best, or of the same task's best in ``starts``."""
        entry = self.pool_task = pool.draw(self._generator)
        task, rng = sample_task(self.family, torch.Generator().manual_seed(entry.seed), self.config.split,
                                self.config.device)  # the generator make_env(config, entry.seed) starts with
        if task.name != entry.task:
            raise TaskError(f"Task pool '{pool.path}': seed {entry.seed} drew {task.name}, not the pool's "
                            f"{entry.task}; the families have changed since it was built. Rebuild the pool.")
        task.info.update(best_lr=entry.best_lr, best_schedule="constant", best_schedule_lr=entry.best_lr)
        start = entry.best_lr if starts is None else starts.by_seed[entry.seed].best_lr
        return task, rng, around(start, self._generator, self.config.pool_start_spread) / task.info["lr"]

    def _initial_lr_factor(self) -> float:
        """A log-uniform draw from ``init_lr_scale`` (no draw when the range is [1, 1])."""
        low, high = self.config.init_lr_scale
        if (low, high) == (1.0, 1.0):
            return 1.0
        u = float(torch.rand((), generator=self._generator))
        return math.exp(math.log(low) + u * (math.log(high) - math.log(low)))

    def _train_interval(self) -> None:
        """Train up to the next decision (``interval`` steps, or fewer between early decision steps)."""
        self.run.train(self.controller.steps_to_decision, record_loss=self.controller.record_loss)

    def _measure_validation(self) -> float | None:
        """The validation loss, fed to the observer, if this episode validates (else ``None``)."""
        if not self._validates:
            return None
        value = self.run.validation_loss()
        if value is not None:
            self.controller.record_val_loss(value)
        return value

    def _reward_validation(self) -> float | None:
        """The validation loss for the final reward term only (the agents do not observe it), if it is on."""
        return self.run.validation_loss() if self.config.final_val_weight > 0 else None

    def _output(self, observation: torch.Tensor, reward: float | None, terminated: bool, truncated: bool,
                diverged: bool = False) -> TensorDict:
        n, pad = self.controller.num_agents, self.max_agents
        padded = torch.zeros(pad, len(self.config.features))
        padded[:n] = observation
        mask = torch.zeros(pad, dtype=torch.bool)
        mask[:n] = True
        output = TensorDict({keys.GROUP: TensorDict(batch_size=(pad,))}, batch_size=())
        output.set(keys.OBSERVATION, padded)
        output.set(keys.MASK, mask)
        if self.config.privileged:
            output.set(keys.PRIVILEGED, self._privileged(pad))
        if reward is not None:
            output.set(keys.REWARD, torch.full((pad, 1), float(reward)))
        output.set(keys.EPISODE_LOSS,
                   torch.tensor([self.controller.last_interval_loss]).nan_to_num(0.0, 1e30, -1e30).float())
        output.set(keys.NUM_AGENTS, torch.tensor([n]))
        output.set(keys.DIVERGED, torch.tensor([diverged]))
        output.set(keys.LONG_RUN, torch.tensor([self.horizon != self.config.horizon]))
        output.set(keys.DONE, torch.tensor([terminated or truncated]))
        output.set(keys.TERMINATED, torch.tensor([terminated]))
        output.set(keys.TRUNCATED, torch.tensor([truncated]))
        return output

    def _privileged(self, pad: int) -> torch.Tensor:
        """Per agent: log10(LR / the task's best constant LR), 1, whether a prior decays the LR, progress,
        log10(best schedule's peak LR / best constant LR), whether the best schedule is a cosine.

        The LR is the one the scale sets, before a prior's decay: how far the schedule's peak is
        from right. Zeros in the first two columns where no best LR is known. The progress is taken
        at the middle of the interval the coming action governs (what a schedule-following expert
        aims at), -1 where the episode hides its length from the agents: nothing can anneal there.
        """
        privileged = torch.zeros(pad, PRIVILEGED_SIZE)
        controller = self.controller
        n = controller.num_agents
        privileged[:n, 2] = float(controller.prior.active)
        total = controller.observer.total_steps  # None where the episode hides its length
        if total is None:
            privileged[:n, 3] = -1.0
        else:
            middle = 0.5 * (controller.step + controller.decision_steps.after(controller.step))
            privileged[:n, 3] = min(middle / total, 1.0)
        best = self.task.info.get("best_lr")
        if best:
            lrs = torch.tensor(controller.lr.anchor_lrs(), dtype=torch.float64)
            privileged[:n, 0] = torch.log10(lrs.clamp_min(1e-30) / best).float()
            privileged[:n, 1] = 1.0
            privileged[:n, 4] = math.log10(self.task.info.get("best_schedule_lr", best) / best)
            privileged[:n, 5] = float(self.task.info.get("best_schedule") == "cosine")
        return privileged

    def close(self, *args: Any, **kwargs: Any) -> None:
        if self.controller is not None:
            self.controller.close()
            self.controller = None
        super().close(*args, **kwargs)
