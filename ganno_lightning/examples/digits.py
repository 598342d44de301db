"""The digits example: scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), no download.

One loader (:func:`load_digits_split`), one :class:`DigitsDataModule` and one configurable
:class:`DigitsClassifier` serve the demo, PBT's example task (:func:`digits_task`), NOS's example
task, the environment zoo's data and the tests. Each user keeps the split, scaling and model it
has always used (their results stay comparable), expressed as arguments of these three.

Example::

    import lightning.pytorch as pl
    from ganno_lightning.examples.digits import DigitsClassifier, DigitsDataModule

    model = DigitsClassifier(hidden=[64, 64], optimizer="sgd", lr=0.05)
    pl.Trainer(max_epochs=3, logger=False).fit(model, datamodule=DigitsDataModule(batch_size=64))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "DIGITS_CLASSES",
    "DIGITS_IMAGES",
    "DIGITS_SIDE",
    "DigitsClassifier",
    "DigitsDataModule",
    "DigitsSplit",
    "digits_network",
    "digits_task",
    "load_digits_split",
]

DIGITS_CLASSES = 10
DIGITS_SIDE = 8
DIGITS_IMAGES = 1797
_STANDARDIZE = (None, "pixel", "global")


class DigitsSplit(NamedTuple):
    """Flat float32 inputs (64 pixels) and int64 labels of each part; the test part may be empty."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def _count(size: float | int, name: str) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise ValueError(f"`{name}` must be a fraction in [0, 1) or a count of images, got {size!r}.")
    if isinstance(size, float):
        if not 0.0 <= size < 1.0:
            raise ValueError(f"`{name}` as a fraction must be in [0, 1), got {size!r}; pass an int for a count.")
        return int(DIGITS_IMAGES * size)
    if not 0 <= size < DIGITS_IMAGES:
        raise ValueError(f"`{name}` as a count must be in [0, {DIGITS_IMAGES}), got {size!r}.")
    return size


def load_digits_split(
    val_size: float | int = 0.3,
    seed: int = 0,
    *,
    test_size: float | int = 0,
    train_first: bool = False,
    train_subset: int | None = None,
    standardize: str | None = None,
) -> DigitsSplit:
    """Load the digits, scale pixels to [0, 1] and cut one seeded permutation into train/val/test.

    The permutation of all 1,797 images comes from ``torch.randperm`` with its own generator seeded
    by ``seed``, so the split never depends on (or moves) the global RNG.

    Args:
        val_size: validation images, as a fraction of all images (rounded down) or a count.
        seed: seed of the permutation.
        test_size: test images, same forms; 0 leaves the test part empty.
        train_first: cut the permutation as ``[train | val | test]`` instead of ``[val | test | train]``.
        train_subset: keep only the first this many training images (a harder, overfitting-prone task).
        standardize: ``None`` keeps pixels in [0, 1]; ``"pixel"`` subtracts the per-pixel mean and
            divides by the per-pixel std (at least 1e-3); ``"global"`` subtracts the per-pixel mean
            and divides by one std over all training pixels. Statistics come from the training part
            only, so nothing of the validation or test images leaks in.

    Raises:
        ValueError: naming the argument, for a size out of range, too few training images left or
            an unknown ``standardize``.

    Example::

        >>> split = load_digits_split(0.2, seed=0, standardize="global")
        >>> split.x_train.shape, split.x_val.shape, split.x_test.shape, split.y_train.dtype
        (torch.Size([1438, 64]), torch.Size([359, 64]), torch.Size([0, 64]), torch.int64)
    """
    if standardize not in _STANDARDIZE:
        raise ValueError(f"`standardize` must be one of {_STANDARDIZE}, got {standardize!r}.")
    n_val, n_test = _count(val_size, "val_size"), _count(test_size, "test_size")
    n_train = DIGITS_IMAGES - n_val - n_test
    if n_train < 1:
        raise ValueError(f"`val_size` + `test_size` leave no training images ({n_val} + {n_test} of {DIGITS_IMAGES}).")
    if train_subset is not None and not (isinstance(train_subset, int) and train_subset >= 1):
        raise ValueError(f"`train_subset` must be None or a positive int, got {train_subset!r}.")

    from sklearn.datasets import load_digits  # scikit-learn is slow to import; only digits users pay for it

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0  # exact: a power of two
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    if train_first:
        train, val, test = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
    else:
        val, test, train = order[:n_val], order[n_val : n_val + n_test], order[n_val + n_test :]
    if train_subset is not None:
        train = train[:train_subset]
    if standardize == "pixel":
        x = (x - x[train].mean(0)) / x[train].std(0).clamp_min(1e-3)
    elif standardize == "global":
        mean = x[train].mean(dim=0)
        x = (x - mean) / (x[train] - mean).std()
    return DigitsSplit(*(t[part].contiguous() for part in (train, val, test) for t in (x, y)))


