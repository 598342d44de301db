"""One training run of a task outside a Trainer, on the module's own Lightning hooks.

The environment trains the LightningModule as its author wrote it: ``configure_optimizers`` (with
its LR schedulers, stepped as Lightning steps them), ``training_step``, and ``train_dataloader``
(or a LightningDataModule's), epoch after epoch. No Trainer: a Trainer per episode would cost more
than the short intervals between two decisions.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from lightning.fabric.utilities.data import sized_len
from lightning.pytorch.core.optimizer import (
    _configure_optimizers,
    _configure_schedulers_automatic_opt,
)
from lightning.pytorch.utilities import move_data_to_device

from ganno_lightning.envs.task import Split, TaskFamily, TrainingTask
from ganno_lightning.rng import RNGStates, cuda_devices, get_rng, set_rng

# The inner run draws from its own saved RNG streams (CPU, and the GPU's when training there), so
# nothing the caller does with the global RNG between env steps changes a rollout.


class TaskError(RuntimeError):
    """A task cannot be trained at all (its code raises, its data is empty, nothing is trainable)."""


def sample_task(family: TaskFamily, generator: torch.Generator, split: Split, device: str) -> tuple[TrainingTask, RNGStates]:
    """Draw a task whose weights come from a seed drawn from ``generator``, leaving the global RNG as it was.

    Returns:
        The task, and the RNG states its training continues from (pass them to :class:`InnerRun`).
    """
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    with torch.random.fork_rng(devices=cuda_devices(device)):
        torch.manual_seed(seed)
        task = family.sample(generator, split)
        return task, get_rng(device)


@contextlib.contextmanager
def _no_trainer_warnings() -> Iterator[None]:
    """The module runs without a Trainer: its `self.log` calls are no-ops by design, not news."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*self\.log\(\).*")
        yield


def _loss_of(output: Any) -> torch.Tensor | None:
    """The loss a `training_step` returned (a tensor, a dict with "loss", or None to skip)."""
    return output["loss"] if isinstance(output, dict) else output


def dataloader(task: TrainingTask, stage: str) -> Any:
    """The task's ``<stage>_dataloader()``: its datamodule's when it has one (set up for fit), else its module's.

    Raises:
        TaskError: If the hook raises (or does not exist), naming the task and the hook.
    """
    source = task.datamodule if task.datamodule is not None else task.module
    if task.datamodule is not None and stage == "train":
        task.datamodule.prepare_data()
        task.datamodule.setup("fit")
    try:
        return getattr(source, f"{stage}_dataloader")()
    except Exception as err:
        raise TaskError(f"Task {task.name}: `{stage}_dataloader` failed: {type(err).__name__}: {err}") from err


