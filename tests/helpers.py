"""Small models, data and agents shared by the tests."""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ganno_lightning import (
    FEATURE_NAMES,
    GANNOAgent,
    LayerPolicyNet,
    ObservationNormalizer,
)

UP, DOWN = 6, 0  # indices of x2 and x0.5 in the default action set


def regression_data(n: int = 64, dim: int = 8, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    y = (x @ torch.randn(dim, 1, generator=g)).tanh()
    return TensorDataset(x, y)


class TinyRegressor(L.LightningModule):
    """Two linear layers; optimizer, groups and scheduler configurable for each test."""

    def __init__(self, optimizer: str = "sgd", lr: float = 0.05, groups: bool = False, scheduler: str | None = None,
                 dim: int = 8, hidden: int = 16, batch_size: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.optimizer, self.lr, self.groups, self.scheduler = optimizer, lr, groups, scheduler
        self.batch_size = batch_size
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        if self.groups:
            params = [{"params": self.net[0].parameters(), "lr": self.lr, "weight_decay": 0.01, "tag": "body"},
                      {"params": self.net[2].parameters(), "lr": self.lr / 10, "tag": "head"}]
        else:
            params = self.parameters()
        if self.optimizer == "sgd":
            opt = RecordingSGD(params, lr=self.lr, momentum=0.9)
        else:
            opt = torch.optim.Adam(params, lr=self.lr)
        if self.scheduler == "lambda":
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.9**step)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if self.scheduler == "epoch":
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)}
        return opt

    def train_dataloader(self):
        return DataLoader(regression_data(), batch_size=self.batch_size)



class NoisyRegressor(TinyRegressor):
    """TinyRegressor with BatchNorm, dropout and a shuffling loader: everything a probe could perturb."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def train_dataloader(self):
        return DataLoader(regression_data(), batch_size=self.batch_size, shuffle=True)


def identity_agent(interval: int = 4, **kwargs) -> GANNOAgent:
    """An untrained agent initialised as the identity policy: it keeps every LR under "mean" and "mode"."""
    return GANNOAgent.create(hidden_sizes=(8,), interval=interval, identity_prob=0.8, seed=0, **kwargs)


class ValidatedRegressor(TinyRegressor):
    """TinyRegressor that also validates and logs `val_loss`."""

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def val_dataloader(self):
        return DataLoader(regression_data(32, seed=1), batch_size=16)


class NaNLossWindow(TinyRegressor):
    """Reports a NaN loss on optimizer steps ``first <= step < last`` (on every rank, or on ``rank`` only);
    its gradients stay finite."""

    def __init__(self, first: int, last: int, rank: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.first, self.last, self.rank = first, last, rank

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        nan = self.first <= self.trainer.global_step < self.last and self.rank in (None, self.global_rank)
        return loss + float("nan") if nan else loss


class RecordingSGD(torch.optim.SGD):
    """SGD that records the LR of every param group each time it actually updates."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen_lrs: list[list[float]] = []

    def step(self, closure=None):
        loss = super().step(closure)
        self.seen_lrs.append([float(g["lr"]) for g in self.param_groups])
        return loss


def depth_agent(interval: int = 4, first: int = UP, last: int = DOWN, **kwargs) -> GANNOAgent:
    """A fixed policy: the first layer always takes ``first``, the last layer ``last``.

    A linear actor whose logits depend only on the `depth` feature (0 for the first layer, 1 for
    the last); the normaliser is the identity. The logit gaps (>= 200) make the softmax exactly
    one-hot in float32, so every exploration type takes the same action.
    """
    actor = LayerPolicyNet(len(FEATURE_NAMES), 7, hidden_sizes=())
    depth = FEATURE_NAMES.index("depth")
    with torch.no_grad():
        linear = actor.mlp[0]
        linear.weight.zero_()
        linear.bias.fill_(-1000.0)
        linear.bias[first] = 100.0
        linear.weight[first, depth] = -200.0
        linear.bias[last] = -100.0
        linear.weight[last, depth] = 200.0
    return GANNOAgent(actor, ObservationNormalizer(len(FEATURE_NAMES), clip=1e9), interval=interval, **kwargs)


class RecordingAgent(GANNOAgent):
    """Any agent, remembering every observation it was shown."""

    def __init__(self, base: GANNOAgent):
        super().__init__(base.actor, base.normalizer, action_multipliers=base.action_multipliers,
                         interval=base.interval, scale_bounds=base.scale_bounds, decision_steps=base.decision_steps,
                         prior=base.prior, feature_names=base.feature_names)
        self.observations: list[torch.Tensor] = []

    def decide(self, observation, *args, **kwargs):
        self.observations.append(observation.clone())
        return super().decide(observation, *args, **kwargs)


def trainer(**kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, max_epochs=2)
    defaults.update(kwargs)
    return L.Trainer(**defaults)


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@contextlib.contextmanager
def benchmark_module(name: str) -> Iterator[ModuleType]:
    """``benchmarks/<name>.py`` imported as when it runs as a script: its folder on the path, for its sibling imports."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


GANNO_SMOKE = Path(__file__).resolve().parents[1] / "configs" / "ganno_smoke.yaml"


def smoke_recipe_around_best(directory: Path) -> Path:
    """The smoke meta-training recipe with its LRs drawn around their cells' best (which it places), in ``directory``:
    what the diagnostics of a privileged teacher need."""
    import yaml

    smoke = yaml.safe_load(GANNO_SMOKE.read_text())
    recipe = Path(directory) / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**smoke, "family": {**smoke["family"], "lr_sampling": "around_best"}}))
    return recipe


def smoke_task_pool(directory: Path, recipe: Path, tasks: int, first_seed: int = 3) -> Path:
    """A task pool of ``recipe`` over seeds ``first_seed``.., each task tuned on the grid x1/4, x1, x4, in ``directory``."""
    from ganno_lightning.envs import build_task_pool

    pool = Path(directory) / "pool.json"
    build_task_pool.build(build_task_pool.load_config({}, [
        f"recipe={recipe}", f"tasks={tasks}", f"first_seed={first_seed}", "grid=[0.25,1.0,4.0]",
        "limits=[0.015625,64.0]", "workers=1", f"out={pool}", f"log={Path(directory) / 'replays.jsonl'}"]))
    return pool


def read_metrics(out_dir: Path | str) -> list[dict[str, str]]:
    """The rows of a meta-training run's ``metrics.csv``."""
    import csv

    with open(Path(out_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))