class DigitsDataModule(pl.LightningDataModule):
    """Loaders over :func:`load_digits_split`; the data is loaded in ``setup``.

    Args:
        batch_size: training batch size.
        val_size, split_seed, train_first, train_subset, standardize: the split, as in
            :func:`load_digits_split` (``split_seed`` is its ``seed``). Every run compared with
            another (a PBT population, a rule search) must share them.
        shuffle_seed: seeds the training order; ``None`` draws it from the global RNG at every epoch.
        val_batch_size: validation batch size.

    Example::

        >>> dm = DigitsDataModule(batch_size=32)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> x.shape, len(dm.val_dataloader().dataset)
        (torch.Size([32, 64]), 539)
    """

    def __init__(
        self,
        batch_size: int = 64,
        val_size: float | int = 0.3,
        split_seed: int = 0,
        *,
        train_first: bool = False,
        train_subset: int | None = None,
        standardize: str | None = None,
        shuffle_seed: int | None = 0,
        val_batch_size: int = 512,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        if standardize not in _STANDARDIZE:
            raise ValueError(f"`standardize` must be one of {_STANDARDIZE}, got {standardize!r}.")
        self.batch_size, self.val_batch_size, self.shuffle_seed = batch_size, val_batch_size, shuffle_seed
        self.split_kwargs = dict(
            val_size=val_size, seed=split_seed, train_first=train_first, train_subset=train_subset,
            standardize=standardize,
        )

    def setup(self, stage: str | None = None) -> None:
        split = load_digits_split(**self.split_kwargs)
        self.train_set = TensorDataset(split.x_train, split.y_train)
        self.val_set = TensorDataset(split.x_val, split.y_val)

    def train_dataloader(self) -> DataLoader:
        generator = None if self.shuffle_seed is None else torch.Generator().manual_seed(self.shuffle_seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.val_batch_size)


def digits_network(hidden: Sequence[int] = (32,), channels: Sequence[int] = (), dropout: float = 0.0) -> nn.Sequential:
    """A classifier network on flat 64-pixel inputs: optional conv layers, then an MLP with ReLUs.

    Conv layers (3x3, padding 1, ReLU) see the input as 1x8x8 and are followed by one 2x2 max-pool;
    with ``dropout > 0`` a dropout layer follows every hidden ReLU of the MLP. Layers are created
    in order, so a seeded global RNG gives the same weights every time.

    Example::

        >>> digits_network(hidden=[64], channels=[16, 32])(torch.zeros(5, 64)).shape
        torch.Size([5, 10])
    """
    layers: list[nn.Module] = []
    width = DIGITS_SIDE * DIGITS_SIDE
    if channels:
        layers.append(nn.Unflatten(1, (1, DIGITS_SIDE, DIGITS_SIDE)))
        previous = 1
        for c in channels:
            layers += [nn.Conv2d(previous, c, 3, padding=1), nn.ReLU()]
            previous = c
        layers += [nn.MaxPool2d(2), nn.Flatten()]
        width = previous * (DIGITS_SIDE // 2) ** 2
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, DIGITS_CLASSES))
    return nn.Sequential(*layers)


class DigitsClassifier(pl.LightningModule):
    """:func:`digits_network` trained with cross-entropy; logs ``train_loss``, ``val_loss`` and ``val_acc``.

    Pair it with :class:`DigitsDataModule` (or any loaders of flat 64-pixel inputs).

    Args:
        hidden: widths of the hidden layers.
        channels: conv channels before the MLP (empty: a plain MLP).
        dropout: dropout after every hidden layer.
        optimizer: ``"adam"`` or ``"sgd"`` (with ``momentum``).
        lr: initial learning rate.
        momentum: SGD momentum.
        weight_decay: the optimizer's weight decay.
        scheduler: ``None`` or ``"cosine"`` (cosine annealing to 0).
        scheduler_interval: ``"epoch"`` anneals over ``max_epochs`` epochs, ``"step"`` over every
            optimizer step of the fit.
        max_epochs: the epoch-wise cosine horizon.

    Raises:
        ValueError: naming the argument, for an unknown optimizer, scheduler or interval.

    Example::

        import lightning.pytorch as pl
        from ganno_lightning.examples.digits import DigitsClassifier, DigitsDataModule

        pl.Trainer(max_steps=20, logger=False, enable_checkpointing=False).fit(
            DigitsClassifier(), datamodule=DigitsDataModule())
    """

    def __init__(
        self,
        hidden: Sequence[int] = (32,),
        channels: Sequence[int] = (),
        dropout: float = 0.0,
        optimizer: str = "adam",
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        scheduler: str | None = None,
        scheduler_interval: str = "epoch",
        max_epochs: int = 10,
    ) -> None:
        super().__init__()
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"`optimizer` must be 'sgd' or 'adam', got {optimizer!r}.")
        if scheduler not in (None, "cosine"):
            raise ValueError(f"`scheduler` must be None or 'cosine', got {scheduler!r}.")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"`scheduler_interval` must be 'epoch' or 'step', got {scheduler_interval!r}.")
        self.save_hyperparameters()
        self.net = digits_network(hidden, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        hp = self.hparams
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler is None:
            return opt
        horizon = self.trainer.estimated_stepping_batches if hp.scheduler_interval == "step" else max(1, hp.max_epochs)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=horizon)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": hp.scheduler_interval}}


def digits_task(
    seed: int = 0,
    lr: float = 0.01,
    optimizer: str = "sgd",
    hidden: int = 64,
    batch_size: int = 64,
    scheduler: str | None = None,
    max_epochs: int = 10,
    train_subset: int | None = None,
    dropout: float = 0.0,
    split_seed: int = 0,
) -> tuple[DigitsClassifier, DigitsDataModule]:
    """PBT's task factory: a seeded two-hidden-layer MLP and its standardised data.

    The split (30% validation, per-pixel standardisation) is shared by every member; the weights
    follow ``seed``. Point a PBT config at it with ``task: ganno_lightning.examples.digits:digits_task``.

    Example::

        >>> model, data = digits_task(seed=1, hidden=16, train_subset=256)
        >>> model.hparams.hidden, data.batch_size
        ((16, 16), 64)
    """
    pl.seed_everything(seed, workers=False, verbose=False)
    model = DigitsClassifier(
        hidden=(hidden, hidden), dropout=dropout, optimizer=optimizer, lr=lr, scheduler=scheduler,
        max_epochs=max_epochs,
    )
    data = DigitsDataModule(
        batch_size, split_seed=split_seed, train_subset=train_subset, standardize="pixel", shuffle_seed=split_seed + 1
    )
    return model, data
