"""MLP regression on generated data: a student MLP learns a random, fixed teacher MLP."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ganno_lightning.envs.tasks.base import ZooFamily, ZooModule, check_batch_size, mlp
from ganno_lightning.envs.tasks.data import TrainValData
from ganno_lightning.envs.tasks.ranges import FloatRange, Rule, TaskRanges

INPUT_DIM = 16
OUTPUT_DIM = 4
TEACHER_DEPTH = 2
TEACHER_WIDTH = 32
#: Weight variance gain of the teacher (``gain / fan_in``): tanh units saturate enough that a linear
#: fit leaves about a third of the target variance, so depth and width matter to the student.
TEACHER_GAIN = 4.0
NUM_TRAIN = 2048
NUM_VAL = 512


@dataclass(frozen=True)
class TeacherStudentRanges(TaskRanges):
    """:class:`TaskRanges` plus the label noise.

    Attributes:
        noise: ``[low, high]`` standard deviation of Gaussian noise added to the training targets,
            relative to the targets' unit standard deviation; sampled uniformly.

    Example::

        >>> TeacherStudentRanges(noise=[0.0, 0.2]).validate("family.train").noise
        (0.0, 0.2)
    """

    RULES: ClassVar[dict[str, Rule]] = {**TaskRanges.RULES, "noise": FloatRange(minimum=0.0)}

    noise: Sequence[float] = (0.0, 0.1)


@functools.lru_cache(maxsize=16)
def teacher_data(seed: int, noise: float) -> TrainValData:
    """Inputs ``x ~ N(0, I)`` and targets from a random tanh teacher MLP, all drawn from ``seed``.

    Targets are standardised per output on the training inputs, so a loss of 1 is "predict the
    mean" whatever the teacher. Training targets carry ``noise``; validation targets are clean, so
    ``val_loss`` measures how well the student learned the teacher itself. Cached: the environment
    may rebuild a task from the same seed.

    Example::

        >>> d = teacher_data(0, 0.1)
        >>> d.x_train.shape, d.y_train.shape, round(float(d.y_val.var()), 1)
        (torch.Size([2048, 16]), torch.Size([2048, 4]), 1.0)
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(NUM_TRAIN + NUM_VAL, INPUT_DIM, generator=g)
    h = x
    for i in range(TEACHER_DEPTH + 1):
        fan_in = h.shape[1]
        out = OUTPUT_DIM if i == TEACHER_DEPTH else TEACHER_WIDTH
        h = h @ (torch.randn(fan_in, out, generator=g) * (TEACHER_GAIN / fan_in) ** 0.5)
        if i < TEACHER_DEPTH:
            h = torch.tanh(h)
    y = (h - h[:NUM_TRAIN].mean(dim=0)) / h[:NUM_TRAIN].std(dim=0)
    y_train = y[:NUM_TRAIN] + noise * torch.randn(NUM_TRAIN, OUTPUT_DIM, generator=g)
    return TrainValData(x[:NUM_TRAIN].contiguous(), y_train, x[NUM_TRAIN:].contiguous(), y[NUM_TRAIN:].contiguous())


class StudentMLP(ZooModule):
    """``depth`` hidden ReLU layers of ``width`` units fitting a teacher's outputs; MSE loss.

    Args:
        depth: Hidden layers (agents: ``depth + 1``).
        width: Hidden units per layer.
        noise: Training-target noise of the teacher data.
        lr: Initial learning rate.
        batch_size: Training batch size.
        optimizer: A name from :data:`~ganno_lightning.envs.tasks.ranges.OPTIMIZERS`.
        seed: Seeds the teacher, the inputs, the noise and the data order.

    Example::

        >>> model = StudentMLP(1, 16, 0.0, lr=1e-3, batch_size=32, optimizer="adam", seed=0)
        >>> model(torch.zeros(3, 16)).shape
        torch.Size([3, 4])
    """

    def __init__(
        self, depth: int, width: int, noise: float, lr: float, batch_size: int, optimizer: str, seed: int
    ) -> None:
        super().__init__(lr, batch_size, optimizer, seed, functools.partial(teacher_data, seed, noise))
        self.save_hyperparameters()
        self.net = mlp(INPUT_DIM, depth, width, OUTPUT_DIM, nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, batch: list[torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)


class TeacherStudentFamily(ZooFamily):
    """Student MLPs regressing a per-task random teacher. Held-out tasks are deeper, wider, noisier.

    Defaults: train depth [1, 3], width [16, 64], noise [0, 0.1]; held-out depth [4, 6], width
    [64, 256], noise [0.1, 0.3]. Each task has its own teacher, drawn from its seed. Agents per
    task: ``depth + 1``.

    Args:
        train: Meta-training ranges (``TeacherStudentRanges``, mapping or omegaconf section over the
            default).
        heldout: Held-out ranges, same forms.
        prefix: Dotted config path for error messages.

    Raises:
        ValueError: For an unknown key, an invalid range, or a batch size above the 2048 training
            examples, naming the field.

    Example::

        >>> family = TeacherStudentFamily(heldout={"noise": [0.5, 1.0]})
        >>> task = family.sample(torch.Generator().manual_seed(0), "heldout")
        >>> 0.5 <= task.info["noise"] <= 1.0
        True
    """

    name = "teacher_student"
    ranges_type = TeacherStudentRanges
    default_train = TeacherStudentRanges(
        depth=(1, 3), width=(16, 64), lr=(3e-4, 3e-2), batch_size=(32, 128), noise=(0.0, 0.1)
    )
    default_heldout = TeacherStudentRanges(
        depth=(4, 6), width=(64, 256), lr=(1e-4, 1e-1), batch_size=(16, 256), noise=(0.1, 0.3)
    )

    def check_ranges(self, ranges: TaskRanges, prefix: str) -> None:
        check_batch_size(ranges, prefix, NUM_TRAIN)

    def build(self, hp: dict[str, Any], seed: int) -> StudentMLP:
        return StudentMLP(hp["depth"], hp["width"], hp["noise"], hp["lr"], hp["batch_size"], hp["optimizer"], seed)
