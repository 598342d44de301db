"""What every zoo family shares: the LightningModule plumbing and the ranges-driven family.

A zoo module is an ordinary LightningModule: ``training_step`` returns a positive scalar loss,
``validation_step`` logs ``val_loss``, ``configure_optimizers`` builds the sampled optimizer, and
the dataloaders serve tensors built once per process. A zoo family holds validated ``train`` and
``heldout`` :class:`~ganno_lightning.envs.tasks.ranges.TaskRanges` and turns a draw from them into a
:class:`~ganno_lightning.envs.task.TrainingTask`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ganno_lightning.envs.task import SPLITS, Split, TaskFamily, TrainingTask
from ganno_lightning.envs.tasks.best_lr import LR_SAMPLINGS, around, best_lr, best_schedule
from ganno_lightning.envs.tasks.data import TrainValData
from ganno_lightning.envs.tasks.ranges import (
    ADAMW_WEIGHT_DECAY,
    OPTIMIZERS,
    SGD_MOMENTUM,
    TaskRanges,
    draw_seed,
)
from ganno_lightning.layerwise.partition import LayerPartition

#: Validation sets are small enough to score in one batch of at most this size.
VAL_BATCH_SIZE = 1024


def make_optimizer(name: str, params: Any, lr: float) -> torch.optim.Optimizer:
    """Build a zoo optimizer, torch's defaults otherwise: ``"adam"``, ``"sgd"`` (momentum 0.9),
    ``"adamw"`` (weight decay 0.01) or ``"sgd_plain"`` (no momentum).

    Example::

        >>> opt = make_optimizer("sgd", nn.Linear(2, 1).parameters(), lr=0.1)
        >>> type(opt).__name__, opt.defaults["momentum"]
        ('SGD', 0.9)
        >>> opt = make_optimizer("adamw", nn.Linear(2, 1).parameters(), lr=1e-3)
        >>> type(opt).__name__, opt.defaults["weight_decay"]
        ('AdamW', 0.01)
    """
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=ADAMW_WEIGHT_DECAY)
    if name == "sgd_plain":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"`optimizer` must be one of {list(OPTIMIZERS)}, got {name!r}.")


class BatchedTensorDataset(TensorDataset):
    """A ``TensorDataset`` that a ``DataLoader`` reads a whole batch at a time.

    ``DataLoader`` calls ``__getitems__`` with the batch's indices when a dataset defines it; one
    ``index_select`` per tensor replaces a Python loop over examples and a stack. ``index_select``
    rather than ``t[index]``: advanced indexing goes through a parallel kernel that took over a
    millisecond per batch on a busy 2-core machine, ``index_select`` a few microseconds. Pair it
    with ``collate_fn=keep_batch``.
    """

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return [t.index_select(0, index) for t in self.tensors]


def keep_batch(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    """``collate_fn`` for :class:`BatchedTensorDataset`: the batch is already stacked."""
    return batch


def tensor_loader(
    tensors: tuple[torch.Tensor, ...], batch_size: int, seed: int | None = None
) -> DataLoader:
    """A DataLoader over ``tensors``: shuffled by ``seed`` when given, in order otherwise.

    Training loaders drop the last incomplete batch (a tiny batch would add loss noise that no
    layer's learning rate explains); families keep ``batch_size`` at most the training set size.
    The shuffling generator lives in the loader, so a rerun of the same task sees the same order.
    """
    dataset = BatchedTensorDataset(*tensors)
    shuffle = seed is not None
    return DataLoader(
        dataset,
        batch_size=min(batch_size, len(dataset)),
        shuffle=shuffle,
        drop_last=shuffle,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        collate_fn=keep_batch,
    )


class ZooModule(L.LightningModule):
    """Training plumbing shared by the zoo's models; subclasses define the network and ``loss``.

    Args:
        lr: Initial learning rate (no scheduler).
        batch_size: Training batch size.
        optimizer: A name from :data:`~ganno_lightning.envs.tasks.ranges.OPTIMIZERS` (see :func:`make_optimizer`).
        seed: Seeds the training data order (and, per family, generated data).
        data: Returns the dataset's cached :class:`~ganno_lightning.envs.tasks.data.TrainValData` (a module-level cached
            function or a ``functools.partial`` of one). The module keeps this callable, not the
            tensors, so pickling or deep-copying a task (worker processes, population members)
            does not copy the data.

    Raises:
        ValueError: If ``optimizer`` is unknown.

    Example::

        >>> from ganno_lightning.envs.tasks import DigitsMLP
        >>> model = DigitsMLP(depth=1, width=16, lr=0.1, batch_size=32, optimizer="sgd", seed=0)
        >>> type(model.configure_optimizers()).__name__, len(next(iter(model.train_dataloader()))[0])
        ('SGD', 32)
    """

    def __init__(
        self, lr: float, batch_size: int, optimizer: str, seed: int, data: Callable[[], TrainValData]
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"`optimizer` must be one of {list(OPTIMIZERS)}, got {optimizer!r}.")
        self.lr = lr
        self.batch_size = batch_size
        self.optimizer_name = optimizer
        self.seed = seed
        self._data = data
        # Build (or fetch) the dataset now, so that a bad configuration fails at sampling. On the CPU
        # even when the module is built on the meta device to count its layers: the data is cached
        # and shared by every task of the process.
        with torch.device("cpu"):
            data()

    def loss(self, batch: list[torch.Tensor]) -> torch.Tensor:
        """The mean loss of ``batch`` (cross-entropy or MSE: positive); subclasses define it."""
        raise NotImplementedError(f"{type(self).__name__} must define `loss(batch)`.")

    @torch.no_grad()
    def validation_loss(self) -> float:
        """The validation loss now, as the logged ``val_loss`` averages it (weighted by batch size).

        The validation set is served in order, so measuring it (before training, say) changes
        nothing a run trains on (iterating a DataLoader does draw its base seed from the global RNG).
        """
        was_training = self.training
        self.eval()
        try:
            losses = [(float(self.loss(batch)), len(batch[0])) for batch in self.val_dataloader()]
        finally:
            self.train(was_training)
        return sum(loss * n for loss, n in losses) / sum(n for _, n in losses)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.loss(batch)

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self.loss(batch), batch_size=len(batch[0]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return make_optimizer(self.optimizer_name, self.parameters(), self.lr)

    def train_dataloader(self) -> DataLoader:
        data = self._data()
        return tensor_loader((data.x_train, data.y_train), self.batch_size, seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        data = self._data()
        return tensor_loader((data.x_val, data.y_val), VAL_BATCH_SIZE)


def mlp(in_features: int, depth: int, width: int, out_features: int, activation: type[nn.Module]) -> nn.Sequential:
    """``depth`` hidden ``Linear + activation`` layers and a linear head: ``depth + 1`` agents.

    Example::

        >>> mlp(4, 2, 8, 3, nn.ReLU)
        Sequential(
          (0): Linear(in_features=4, out_features=8, bias=True)
          (1): ReLU()
          (2): Linear(in_features=8, out_features=8, bias=True)
          (3): ReLU()
          (4): Linear(in_features=8, out_features=3, bias=True)
        )
    """
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(in_features if i == 0 else width, width), activation()]
    layers.append(nn.Linear(width if depth else in_features, out_features))
    return nn.Sequential(*layers)


class ZooFamily(TaskFamily):
    """A task family driven by :class:`TaskRanges`; subclasses build the module and count its layers.

    Args:
        train: Meta-training ranges: a ``TaskRanges``, a mapping (or omegaconf section) laid over
            the family's default, or ``None`` for the default.
        heldout: Held-out ranges, same forms; the default is deeper, wider and harder than train.
        prefix: Dotted config path of this family, used in error messages.

    Raises:
        ValueError: For an unknown key or an invalid range, naming ``<prefix>.<split>.<field>``.

    Subclasses set ``name``, ``ranges_type``, ``default_train``, ``default_heldout`` and implement
    ``build``; ``check_ranges`` adds family-specific checks, and ``largest`` names the choices that
    add layers. Agents are counted by :class:`~ganno_lightning.layerwise.partition.LayerPartition`,
    the partition the env and the callback use, never by hand.

    Example::

        >>> from ganno_lightning.envs.tasks import MLPDigitsFamily
        >>> family = MLPDigitsFamily(heldout={"depth": [8, 8]})
        >>> family.ranges("heldout").depth, family.max_layers("heldout")
        ((8, 8), 9)
    """

    name: ClassVar[str] = "zoo"
    ranges_type: ClassVar[type[TaskRanges]] = TaskRanges
    #: Sampled choices besides optimizer and depth that set a task's best LR cell (e.g. batch_norm).
    lr_cell_fields: ClassVar[tuple[str, ...]] = ()
    default_train: ClassVar[TaskRanges]
    default_heldout: ClassVar[TaskRanges]

    def __init__(
        self,
        train: TaskRanges | dict[str, Any] | None = None,
        heldout: TaskRanges | dict[str, Any] | None = None,
        *,
        prefix: str = "family",
        lr_sampling: str = "ranges",
    ) -> None:
        if lr_sampling not in LR_SAMPLINGS:
            raise ValueError(f"`{prefix}.lr_sampling` must be one of {list(LR_SAMPLINGS)}, got {lr_sampling!r}: "
                             "'ranges' draws from the `lr` range, 'around_best' from 0.1x to 10x the task's best LR.")
        self.lr_sampling = lr_sampling
        self.train = self.ranges_type.from_config(train, f"{prefix}.train", self.default_train)
        self.heldout = self.ranges_type.from_config(heldout, f"{prefix}.heldout", self.default_heldout)
        for split in SPLITS:
            self.check_ranges(self.ranges(split), f"{prefix}.{split}")

    def ranges(self, split: Split = "train") -> TaskRanges:
        """The validated ranges of ``split``.

        Raises:
            ValueError: If ``split`` is not ``"train"`` or ``"heldout"``.
        """
        if split == "train":
            return self.train
        if split == "heldout":
            return self.heldout
        raise ValueError(f"`split` must be one of {list(SPLITS)}, got {split!r}.")

    def check_ranges(self, ranges: TaskRanges, prefix: str) -> None:
        """Family-specific checks of validated ranges; raise ``ValueError`` naming the field."""

    def sample(self, generator: torch.Generator, split: Split = "train") -> TrainingTask:
        """Draw one task of ``split``.

        Hyperparameters and the task seed come from ``generator``; weight initialisation uses
        torch's global RNG, which the caller seeds (``torch.manual_seed``) for reproducible weights.

        Raises:
            ValueError: For an unknown ``split``.
            TypeError: If ``generator`` is not a CPU ``torch.Generator``.
        """
        ranges = self.ranges(split)
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise TypeError(f"`generator` must be a CPU torch.Generator, got {generator!r}.")
        hp = ranges.sample(generator)
        extra: dict[str, Any] = {}
        if self.lr_sampling == "around_best":
            cell = self.lr_cell(hp)
            extra["best_lr"] = best_lr(cell)
            # the calibrated schedule that trains the cell best (constant or cosine) and its peak LR
            extra["best_schedule"], extra["best_schedule_lr"] = best_schedule(cell)
            hp["lr"] = around(extra["best_lr"], generator)
        seed = draw_seed(generator)
        module = self.build(hp, seed)
        num_layers = len(LayerPartition.from_module(module))
        info = {"family": self.name, "split": split, **hp, **extra, "seed": seed, "num_layers": num_layers}
        return TrainingTask(module=module, name=self.describe(hp), info=info)

    def lr_cell(self, hp: dict[str, Any]) -> str:
        """The cell of the best-LR table that a task with hyperparameters ``hp`` belongs to.

        Example::

            >>> from ganno_lightning.envs.tasks import CNNDigitsFamily
            >>> CNNDigitsFamily().lr_cell({"optimizer": "sgd", "depth": 2, "batch_norm": True, "width": 9})
            'cnn_digits|sgd|depth=2|batch_norm=True'
        """
        return "|".join([self.name, hp["optimizer"], f"depth={hp['depth']}",
                         *(f"{name}={hp[name]}" for name in self.lr_cell_fields)])

    def max_layers(self, split: Split = "train") -> int:
        """The largest number of agents of any task of ``split`` (reached by some sample)."""
        ranges = self.ranges(split)
        # Any draw fixes the hyperparameters that do not change the layer count.
        hp = {**ranges.sample(torch.Generator().manual_seed(0)), **self.largest(ranges)}
        return self.num_layers(hp)

    def num_layers(self, hp: dict[str, Any]) -> int:
        """The number of agents of ``build(hp)``: its LayerPartition, built on the meta device (no
        memory, no weight initialisation, no draw from torch's RNG)."""
        with torch.device("meta"):
            module = self.build(hp, seed=0)
        return len(LayerPartition.from_module(module))

    def largest(self, ranges: TaskRanges) -> dict[str, Any]:
        """The hyperparameters with the most layers; families with layer-adding choices override."""
        return {"depth": ranges.depth[1]}

    @abstractmethod
    def build(self, hp: dict[str, Any], seed: int) -> ZooModule:
        """A fresh module for the sampled hyperparameters ``hp`` and task ``seed``."""

    def describe(self, hp: dict[str, Any]) -> str:
        """A short name for logs, e.g. ``mlp_digits(depth=2, width=32, adam, lr=3e-03, batch=64)``."""
        extra = "".join(f", {k}={_fmt(v)}" for k, v in hp.items()
                        if k not in ("depth", "width", "optimizer", "lr", "batch_size"))
        return (f"{self.name}(depth={hp['depth']}, width={hp['width']}, {hp['optimizer']}, "
                f"lr={hp['lr']:.0e}, batch={hp['batch_size']}{extra})")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(train={self.train.to_dict()}, heldout={self.heldout.to_dict()})"


def check_batch_size(ranges: TaskRanges, prefix: str, num_examples: int) -> None:
    """Raise if ``batch_size`` can exceed the ``num_examples`` training examples (an empty epoch)."""
    if ranges.batch_size[1] > num_examples:
        raise ValueError(
            f"`{prefix}.batch_size` must not exceed the {num_examples} training examples, got "
            f"[{ranges.batch_size[0]}, {ranges.batch_size[1]}]. Lower the upper bound."
        )


def _fmt(value: Any) -> str:
    return f"{value:.2g}" if isinstance(value, float) else str(value)
