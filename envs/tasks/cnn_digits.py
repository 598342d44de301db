"""Small CNN on scikit-learn's bundled digits, as 1x8x8 images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ganno_lightning.envs.tasks.base import ZooFamily, ZooModule, check_batch_size
from ganno_lightning.envs.tasks.data import DIGITS_TRAIN_SIZE, digits
from ganno_lightning.envs.tasks.ranges import Choices, Rule, TaskRanges
from ganno_lightning.examples.digits import DIGITS_CLASSES, DIGITS_SIDE

#: Conv layers with stride 2 (8 -> 4 -> 2); deeper layers keep the 2x2 map, so any depth fits the
#: 8x8 input and extra layers stay cheap. Strided convs, not max-pooling: on CPU, max-pooling such
#: small maps cost more than all the convolutions together.
STRIDED_LAYERS = 2


@dataclass(frozen=True)
class CNNRanges(TaskRanges):
    """:class:`TaskRanges` plus whether conv layers are followed by BatchNorm.

    Attributes:
        batch_norm: Choices from ``[false, true]``; one is sampled per task. BatchNorm layers are
            agents too (kind ``norm``), so ``true`` doubles the conv agents.

    Example::

        >>> CNNRanges(batch_norm=[True]).validate("family.train").batch_norm
        (True,)
    """

    RULES: ClassVar[dict[str, Rule]] = {**TaskRanges.RULES, "batch_norm": Choices((False, True), key="batch_norm")}

    batch_norm: Sequence[bool] = (False, True)


class DigitsCNN(ZooModule):
    """``depth`` 3x3 conv layers (``width`` channels, ReLU, optional BatchNorm), global average pool
    and a 10-way linear head; cross-entropy loss. The first two conv layers have stride 2.

    Args:
        depth: Conv layers (agents: ``depth + 1``, or ``2 * depth + 1`` with BatchNorm).
        width: Channels per conv layer.
        batch_norm: BatchNorm after each conv (the conv then has no bias: BatchNorm's shift replaces it).
        lr: Initial learning rate.
        batch_size: Training batch size.
        optimizer: A name from :data:`~ganno_lightning.envs.tasks.ranges.OPTIMIZERS`.
        seed: Seeds the training data order.

    Example::

        >>> model = DigitsCNN(2, 8, True, lr=1e-3, batch_size=32, optimizer="sgd", seed=0)
        >>> model(torch.zeros(5, 64)).shape
        torch.Size([5, 10])
    """

    def __init__(
        self, depth: int, width: int, batch_norm: bool, lr: float, batch_size: int, optimizer: str, seed: int
    ) -> None:
        super().__init__(lr, batch_size, optimizer, seed, digits)
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        for i in range(depth):
            stride = 2 if i < STRIDED_LAYERS else 1
            layers.append(nn.Conv2d(1 if i == 0 else width, width, 3, stride, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU())
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, DIGITS_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Data is stored flat (shared with the MLP family); the view costs nothing.
        h = self.features(x.view(-1, 1, DIGITS_SIDE, DIGITS_SIDE))
        return self.head(h.mean(dim=(2, 3)))

    def loss(self, batch: list[torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)


class CNNDigitsFamily(ZooFamily):
    """CNNs on digits. Held-out tasks are deeper and wider, with wider LR and batch-size ranges.

    Defaults: train depth [1, 3], width [8, 24]; held-out depth [4, 5], width [24, 48]; BatchNorm
    sampled in both. Agents per task: ``depth + 1``, or ``2 * depth + 1`` with BatchNorm.

    Args:
        train: Meta-training ranges (``CNNRanges``, mapping or omegaconf section over the default).
        heldout: Held-out ranges, same forms.
        prefix: Dotted config path for error messages.

    Raises:
        ValueError: For an unknown key, an invalid range, or a batch size above the 1438 training
            images, naming the field.

    Example::

        >>> family = CNNDigitsFamily(train={"batch_norm": [False]})
        >>> family.max_layers("train"), family.max_layers("heldout")
        (4, 11)
    """

    lr_cell_fields = ("batch_norm",)

    name = "cnn_digits"
    ranges_type = CNNRanges
    default_train = CNNRanges(depth=(1, 3), width=(8, 24), lr=(3e-4, 3e-2), batch_size=(32, 128))
    default_heldout = CNNRanges(depth=(4, 5), width=(24, 48), lr=(1e-4, 1e-1), batch_size=(16, 256))

    def check_ranges(self, ranges: TaskRanges, prefix: str) -> None:
        check_batch_size(ranges, prefix, DIGITS_TRAIN_SIZE)

    def build(self, hp: dict[str, Any], seed: int) -> DigitsCNN:
        return DigitsCNN(
            hp["depth"], hp["width"], hp["batch_norm"], hp["lr"], hp["batch_size"], hp["optimizer"], seed
        )

    def largest(self, ranges: TaskRanges) -> dict[str, Any]:
        return {"depth": ranges.depth[1], "batch_norm": True in ranges.batch_norm}
