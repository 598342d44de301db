"""LayerwiseLREnv: a LightningModule's training run as a TorchRL multi-agent environment."""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch.core.optimizer import _configure_optimizers, _configure_schedulers_automatic_opt
from lightning.pytorch.utilities import move_data_to_device
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from envs import keys
from envs.task import SPLITS, TaskFamily, TrainingTask
from ganno_lightning.layerwise.controller import LayerwiseController
from ganno_lightning.layerwise.features import DEFAULT_ACTION_MULTIPLIERS, NUM_FEATURES
from ganno_lightning.layerwise.lr_control import check_scale_bounds

#: What ``divergence_factor`` multiplies: the run's first interval loss, or its lowest so far.
DIVERGENCE_REFERENCES = ("first", "best")


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
        action_multipliers: What each action multiplies a layer's scale by.
        scale_bounds: ``[low, high]`` clip of every scale.
        grad_samples: Gradient measurements per interval (as in the callback).
        divergence_factor: An interval loss above this times the reference loss ends the episode.
        divergence_reference: ``"first"``: the first interval's loss; ``"best"``: the lowest interval
            loss so far, so a run that blows up after making progress diverges too.
        divergence_penalty: Team reward of the step on which a run diverges.
        val_every: Env steps between validation-loss measurements (0: never). Measured losses
            reach the observation exactly as a logged ``val_loss`` reaches GANNOCallback's.
        val_prob: Probability that an episode validates at all, so agents see runs with and
            without validation, as users run them.
        val_batches: Validation batches per measurement: the val loader's first ones, kept for the
            episode, so measurements differ only by training.
        val_weight: Weight of the validation term ``log(V_prev / V_now)`` in the reward (0: off).
        unknown_total_prob: Probability that an episode hides its length from the observation
            (``progress_unknown``), as for a Trainer whose total steps cannot be estimated.
        max_reset_attempts: Tasks whose first interval diverges are resampled up to this many times.
        device: Device the inner training runs on.
    """

    horizon: int = 500
    interval: int = 25
    max_agents: int | None = None
    split: str = "train"
    init_lr_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    action_multipliers: list[float] = field(default_factory=lambda: list(DEFAULT_ACTION_MULTIPLIERS))
    scale_bounds: list[float] = field(default_factory=lambda: [1e-2, 1e2])
    grad_samples: int = 2
    divergence_factor: float = 10.0
    divergence_reference: str = "first"
    divergence_penalty: float = 5.0
    val_every: int = 2
    val_prob: float = 0.5
    val_batches: int = 4
    val_weight: float = 0.0
    unknown_total_prob: float = 0.2
    max_reset_attempts: int = 10
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
        if self.split not in SPLITS:
            raise ValueError(f"`{prefix}.split` must be one of {list(SPLITS)}, got {self.split!r}.")
        low, high = (list(self.init_lr_scale) + [None, None])[:2]
        if len(self.init_lr_scale) != 2 or not (0 < low <= high):
            raise ValueError(f"`{prefix}.init_lr_scale` must be [low, high] with 0 < low <= high, "
                             f"got {list(self.init_lr_scale)}.")
        if not self.action_multipliers or not all(m > 0 and math.isfinite(m) for m in self.action_multipliers):
            raise ValueError(f"`{prefix}.action_multipliers` must be positive finite floats, "
                             f"got {list(self.action_multipliers)}.")
        try:
            check_scale_bounds(self.scale_bounds)
        except ValueError as err:
            raise ValueError(f"`{prefix}.scale_bounds`: {err}") from None
        if not self.divergence_factor > 1:
            raise ValueError(f"`{prefix}.divergence_factor` must be > 1, got {self.divergence_factor!r}.")
        if self.divergence_reference not in DIVERGENCE_REFERENCES:
            raise ValueError(f"`{prefix}.divergence_reference` must be one of {list(DIVERGENCE_REFERENCES)}, "
                             f"got {self.divergence_reference!r}.")
        if self.divergence_penalty < 0 or self.val_weight < 0:
            raise ValueError(f"`{prefix}.divergence_penalty` and `{prefix}.val_weight` must be >= 0, "
                             f"got {self.divergence_penalty!r} and {self.val_weight!r}.")
        return self


@contextlib.contextmanager
def _no_trainer_warnings() -> Iterator[None]:
    """The module runs without a Trainer: its `self.log` calls are no-ops by design, not news."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*self\.log\(\).*")
        yield


def _loss_of(output: Any) -> torch.Tensor | None:
    """The loss a `training_step` returned (a tensor, a dict with "loss", or None to skip)."""
    return output["loss"] if isinstance(output, dict) else output


