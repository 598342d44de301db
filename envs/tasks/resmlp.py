"""Residual MLPs with LayerNorm and dropout on tabular data: scikit-learn's bundled and generated sets.

Datasets (``TABULAR_DATASETS``), none downloaded:

- ``breast_cancer``, ``wine``: scikit-learn's bundled classification sets (2 and 3 classes).
- ``digits``: the zoo's 8x8 digits (:func:`ganno_lightning.envs.tasks.data.digits`), 10 classes.
- ``diabetes``: scikit-learn's bundled regression set.
- ``classification``, ``regression``: ``make_classification`` / ``make_regression`` drawn from
  the task's seed, so each task has its own problem.

Features are standardised with the training part's statistics; regression targets too, so an MSE
of 1 is "predict the mean".
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from ganno_lightning.envs.tasks.base import ZooFamily, ZooModule, check_batch_size
from ganno_lightning.envs.tasks.data import DIGITS_TRAIN_SIZE, TrainValData, digits
from ganno_lightning.envs.tasks.ranges import (
    OPTIMIZERS,
    Choices,
    FloatRange,
    Rule,
    TaskRanges,
)
from ganno_lightning.examples.digits import DIGITS_CLASSES, DIGITS_SIDE

#: Share of each tabular set held for validation (rounded down).
TABULAR_VAL_FRACTION = 0.2
#: Seeds the train/validation split of the bundled sets; part of their definition.
TABULAR_SPLIT_SEED = 0
#: Size of the generated sets.
GENERATED_SAMPLES = 1000
GENERATED_FEATURES = 20
GENERATED_INFORMATIVE = 10
GENERATED_CLASSES = 3
#: Noise of ``make_regression``'s targets, relative to their spread before standardisation (about 100).
GENERATED_REGRESSION_NOISE = 10.0


class TabularSpec(NamedTuple):
    """What a model needs to know of a dataset before loading it.

    Attributes:
        regression: MSE on standardised targets if true, cross-entropy over classes otherwise.
        num_features: Input features.
        num_outputs: Classes, or 1 for regression.
        num_train: Training examples (families bound the batch size by it without loading).
    """

    regression: bool
    num_features: int
    num_outputs: int
    num_train: int


def _train_size(num_examples: int) -> int:
    return num_examples - int(num_examples * TABULAR_VAL_FRACTION)


#: Dataset name -> its spec; the names a ``datasets`` range may list. Checked against the data at load.
TABULAR_DATASETS: dict[str, TabularSpec] = {
    "breast_cancer": TabularSpec(False, 30, 2, _train_size(569)),
    "wine": TabularSpec(False, 13, 3, _train_size(178)),
    "digits": TabularSpec(False, DIGITS_SIDE * DIGITS_SIDE, DIGITS_CLASSES, DIGITS_TRAIN_SIZE),
    "diabetes": TabularSpec(True, 10, 1, _train_size(442)),
    "classification": TabularSpec(False, GENERATED_FEATURES, GENERATED_CLASSES, _train_size(GENERATED_SAMPLES)),
    "regression": TabularSpec(True, GENERATED_FEATURES, 1, _train_size(GENERATED_SAMPLES)),
}
#: Sets drawn from the task's seed (the others ignore it and are shared by every task).
GENERATED_DATASETS = ("classification", "regression")


@dataclass(frozen=True)
class ResMLPRanges(TaskRanges):
    """:class:`TaskRanges` plus the datasets to draw from and the dropout rate.

    Attributes:
        datasets: Names from :data:`TABULAR_DATASETS`; one is sampled per task.
        dropout: ``[low, high]`` dropout probability of the residual branches, sampled uniformly;
            ``high`` below 1.

    Example::

        >>> ResMLPRanges(dropout=[0.0, 1.0]).validate("family.train")
        Traceback (most recent call last):
        ...
        ValueError: `family.train.dropout` must stay below 1 (a branch that always drops learns nothing), ...
    """

    RULES: ClassVar[dict[str, Rule]] = {
        **TaskRanges.RULES,
        "datasets": Choices(tuple(TABULAR_DATASETS), key="dataset"),
        "dropout": FloatRange(minimum=0.0),
    }

    datasets: Sequence[str] = tuple(TABULAR_DATASETS)
    dropout: Sequence[float] = (0.0, 0.2)

    def _check_consistency(self, prefix: str) -> None:
        if self.dropout[1] >= 1.0:
            raise ValueError(
                f"`{prefix}.dropout` must stay below 1 (a branch that always drops learns nothing), got "
                f"[{self.dropout[0]}, {self.dropout[1]}]. E.g. [0.0, 0.2]."
            )


def _standardise(x: torch.Tensor, num_train: int) -> torch.Tensor:
    """``x`` centred and scaled per column by its first ``num_train`` rows (the training part)."""
    train = x[:num_train]
    return (x - train.mean(dim=0)) / train.std(dim=0).clamp_min(1e-6)


@functools.lru_cache(maxsize=16)
def tabular_data(name: str, seed: int) -> TrainValData:
    """Dataset ``name``, split 80/20, features (and regression targets) standardised on the training part.

    Bundled sets are split by :data:`TABULAR_SPLIT_SEED` and ignore ``seed`` (callers pass 0, so
    one copy serves every task); generated sets are drawn and split from ``seed``. Inputs are
    float32; targets are int64 classes or ``(n, 1)`` float32 values.

    Raises:
        ValueError: For an unknown ``name``.
        RuntimeError: If a bundled set's shape no longer matches :data:`TABULAR_DATASETS`.

    Example::

        >>> d = tabular_data("wine", 0)
        >>> d.x_train.shape, d.y_train.dtype, round(float(d.x_train.std(dim=0).mean()), 3)
        (torch.Size([143, 13]), torch.int64, 1.0)
        >>> tabular_data("regression", 7).y_train.shape
        torch.Size([800, 1])
    """
    if name not in TABULAR_DATASETS:
        raise ValueError(f"`dataset` must be one of {list(TABULAR_DATASETS)}, got {name!r}.")
    spec = TABULAR_DATASETS[name]
    if name == "digits":
        return digits()
    # scikit-learn is slow to import; only tasks on these sets pay for it.
    from sklearn import datasets

    if name in GENERATED_DATASETS:
        common = dict(n_samples=GENERATED_SAMPLES, n_features=GENERATED_FEATURES,
                      n_informative=GENERATED_INFORMATIVE, random_state=seed)
        if name == "classification":
            x, y = datasets.make_classification(n_classes=GENERATED_CLASSES, **common)
        else:
            x, y = datasets.make_regression(noise=GENERATED_REGRESSION_NOISE, **common)
        split_seed = seed
    else:
        x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
        split_seed = TABULAR_SPLIT_SEED
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.shape[1] != spec.num_features or _train_size(len(x)) != spec.num_train:
        raise RuntimeError(
            f"scikit-learn's {name} changed: {tuple(x.shape)} examples x features, expected "
            f"{spec.num_features} features and {spec.num_train} training examples."
        )
    # Training part first, as `_standardise` expects.
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
    x = _standardise(x[order], spec.num_train)
    if spec.regression:
        y = _standardise(torch.as_tensor(y, dtype=torch.float32)[order].unsqueeze(1), spec.num_train)
    else:
        y = torch.as_tensor(y, dtype=torch.long)[order]
    n = spec.num_train
    return TrainValData(x[:n].contiguous(), y[:n].contiguous(), x[n:].contiguous(), y[n:].contiguous())


class ResidualBlock(nn.Module):
    """Pre-norm residual MLP block: ``x + Dropout(Linear(GELU(Linear(LayerNorm(x)))))``.

    The hidden layer is twice as wide as the block (``2 * width``), as in transformer feed-forwards.

    Example::

        >>> ResidualBlock(8, 0.1)(torch.zeros(3, 8)).shape
        torch.Size([3, 8])
    """

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.hidden = nn.Linear(width, 2 * width)
        self.out = nn.Linear(2 * width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.out(nn.functional.gelu(self.hidden(self.norm(x)))))


class TabularResMLP(ZooModule):
    """A linear input layer, ``depth`` :class:`ResidualBlock` of ``width`` units, a final LayerNorm
    and a linear head; cross-entropy for classification sets, MSE for regression sets.

    Args:
        depth: Residual blocks (agents: ``3 * depth + 3``: the input layer, per block its LayerNorm
            and two linears, then the final LayerNorm and the head).
        width: Units of the residual stream.
        dataset: A name from :data:`TABULAR_DATASETS`.
        dropout: Dropout probability of the residual branches.
        lr: Initial learning rate.
        batch_size: Training batch size.
        optimizer: A name from :data:`~ganno_lightning.envs.tasks.ranges.OPTIMIZERS`.
        seed: Seeds the training data order and, for generated sets, the data itself.

    Example::

        >>> model = TabularResMLP(2, 16, "diabetes", 0.1, lr=1e-3, batch_size=32, optimizer="sgd_plain", seed=0)
        >>> model(torch.zeros(4, 10)).shape
        torch.Size([4, 1])
    """

    def __init__(
        self,
        depth: int,
        width: int,
        dataset: str,
        dropout: float,
        lr: float,
        batch_size: int,
        optimizer: str,
        seed: int,
    ) -> None:
        if dataset not in TABULAR_DATASETS:
            raise ValueError(f"`dataset` must be one of {list(TABULAR_DATASETS)}, got {dataset!r}.")
        data_seed = seed if dataset in GENERATED_DATASETS else 0
        super().__init__(lr, batch_size, optimizer, seed, functools.partial(tabular_data, dataset, data_seed))
        self.save_hyperparameters()
        self.spec = TABULAR_DATASETS[dataset]
        self.input = nn.Linear(self.spec.num_features, width)
        self.blocks = nn.ModuleList(ResidualBlock(width, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, self.spec.num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input(x)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))

    def loss(self, batch: list[torch.Tensor]) -> torch.Tensor:
        x, y = batch
        if self.spec.regression:
            return nn.functional.mse_loss(self(x), y)
        return nn.functional.cross_entropy(self(x), y)


class ResMLPFamily(ZooFamily):
    """Residual MLPs on tabular sets. Held-out tasks are deeper and wider, with more dropout.

    Defaults: train depth [1, 3], width [16, 64], dropout [0, 0.2], batch [16, 128]; held-out depth
    [4, 6], width [64, 192], dropout [0.1, 0.3], batch [16, 128]; the dataset drawn from all of
    :data:`TABULAR_DATASETS`, the optimizer from Adam, SGD with momentum, AdamW and plain SGD, in
    both. Agents per task: ``3 * depth + 3``.

    Args:
        train: Meta-training ranges (``ResMLPRanges``, mapping or omegaconf section over the default).
        heldout: Held-out ranges, same forms.
        prefix: Dotted config path for error messages.

    Raises:
        ValueError: For an unknown key, an invalid range, an unknown dataset, or a batch size above
            the training examples of the smallest listed dataset, naming the field.

    Example::

        >>> family = ResMLPFamily(train={"datasets": ["wine"], "optimizers": ["adamw"]})
        >>> task = family.sample(torch.Generator().manual_seed(0))
        >>> task.info["dataset"], task.info["optimizer"], family.max_layers("heldout")
        ('wine', 'adamw', 21)
        >>> ResMLPFamily(heldout={"batch_size": [16, 256]})
        Traceback (most recent call last):
        ...
        ValueError: `family.heldout.batch_size` must not exceed the 143 training examples, got [16, 256]. ...
    """

    lr_cell_fields = ("dataset",)

    name = "resmlp"
    ranges_type = ResMLPRanges
    default_train = ResMLPRanges(
        depth=(1, 3), width=(16, 64), lr=(3e-4, 3e-2), batch_size=(16, 128), optimizers=OPTIMIZERS,
        dropout=(0.0, 0.2),
    )
    default_heldout = ResMLPRanges(
        depth=(4, 6), width=(64, 192), lr=(1e-4, 1e-1), batch_size=(16, 128), optimizers=OPTIMIZERS,
        dropout=(0.1, 0.3),
    )

    def check_ranges(self, ranges: TaskRanges, prefix: str) -> None:
        # The smallest listed dataset bounds the batch: a batch above its training set is an empty epoch.
        check_batch_size(ranges, prefix, min(TABULAR_DATASETS[name].num_train for name in ranges.datasets))

    def build(self, hp: dict[str, Any], seed: int) -> TabularResMLP:
        return TabularResMLP(
            hp["depth"], hp["width"], hp["dataset"], hp["dropout"], hp["lr"], hp["batch_size"], hp["optimizer"], seed
        )
