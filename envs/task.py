"""What the environment trains: a task (one LightningModule instance) and a task family."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import lightning as L
import torch

from ganno_lightning.imports import import_callable

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


#: What builds a module or datamodule: an import string ``"package.module:attr"`` or a callable.
Factory = str | Callable[..., Any]


class SingleTask(TaskFamily):
    """One LightningModule, built afresh (new weights) for every episode: your own model as a family.

    Each episode calls ``factory(**kwargs)``; the module trains with its own ``training_step``,
    ``configure_optimizers`` (schedulers included) and ``train_dataloader``, or with the datamodule's.

    A ``SingleTask`` pickles, so the environment runs in ``ParallelEnv`` workers and process pools,
    when ``factory`` and ``datamodule`` are import strings (``"my_pkg.models:MyModule"``, resolved
    in each process) or top-level classes or functions, and ``kwargs`` are plain values. A lambda
    or a function defined inside another one pickles with cloudpickle only, which TorchRL's
    ``ParallelEnv`` uses, but not with the standard ``pickle``.

    Args:
        factory: Builds the LightningModule: an import string ``"package.module:attr"`` naming a
            class or function, or the class or function itself. It may return ``(module, datamodule)``.
        datamodule: Optional: builds the LightningDataModule that serves the data (same forms);
            called as ``datamodule(**datamodule_kwargs)`` for every episode.
        datamodule_kwargs: Keyword arguments of ``datamodule``.
        max_layers: Upper bound on the module's layers (agents); ``None`` builds one module and counts.
        name: For logs and error messages.
        **kwargs: Keyword arguments of ``factory``.

    Raises:
        ValueError: If an import string is malformed or cannot be imported (naming what failed).
        TypeError: If ``factory`` or ``datamodule`` is neither callable nor an import string.

    Example::

        import functools
        from torchrl.envs import ParallelEnv
        from ganno_lightning.envs import EnvConfig, LayerwiseLREnv, SingleTask

        family = SingleTask("my_pkg.models:MyModule", lr=1e-3)   # MyModule(lr=1e-3) every episode
        config = EnvConfig(horizon=200, interval=25)
        env = ParallelEnv(2, [functools.partial(LayerwiseLREnv, family, config, seed=i) for i in range(2)])
        rollout = env.rollout(3)
    """

    def __init__(
        self,
        factory: Factory,
        *,
        datamodule: Factory | None = None,
        datamodule_kwargs: Mapping[str, Any] | None = None,
        max_layers: int | None = None,
        name: str = "single",
        **kwargs: Any,
    ) -> None:
        import_callable(factory, argument="factory")  # a bad import string fails here, not in a worker
        if datamodule is not None:
            import_callable(datamodule, argument="datamodule")
        elif datamodule_kwargs:
            raise ValueError(f"`datamodule_kwargs` {dict(datamodule_kwargs)!r} given without `datamodule`; "
                             "pass `datamodule=` too, or the arguments to the module as keyword arguments.")
        self.factory = factory
        self.kwargs = dict(kwargs)
        self.datamodule = datamodule
        self.datamodule_kwargs = dict(datamodule_kwargs or {})
        self.name = name
        self._max_layers = max_layers

    def _build(self) -> tuple[L.LightningModule, L.LightningDataModule | None]:
        made = import_callable(self.factory, argument="factory")(**self.kwargs)
        module, datamodule = made if isinstance(made, tuple) else (made, None)
        if self.datamodule is not None:
            if datamodule is not None:
                raise ValueError(f"`factory` {self.factory!r} returned a datamodule and `datamodule` is set too; "
                                 "pass only one of them.")
            datamodule = import_callable(self.datamodule, argument="datamodule")(**self.datamodule_kwargs)
        module.configure_model()  # as Trainer.fit does first: layers a module builds there exist from here on
        return module, datamodule

    def sample(self, generator: torch.Generator, split: Split = "train") -> TrainingTask:
        module, datamodule = self._build()
        return TrainingTask(module=module, datamodule=datamodule, name=self.name)

    def max_layers(self, split: Split = "train") -> int:
        if self._max_layers is None:
            from ganno_lightning.layerwise.partition import LayerPartition

            self._max_layers = len(LayerPartition.from_module(self._build()[0]))
        return self._max_layers

    def __repr__(self) -> str:
        return f"SingleTask({self.factory!r}, kwargs={self.kwargs}, datamodule={self.datamodule!r}, name={self.name!r})"


class MixtureFamily(TaskFamily):
    """Samples one of several families uniformly, then a task from it (meta-training on a zoo).

    Args:
        families: The member families.

    Example::

        from ganno_lightning.envs.tasks import make_family
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