class TaskError(RuntimeError):
    """A task cannot be trained at all (its code raises, its data is empty, nothing is trainable)."""


class LayerwiseLREnv(EnvBase):
    """Each env step trains a LightningModule for ``interval`` optimizer steps; each layer is an agent.

    ``reset`` samples a task from the family (fresh weights, LR, seed, and architecture and data
    from the family's ranges), trains its first interval at the task's own LR, and returns the
    first observation. ``step`` applies one action per layer (a multiplier of that layer's LR
    scale), trains the next interval and returns the team reward
    ``log(L_prev) - log(L_now)`` of the interval-mean training loss, so an episode's return
    telescopes to ``log(L_first / L_last)``. A run whose loss turns non-finite or exceeds
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

        >>> from envs.tasks import make_family
        >>> env = LayerwiseLREnv(make_family("mlp_digits"), EnvConfig(horizon=50, interval=10), seed=0)
        >>> td = env.rollout(3)
        >>> td["agents", "observation"].shape[-1] == NUM_FEATURES
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
        self.observation_spec = Composite(
            {keys.GROUP: Composite({
                "observation": Unbounded((n, NUM_FEATURES)),
                "mask": Categorical(2, (n,), dtype=torch.bool),
            }, shape=(n,)),
             keys.EPISODE_LOSS: Unbounded((1,)),
             keys.NUM_AGENTS: Unbounded((1,), dtype=torch.int64)})
        self.action_spec = Composite(
            {keys.GROUP: Composite({"action": Categorical(self.num_actions, (n,))}, shape=(n,))})
        self.reward_spec = Composite({keys.GROUP: Composite({"reward": Unbounded((n, 1))}, shape=(n,))})
        self.done_spec = Composite({
            name: Categorical(2, (1,), dtype=torch.bool) for name in (keys.DONE, keys.TERMINATED, keys.TRUNCATED)})
        self.task: TrainingTask | None = None
        self.controller: LayerwiseController | None = None
        self._set_seed(seed)

    # -- TorchRL API --------------------------------------------------------------------------
    def _set_seed(self, seed: int | None) -> None:
        self._generator = torch.Generator().manual_seed(int(seed) if seed is not None else 0)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        for _ in range(self.config.max_reset_attempts):
            self._start_run()
            try:
                self._train_interval()
            except Exception as err:
                raise TaskError(f"Task {self.task.name}: `training_step`/`backward`/`optimizer.step` raised in "
                                f"the first interval: {type(err).__name__}: {err}") from err
            observation = self.controller.observe()
            self._first_loss = self._prev_loss = self._best_loss = self.controller.last_interval_loss
            if math.isfinite(self._first_loss):
                break
        else:
            raise TaskError(f"{self.config.max_reset_attempts} sampled tasks in a row diverged in their first "
                            f"interval (last: {self.task.name}); lower the family's `lr` range or `init_lr_scale`.")
        if self._first_loss <= 0:
            raise TaskError(f"Task {self.task.name}: the training loss must be positive (the reward is a log-ratio "
                            f"of losses), got {self._first_loss!r}; shift the loss, e.g. use an NLL offset.")
        self._env_steps = 0
        self._prev_val = self._measure_validation()
        return self._output(observation, reward=None, terminated=False, truncated=False)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        n = self.controller.num_agents
        self.controller.apply(tensordict.get(keys.ACTION)[:n])
        self._env_steps += 1
        failed = False
        try:
            self._train_interval()
        except Exception as err:  # a run that blows up mid-episode is a diverged run, not a crashed env
            self.controller.recover_from_exception()
            warnings.warn(f"Task {self.task.name} raised at step {self.controller.step}; ending the episode "
                          f"as diverged: {type(err).__name__}: {err}", RuntimeWarning, stacklevel=2)
            failed = True
        observation = self.controller.observe()
        loss = self.controller.last_interval_loss
        reference = self._best_loss if self.config.divergence_reference == "best" else self._first_loss
        diverged = failed or not math.isfinite(loss) or loss > self.config.divergence_factor * reference
        if diverged:
            reward = -self.config.divergence_penalty
        else:
            reward = math.log(max(self._prev_loss, 1e-12)) - math.log(max(loss, 1e-12))
            self._prev_loss = loss
            self._best_loss = min(self._best_loss, loss)
            # Measured after the observation: like a validation epoch, it informs the next decision.
            if self._validates and self._env_steps % self.config.val_every == 0:
                val = self._measure_validation()
                if self.config.val_weight > 0 and val is not None and self._prev_val is not None:
                    reward += self.config.val_weight * (math.log(max(self._prev_val, 1e-12)) - math.log(max(val, 1e-12)))
                self._prev_val = val
        truncated = not diverged and self.controller.step >= self.config.horizon
        return self._output(observation, reward=reward, terminated=diverged, truncated=truncated)

    # -- one training run ---------------------------------------------------------------------
    def _start_run(self) -> None:
        if self.controller is not None:
            self.controller.close()
            self.controller = None
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self._generator))
        with torch.random.fork_rng(devices=self._cuda_devices):
            torch.manual_seed(seed)
            task = self.family.sample(self._generator, self.config.split)
            self._train_rng = self._get_rng()
        module = task.module.to(self.config.device).train()
        self.task = task
        try:
            optim_conf = module.configure_optimizers()
            optimizers, schedulers, monitor = _configure_optimizers(optim_conf)
            scheduler_configs = _configure_schedulers_automatic_opt(schedulers, monitor)
        except Exception as err:
            raise TaskError(f"Task {task.name}: `configure_optimizers` failed outside a Trainer: "
                            f"{type(err).__name__}: {err}") from err
        if len(optimizers) != 1:
            raise TaskError(f"Task {task.name}: `configure_optimizers` must return exactly one optimizer, "
                            f"got {len(optimizers)}.")
        if any(c.reduce_on_plateau for c in scheduler_configs):
            raise TaskError(f"Task {task.name}: ReduceLROnPlateau needs a monitored metric, which the "
                            "environment does not compute; use a step- or epoch-interval scheduler.")
        self.optimizer = optimizers[0]
        self._scheduler_configs = scheduler_configs
        low, high = self.config.init_lr_scale
        if (low, high) != (1.0, 1.0):
            u = float(torch.rand((), generator=self._generator))
            factor = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
            for group in self.optimizer.param_groups:
                group["lr"] = group["lr"] * factor
                if "initial_lr" in group:
                    group["initial_lr"] = group["initial_lr"] * factor
            for config in scheduler_configs:
                if hasattr(config.scheduler, "base_lrs"):
                    config.scheduler.base_lrs = [lr * factor for lr in config.scheduler.base_lrs]
        loader = self._dataloader(task, "train")
        if hasattr(loader, "__len__") and len(loader) == 0:
            raise TaskError(f"Task {task.name}: `train_dataloader` is empty; it must yield at least one batch.")
        self._loader = loader
        self._epoch = 0
        self._batches = self._epoch_iterator()
        self._val_loader = self._optional_val_loader(task) if self.config.val_every else None
        self._val_batches: list[Any] | None = None
        validate_draw, hide_draw = torch.rand(2, generator=self._generator).tolist()
        self._validates = self._val_loader is not None and validate_draw < self.config.val_prob
        total_steps = None if hide_draw < self.config.unknown_total_prob else self.config.horizon
        try:
            self.controller = LayerwiseController(
                module, self.optimizer, action_multipliers=self.config.action_multipliers,
                interval=self.config.interval, scale_bounds=tuple(self.config.scale_bounds),
                lr_schedulers=[c.scheduler for c in scheduler_configs], total_steps=total_steps,
                grad_samples=self.config.grad_samples)
        except ValueError as err:
            raise TaskError(f"Task {task.name}: {err}") from err
        if self.controller.num_agents > self.max_agents:
            raise ValueError(f"Task {task.name} has {self.controller.num_agents} layers but `max_agents` is "
                             f"{self.max_agents}; raise `env.max_agents`.")

    def _epoch_iterator(self) -> Iterator[tuple[int, Any, bool]]:
        """``(batch_idx, batch, is_last_of_epoch)`` forever, one batch ahead as Lightning fetches."""
        while True:
            iterator = iter(self._loader)
            try:
                current = next(iterator)
            except StopIteration:
                raise TaskError(f"Task {self.task.name}: `train_dataloader` yielded no batch.") from None
            batch_idx = 0
            for upcoming in iterator:
                yield batch_idx, current, False
                current, batch_idx = upcoming, batch_idx + 1
            yield batch_idx, current, True

    def _train_interval(self) -> None:
        module, optimizer, device = self.task.module, self.optimizer, self.config.device
        # Collectors step envs under no_grad; the inner training needs autograd regardless.
        with torch.enable_grad(), torch.random.fork_rng(devices=self._cuda_devices), _no_trainer_warnings():
            self._set_rng(self._train_rng)
            on_cpu = device == "cpu"
            for _ in range(self.config.interval):
                batch_idx, batch, last_of_epoch = next(self._batches)
                if not on_cpu:
                    batch = move_data_to_device(batch, device)
                loss = _loss_of(module.training_step(batch, batch_idx))
                if loss is None:  # Lightning skips the step, so do we
                    continue
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                self.controller.record_loss(loss.detach())
                if last_of_epoch:
                    self._epoch += 1
                if self._scheduler_configs:  # Lightning steps epoch schedulers after the epoch's last step
                    self._step_schedulers("step", batch_idx + 1)
                    if last_of_epoch:
                        self._step_schedulers("epoch", self._epoch)
            self._train_rng = self._get_rng()

    # The inner run draws from its own saved RNG streams (CPU, and the GPU's when training there), so
    # nothing the caller does with the global RNG between env steps changes a rollout.
    @property
    def _cuda_devices(self) -> list[int]:
        device = torch.device(self.config.device)
        return [device.index or 0] if device.type == "cuda" else []

    def _get_rng(self) -> tuple[torch.Tensor, ...]:
        return (torch.get_rng_state(), *(torch.cuda.get_rng_state(d) for d in self._cuda_devices))

    def _set_rng(self, states: tuple[torch.Tensor, ...]) -> None:
        torch.set_rng_state(states[0])
        for device, state in zip(self._cuda_devices, states[1:]):
            torch.cuda.set_rng_state(state, device)

    def _step_schedulers(self, interval: str, count: int) -> None:
        for config in self._scheduler_configs:
            if config.interval == interval and count % config.frequency == 0:
                config.scheduler.step()

    def _optional_val_loader(self, task: TrainingTask) -> Any:
        try:
            return self._dataloader(task, "val")
        except TaskError:  # no validation data: episodes of this task never validate
            return None

    def _measure_validation(self) -> float | None:
        """Mean training objective on up to ``val_batches`` validation batches, fed to the observer."""
        if not self._validates:
            return None
        if self._val_batches is None:  # the same batches every time: changes come from training alone
            batches = itertools.islice(self._val_loader, self.config.val_batches)
            self._val_batches = [move_data_to_device(batch, self.config.device) for batch in batches]
        module, losses = self.task.module, []
        module.eval()  # no dropout, and BatchNorm statistics stay those of training data
        with torch.no_grad(), _no_trainer_warnings():
            for batch_idx, batch in enumerate(self._val_batches):
                loss = _loss_of(module.training_step(batch, batch_idx))
                if loss is not None:
                    losses.append(loss.detach().float().reshape(()))
        module.train()
        losses = torch.stack(losses).tolist() if losses else []  # one host sync
        if not losses or not all(math.isfinite(x) for x in losses):
            return None
        value = sum(losses) / len(losses)
        self.controller.record_val_loss(value)
        return value

    @staticmethod
    def _dataloader(task: TrainingTask, stage: str) -> Any:
        source = task.datamodule if task.datamodule is not None else task.module
        if task.datamodule is not None and stage == "train":
            task.datamodule.prepare_data()
            task.datamodule.setup("fit")
        try:
            return getattr(source, f"{stage}_dataloader")()
        except Exception as err:
            raise TaskError(f"Task {task.name}: `{stage}_dataloader` failed: {type(err).__name__}: {err}") from err

    def _output(self, observation: torch.Tensor, reward: float | None, terminated: bool, truncated: bool) -> TensorDict:
        n, pad = self.controller.num_agents, self.max_agents
        padded = torch.zeros(pad, NUM_FEATURES)
        padded[:n] = observation
        mask = torch.zeros(pad, dtype=torch.bool)
        mask[:n] = True
        agents = {"observation": padded, "mask": mask}
        if reward is not None:
            agents["reward"] = torch.full((pad, 1), float(reward))
        done = terminated or truncated
        return TensorDict({
            keys.GROUP: TensorDict(agents, batch_size=(pad,)),
            keys.EPISODE_LOSS: torch.tensor([self.controller.last_interval_loss]).nan_to_num(0.0, 1e30, -1e30).float(),
            keys.NUM_AGENTS: torch.tensor([n]),
            keys.DONE: torch.tensor([done]),
            keys.TERMINATED: torch.tensor([terminated]),
            keys.TRUNCATED: torch.tensor([truncated]),
        }, batch_size=())

    def close(self, *args: Any, **kwargs: Any) -> None:
        if self.controller is not None:
            self.controller.close()
            self.controller = None
        super().close(*args, **kwargs)