class InnerRun:
    """Trains ``task.module`` interval by interval as a Trainer would, without one.

    Args:
        task: The task; its module is moved to ``device`` and put in training mode.
        device: Where the training runs.
        rng: RNG states the training starts from (from :func:`sample_task`).
        lr_factor: Multiplies every initial LR (param groups and schedulers' base LRs).
        val_batches: Validation batches per measurement (0: no validation loader is opened).

    Raises:
        TaskError: If ``configure_optimizers`` fails or returns other than one optimizer, uses
            ReduceLROnPlateau, or the training dataloader fails or is empty (an iterable-style loader
            without a length: at the first training step, from :meth:`train`).

    Example::

        >>> from ganno_lightning.envs.tasks import make_family
        >>> task, rng = sample_task(make_family("mlp_digits"), torch.Generator().manual_seed(0), "train", "cpu")
        >>> run = InnerRun(task, "cpu", rng, val_batches=2)
        >>> losses = []
        >>> run.train(5, record_loss=losses.append)
        >>> len(losses), run.validation_loss() > 0
        (5, True)
    """

    def __init__(self, task: TrainingTask, device: str, rng: RNGStates, lr_factor: float = 1.0,
                 val_batches: int = 0) -> None:
        self.task = task
        self.device = device
        # each submodule's own train/eval mode stands, as a Trainer's fit leaves it (a frozen, eval-mode backbone stays so)
        self.module = task.module.to(device)
        try:
            optim_conf = self.module.configure_optimizers()
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
        self.scheduler_configs = scheduler_configs
        if lr_factor != 1.0:
            self.scale_initial_lrs([lr_factor] * len(self.optimizer.param_groups))
        loader = dataloader(task, "train")
        # An iterable-style loader has no length: its emptiness shows at its first batch (`_epoch_iterator`).
        if sized_len(loader) == 0:
            raise TaskError(f"Task {task.name}: `train_dataloader` is empty; it must yield at least one batch.")
        self._loader = loader
        self.epoch = 0
        self.skipped_in_a_row = 0  # steps whose `training_step` returned None, since the last that gave a loss
        self._batches = self._epoch_iterator()
        self._peeked: tuple[int, Any, bool] | None = None  # a batch `probe` looked at, still to be trained on
        self._rng = rng
        self.val_batches = val_batches
        self.val_loader = self._optional_val_loader() if val_batches else None
        self._val_data: list[Any] | None = None

    @property
    def schedulers(self) -> list[Any]:
        """The LR schedulers ``configure_optimizers`` returned, in order."""
        return [config.scheduler for config in self.scheduler_configs]

    def scale_initial_lrs(self, factors: Sequence[float]) -> None:
        """Multiply each param group's initial LR (and its schedulers' base LR) by its factor, before training."""
        if len(factors) != len(self.optimizer.param_groups):
            raise ValueError(f"Expected one factor per param group ({len(self.optimizer.param_groups)}), "
                             f"got {len(factors)}.")
        for group, factor in zip(self.optimizer.param_groups, factors):
            group["lr"] = group["lr"] * factor
            if "initial_lr" in group:
                group["initial_lr"] = group["initial_lr"] * factor
        for config in self.scheduler_configs:
            if hasattr(config.scheduler, "base_lrs"):
                config.scheduler.base_lrs = [lr * f for lr, f in zip(config.scheduler.base_lrs, factors, strict=True)]

    def _epoch_iterator(self) -> Iterator[tuple[int, Any, bool]]:
        """``(batch_idx, batch, is_last_of_epoch)`` forever, one batch ahead as Lightning fetches.

        An epoch ends when the loader's iterator is exhausted, so an iterable-style loader without a
        length has its epochs (and epoch-interval schedulers) where a Trainer would have them.
        """
        while True:
            iterator = iter(self._loader)
            try:
                current = next(iterator)
            except StopIteration:
                raise TaskError(f"Task {self.task.name}: `train_dataloader` yielded no batch in epoch {self.epoch}; "
                                "it must yield at least one batch per epoch.") from None
            batch_idx = 0
            for upcoming in iterator:
                yield batch_idx, current, False
                current, batch_idx = upcoming, batch_idx + 1
            yield batch_idx, current, True

    def train(self, steps: int, record_loss: Callable[[torch.Tensor], None]) -> None:
        """Run ``steps`` training steps, handing each step's detached loss to ``record_loss``.

        A step whose ``training_step`` returns None updates nothing but counts, as in Lightning (its
        optimizer step runs without gradients), so decisions, epochs and schedulers keep a Trainer's count.

        Raises:
            TaskError: If ``train_dataloader`` yields no batch in an epoch, or ``training_step`` returns
                None for every batch of one.
        """
        module, optimizer, device = self.module, self.optimizer, self.device
        # Collectors step envs under no_grad; the inner training needs autograd regardless.
        with torch.enable_grad(), torch.random.fork_rng(devices=cuda_devices(device)), _no_trainer_warnings():
            set_rng(device, self._rng)
            on_cpu = device == "cpu"
            for _ in range(steps):
                batch_idx, batch, last_of_epoch = self._next_batch()
                if not on_cpu:
                    batch = move_data_to_device(batch, device)
                loss = _loss_of(module.training_step(batch, batch_idx))
                optimizer.zero_grad()
                if loss is None:  # Lightning's skipped step: no gradients, so no update, but a step all the same
                    optimizer.step()
                    self.skipped_in_a_row += 1
                else:
                    loss.backward()
                    optimizer.step()
                    record_loss(loss.detach())
                    self.skipped_in_a_row = 0
                if last_of_epoch:
                    if self.skipped_in_a_row > batch_idx:
                        raise self.nothing_trains(f"every batch of epoch {self.epoch}")
                    self.epoch += 1
                if self.scheduler_configs:  # Lightning steps epoch schedulers after the epoch's last step
                    self._step_schedulers("step", batch_idx + 1)
                    if last_of_epoch:
                        self._step_schedulers("epoch", self.epoch)
            self._rng = get_rng(device)

    def nothing_trains(self, where: str) -> TaskError:
        return TaskError(f"Task {self.task.name}: `training_step` returned None for {where}, so nothing trains; "
                         "return the loss (None skips one batch).")

    def _next_batch(self) -> tuple[int, Any, bool]:
        if self._peeked is not None:
            item, self._peeked = self._peeked, None
            return item
        return next(self._batches)

    def probe(self) -> torch.Tensor | None:
        """The training loss on the batch the next training step will use, without updating or consuming it.

        The batch stays next in line and the run's RNG streams are not advanced, so the training
        that follows is the same as without the probe; every call draws the same random numbers
        (dropout). Returns the loss with its graph when gradients are enabled (the caller,
        :meth:`LayerwiseController.probe
        <ganno_lightning.layerwise.controller.LayerwiseController.probe>`, runs its backward and
        restores the gradients), or ``None`` if ``training_step`` skips the batch.
        """
        module, device = self.module, self.device
        with torch.random.fork_rng(devices=cuda_devices(device)), _no_trainer_warnings():
            set_rng(device, self._rng)
            if self._peeked is None:
                self._peeked = next(self._batches)
                # Fetching is part of the next step (a shuffling loader draws its order here): keep
                # its draws, so the step's own draws (dropout) come from the same state as without a probe.
                self._rng = get_rng(device)
            batch_idx, batch, _ = self._peeked
            if device != "cpu":
                batch = move_data_to_device(batch, device)
            return _loss_of(module.training_step(batch, batch_idx))

    def _step_schedulers(self, interval: str, count: int) -> None:
        for config in self.scheduler_configs:
            if config.interval == interval and count % config.frequency == 0:
                config.scheduler.step()

    def _optional_val_loader(self) -> Any:
        try:
            return dataloader(self.task, "val")
        except TaskError:  # no validation data: episodes of this task never validate
            return None

    def validation_loss(self) -> float | None:
        """Mean training objective on the val loader's first ``val_batches`` batches, in eval mode.

        The same batches every time (kept from the first call), so measurements differ only by
        training. ``None`` if there is no val loader, no batch gave a loss, or a loss is not finite.
        """
        if self.val_loader is None:
            return None
        if self._val_data is None:
            # A loader's iterator draws its seed (and a shuffled one its order) from the global RNG: draw
            # them from the run's own, so measuring leaves the caller's RNG (the policy's sampling) alone.
            with torch.random.fork_rng(devices=cuda_devices(self.device)):
                set_rng(self.device, self._rng)
                batches = itertools.islice(self.val_loader, self.val_batches)
                self._val_data = [move_data_to_device(batch, self.device) for batch in batches]
        module, losses = self.module, []
        modes = [(submodule, submodule.training) for submodule in module.modules()]
        module.eval()  # no dropout, and BatchNorm statistics stay those of training data
        with torch.no_grad(), _no_trainer_warnings():
            for batch_idx, batch in enumerate(self._val_data):
                loss = _loss_of(module.training_step(batch, batch_idx))
                if loss is not None:
                    losses.append(loss.detach().float().reshape(()))
        for submodule, training in modes:  # back to each one's own mode, as Lightning does after validation
            submodule.training = training
        losses = torch.stack(losses).tolist() if losses else []  # one host sync
        if not losses or not all(math.isfinite(x) for x in losses):
            return None
        return sum(losses) / len(losses)
