"""What the environment trains: a task (one LightningModule instance) and a task family."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

import lightning as L
import torch

Split = Literal["train", "heldout"]
SPLITS: tuple[str, ...] = ("train", "heldout")


@dataclass
class TrainingTask:
    """One training run's worth of work: a freshly initialised LightningModule and its data.

    The module is used as its author wrote it: its ``training_step``, ``configure_optimizers`` and
    ``train_dataloader`` (or those of ``datamodule``).

    Attributes:
        module: The LightningModule, with fresh weights.
        datamodule: Optional LightningDataModule providing ``train_dataloader``.
        name: Short description for logs, e.g. ``"mlp_digits(depth=3, width=64, adam, lr=3e-3)"``.
        info: Plain-typed facts about the sample (depth, width, lr, ...), for logs and evaluation.
    """

    module: L.LightningModule
    datamodule: L.LightningDataModule | None = None
    name: str = "task"
    info: dict[str, Any] = field(default_factory=dict)


class TaskFamily(ABC):
    """A distribution over training tasks, with a meta-training split and a held-out split.

    ``sample`` draws every random choice (architecture, width, depth, learning rate, batch size,
    optimizer, data) from ``generator``; the environment seeds torch's global RNG before calling it,
    so weight initialisation is reproducible too.
    """

    name: str = "family"

    @abstractmethod
    def sample(self, generator: torch.Generator, split: Split = "train") -> TrainingTask:
        """Draw one task from the ``split`` ranges."""

    @abstractmethod
    def max_layers(self, split: Split = "train") -> int:
        """An upper bound on the number of agents (layers) of any task of ``split``."""


class SingleTask(TaskFamily):
    """The simplest family: the same LightningModule class, re-instantiated with fresh weights.

    Args:
        factory: Builds the module (and optionally returns ``(module, datamodule)``).
        max_layers: Upper bound on its layers; ``None`` measures one instance.
        name: For logs.

    Example::

        family = SingleTask(lambda: MyModule(lr=1e-3))
    """

    def __init__(self, factory, max_layers: int | None = None, name: str = "single") -> None:
        self.factory = factory
        self.name = name
        self._max_layers = max_layers

    def sample(self, generator: torch.Generator, split: Split = "train") -> TrainingTask:
        made = self.factory()
        module, datamodule = made if isinstance(made, tuple) else (made, None)
        return TrainingTask(module=module, datamodule=datamodule, name=self.name)

    def max_layers(self, split: Split = "train") -> int:
        if self._max_layers is None:
            from ganno_lightning.layerwise.partition import LayerPartition

            made = self.factory()
            module = made[0] if isinstance(made, tuple) else made
            self._max_layers = len(LayerPartition.from_module(module))
        return self._max_layers


class MixtureFamily(TaskFamily):
    """Samples one of several families uniformly, then a task from it (meta-training on a zoo).

    Args:
        families: The member families.

    Example::

        from envs.tasks import make_family
        family = MixtureFamily([make_family("mlp_digits"), make_family("teacher_student")])
    """

    name = "mixture"

    def __init__(self, families: list[TaskFamily]) -> None:
        if not families:
            raise ValueError("`family.members` must list at least one family.")
        self.families = list(families)

    def sample(self, generator: torch.Generator, split: Split = "train") -> TrainingTask:
        index = int(torch.randint(0, len(self.families), (1,), generator=generator))
        return self.families[index].sample(generator, split)

    def max_layers(self, split: Split = "train") -> int:
        return max(family.max_layers(split) for family in self.families)
