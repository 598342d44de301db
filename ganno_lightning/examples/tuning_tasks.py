"""Small tuning tasks on bundled data (no download), with train / validation / test splits.

Hyperparameter tuners (BOIL, Optuna's samplers and pruners) are compared on these: a tuner sees
only the validation loss; the configuration it recommends is retrained and scored on the test split.
Every task tunes the same four hyperparameters of an MLP trained with Adam: ``lr``,
``weight_decay``, ``dropout`` and ``batch_size`` (:data:`TUNING_TASKS` gives each task's space, in
the form of :mod:`ganno_lightning.tuning.space`).

- ``digits``: scikit-learn's 8x8 digits (:func:`~ganno_lightning.examples.digits.load_digits_split`,
  per-pixel standardised), 1,079 training / 359 validation / 359 test images, 64-64 MLP,
  cross-entropy.
- ``digits300``: the same with only the first 300 training images (overfits quickly: regularisation
  and training length matter more).
- ``diabetes``: scikit-learn's diabetes regression (442 patients, 10 features), 266 / 88 / 88,
  64-64 MLP, mean squared error of the standardised target.

Example::

    >>> task = TUNING_TASKS["diabetes"]
    >>> split = task.split()
    >>> split.x_train.shape, split.x_val.shape, split.x_test.shape
    (torch.Size([266, 10]), torch.Size([88, 10]), torch.Size([88, 10]))
    >>> module = task.build_module(lr=1e-3, weight_decay=1e-4, dropout=0.1)
    >>> module(split.x_val).shape
    torch.Size([88, 1])
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from ganno_lightning.examples.digits import DigitsClassifier, DigitsSplit, load_digits_split

__all__ = ["TUNING_TASKS", "MLPRegressor", "TuningTask", "load_diabetes_split"]

#: The search space every task shares but for ``batch_size`` (scaled to the training set).
_SPACE = {
    "lr": {"low": 1e-4, "high": 1e-1, "log": True},
    "weight_decay": {"low": 1e-6, "high": 1e-1, "log": True},
    "dropout": {"low": 0.0, "high": 0.6},
}


def load_diabetes_split(val_size: int = 88, test_size: int = 88, seed: int = 0) -> DigitsSplit:
    """scikit-learn's diabetes data, cut by one seeded permutation into ``[val | test | train]``.

    Features and the target are standardised with the training part's statistics, so the validation
    and test losses are in units of the target's training variance. The permutation has its own
    generator: the global RNG is neither read nor moved.

    Raises:
        ValueError: if ``val_size + test_size`` leaves fewer than 10 training rows.

    Example::

        >>> split = load_diabetes_split()
        >>> split.x_train.shape, split.y_train.shape, round(float(split.y_train.std()), 3)
        (torch.Size([266, 10]), torch.Size([266, 1]), 1.0)
    """
    from sklearn.datasets import load_diabetes  # scikit-learn is slow to import; only its users pay

    data = load_diabetes()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.float32)[:, None]
    if not (0 <= val_size and 0 <= test_size and len(x) - val_size - test_size >= 10):
        raise ValueError(f"`val_size`={val_size} and `test_size`={test_size} leave fewer than 10 of {len(x)} rows"
                         " for training.")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, test, train = order[:val_size], order[val_size : val_size + test_size], order[val_size + test_size :]
    x = (x - x[train].mean(0)) / x[train].std(0)
    y = (y - y[train].mean()) / y[train].std()
    return DigitsSplit(*(t[part].contiguous() for part in (train, val, test) for t in (x, y)))


class MLPRegressor(pl.LightningModule):
    """An MLP with ReLUs (and dropout after each) trained with Adam on the mean squared error; logs
    ``train_loss`` and ``val_loss``.

    Args:
        inputs: input features.
        hidden: widths of the hidden layers.
        dropout: dropout after every hidden ReLU.
        lr: Adam's learning rate.
        weight_decay: Adam's weight decay.
    """

    def __init__(self, inputs: int, hidden: Sequence[int] = (64, 64), dropout: float = 0.0, lr: float = 1e-3,
                 weight_decay: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = inputs
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


@dataclass(frozen=True)
class TuningTask:
    """A model to tune, its data split and its search space.

    Args:
        name: the task's key in :data:`TUNING_TASKS`.
        description: one line for reports.
        space: the search space (:func:`ganno_lightning.tuning.space.parse_space` input); every name
            but ``batch_size`` is an argument of ``module``.
        load: returns the train / validation / test tensors.
        module: ``module(**values) -> LightningModule`` logging ``val_loss`` (the tuned metric, and
            on the test split the score).
    """

    name: str
    description: str
    space: Mapping[str, Mapping[str, Any]]
    load: Callable[[], DigitsSplit] = field(repr=False)
    module: Callable[..., pl.LightningModule] = field(repr=False)

    def split(self) -> DigitsSplit:
        """The task's data, loaded once per process."""
        return _cached_split(self.name)

    def build_module(self, **values: Any) -> pl.LightningModule:
        """The model for hyperparameter ``values`` (``batch_size`` is the loader's, and ignored here)."""
        return self.module(**{k: v for k, v in values.items() if k != "batch_size"})


def _digits_mlp(lr: float, weight_decay: float, dropout: float) -> DigitsClassifier:
    return DigitsClassifier(hidden=(64, 64), dropout=float(dropout), optimizer="adam", lr=float(lr),
                            weight_decay=float(weight_decay))


def _diabetes_mlp(lr: float, weight_decay: float, dropout: float) -> MLPRegressor:
    return MLPRegressor(10, hidden=(64, 64), dropout=float(dropout), lr=float(lr), weight_decay=float(weight_decay))


TUNING_TASKS: dict[str, TuningTask] = {
    "digits": TuningTask(
        "digits", "digits MLP 64-64 (Adam), 1079 train / 359 val / 359 test images, cross-entropy",
        {**_SPACE, "batch_size": {"choices": [16, 32, 64, 128]}},
        functools.partial(load_digits_split, 359, 0, test_size=359, standardize="pixel"), _digits_mlp),
    "digits300": TuningTask(
        "digits300", "digits MLP 64-64 (Adam), 300 train / 359 val / 359 test images, cross-entropy",
        {**_SPACE, "batch_size": {"choices": [8, 16, 32, 64]}},
        functools.partial(load_digits_split, 359, 0, test_size=359, train_subset=300, standardize="pixel"),
        _digits_mlp),
    "diabetes": TuningTask(
        "diabetes", "diabetes regression MLP 64-64 (Adam), 266 train / 88 val / 88 test rows, MSE (standardised)",
        {**_SPACE, "batch_size": {"choices": [8, 16, 32, 64]}}, load_diabetes_split, _diabetes_mlp),
}


@functools.lru_cache(maxsize=None)
def _cached_split(name: str) -> DigitsSplit:
    return TUNING_TASKS[name].load()
