"""Small families for the environment tests (importable by ParallelEnv workers)."""

import os

import lightning as L
import torch
from helpers import TinyRegressor, regression_data
from torch import nn
from torch.utils.data import DataLoader

from ganno_lightning.envs.task import TaskFamily, TrainingTask


class DepthFamily(TaskFamily):
    """TinyRegressor-like MLPs of 1 to 3 hidden layers: tasks of different depth."""

    name = "depth"

    def sample(self, generator, split="train"):
        depth = int(torch.randint(1, 4, (1,), generator=generator))
        module = TinyRegressor(optimizer="adam", lr=0.01)
        layers = [nn.Linear(8, 16), nn.Tanh()]
        for _ in range(depth - 1):
            layers += [nn.Linear(16, 16), nn.Tanh()]
        module.net = nn.Sequential(*layers, nn.Linear(16, 1))
        return TrainingTask(module, name=f"depth{depth}", info={"depth": depth})

    def max_layers(self, split="train"):
        return 4


class Exploding(TinyRegressor):
    """A learning rate so large that the loss diverges within a few steps."""

    def __init__(self):
        super().__init__(optimizer="sgd", lr=50.0)


class RaisesInTrainingStep(TinyRegressor):
    def training_step(self, batch, batch_idx):
        raise KeyError("label column missing")


class RaisesLater(TinyRegressor):
    """Fine for the first steps, then raises (e.g. a numerical check in user code)."""

    def training_step(self, batch, batch_idx):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls > 6:
            raise FloatingPointError("loss check failed")
        return super().training_step(batch, batch_idx)


class DiesLater(TinyRegressor):
    """Kills its own process after a few steps, as an OOM-killed worker would die."""

    def training_step(self, batch, batch_idx):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls > 6:
            os._exit(3)
        return super().training_step(batch, batch_idx)


class EmptyData(TinyRegressor):
    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(0, 8), torch.zeros(0, 1)))


class RegressionStream(torch.utils.data.IterableDataset):
    """`regression_data` as a stream: an iterable-style dataset with no `__len__`."""

    def __init__(self, n=64):
        self.n = n

    def __iter__(self):
        yield from regression_data(self.n)


class StreamedRegressor(TinyRegressor):
    """TinyRegressor reading the same samples from a `RegressionStream`: epochs end by exhaustion."""

    def train_dataloader(self):
        return DataLoader(RegressionStream(), batch_size=self.batch_size)


class EmptyStream(TinyRegressor):
    def train_dataloader(self):
        return DataLoader(RegressionStream(n=0), batch_size=self.batch_size)


class Frozen(TinyRegressor):
    def __init__(self):
        super().__init__()
        self.net.requires_grad_(False)
        self.dummy = nn.Parameter(torch.zeros(1), requires_grad=False)

    def configure_optimizers(self):
        return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)


class DropsThenSpikes(TinyRegressor):
    """Its loss is 1.0 for 8 steps, 0.1 for 8 and 0.5 after: progress, then a 5x spike below the start."""

    def training_step(self, batch, batch_idx):
        self.calls = getattr(self, "calls", 0) + 1
        level = 1.0 if self.calls <= 8 else 0.1 if self.calls <= 16 else 0.5
        return super().training_step(batch, batch_idx) * 0.0 + level


def make_regressor(lr=0.01, hidden=16):
    """A top-level factory: what `SingleTask("envtasks:make_regressor", lr=...)` imports in each worker."""
    return TinyRegressor(optimizer="adam", lr=lr, hidden=hidden)


def make_regressor_and_data():
    return make_regressor(), RegressionData()


class RegressionData(L.LightningDataModule):
    """Serves `regression_data` in order; counts the loaders it made, to show the env used it."""

    def __init__(self, batch_size=8):
        super().__init__()
        self.batch_size = batch_size
        self.loaders_made = 0

    def setup(self, stage):
        self.data = regression_data(seed=1)

    def train_dataloader(self):
        self.loaders_made += 1
        return DataLoader(self.data, batch_size=self.batch_size)
