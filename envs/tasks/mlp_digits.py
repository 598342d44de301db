"""MLP classifier on scikit-learn's bundled 8x8 digits."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ganno_lightning.envs.tasks.base import ZooFamily, ZooModule, check_batch_size, mlp
from ganno_lightning.envs.tasks.data import DIGITS_TRAIN_SIZE, digits
from ganno_lightning.envs.tasks.ranges import TaskRanges
from ganno_lightning.examples.digits import DIGITS_CLASSES, DIGITS_SIDE


class DigitsMLP(ZooModule):
    """``depth`` hidden ReLU layers of ``width`` units and a 10-way linear head, cross-entropy loss.

    Args:
        depth: Hidden layers (agents: ``depth + 1``).
        width: Hidden units per layer.
        lr: Initial learning rate.
        batch_size: Training batch size.
        optimizer: A name from :data:`~ganno_lightning.envs.tasks.ranges.OPTIMIZERS`.
        seed: Seeds the training data order.

    Example::

        >>> model = DigitsMLP(depth=2, width=32, lr=1e-3, batch_size=64, optimizer="adam", seed=0)
        >>> model.loss(next(iter(model.train_dataloader()))).item() > 0
        True
    """

    def __init__(self, depth: int, width: int, lr: float, batch_size: int, optimizer: str, seed: int) -> None:
        super().__init__(lr, batch_size, optimizer, seed, digits)
        self.save_hyperparameters()
        self.net = mlp(DIGITS_SIDE * DIGITS_SIDE, depth, width, DIGITS_CLASSES, nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, batch: list[torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)


class MLPDigitsFamily(ZooFamily):
    """MLPs on digits. Held-out tasks are deeper, wider, with wider LR and batch-size ranges.

    Defaults: train depth [1, 3], width [16, 64]; held-out depth [4, 6], width [64, 256].
    Agents per task: ``depth + 1``.

    Args:
        train: Meta-training ranges (``TaskRanges``, mapping or omegaconf section over the default).
        heldout: Held-out ranges, same forms.
        prefix: Dotted config path for error messages.

    Raises:
        ValueError: For an unknown key, an invalid range, or a batch size above the 1438 training
            images, naming the field.

    Example::

        >>> family = MLPDigitsFamily(train={"depth": [2, 2]})
        >>> _ = torch.manual_seed(0)  # weights come from torch's global RNG
        >>> task = family.sample(torch.Generator().manual_seed(1))
        >>> task.info["depth"], task.info["num_layers"], family.max_layers("heldout")
        (2, 3, 7)
    """

    name = "mlp_digits"
    default_train = TaskRanges(depth=(1, 3), width=(16, 64), lr=(3e-4, 3e-2), batch_size=(32, 128))
    default_heldout = TaskRanges(depth=(4, 6), width=(64, 256), lr=(1e-4, 1e-1), batch_size=(16, 256))

    def check_ranges(self, ranges: TaskRanges, prefix: str) -> None:
        check_batch_size(ranges, prefix, DIGITS_TRAIN_SIZE)

    def build(self, hp: dict[str, Any], seed: int) -> DigitsMLP:
        return DigitsMLP(hp["depth"], hp["width"], hp["lr"], hp["batch_size"], hp["optimizer"], seed)
