"""Tiny Lightning tasks for the BOIL tests (a regression with ``val_loss``, with ways to fail on cue), and
small settings for the real core."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

#: Real-core options that keep the tests' acquisitions and fits cheap (the core's defaults: 4 local searches
#: from 512 raw samples, 20 L-BFGS iterations per GP fit).
FAST_CORE = {"num_restarts": 2, "raw_samples": 32, "fit_maxiter": 10}


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True).tanh())


class TinyTask(pl.LightningModule):
    """A 4-8-1 MLP; ``nan_from_epoch`` makes the training loss NaN from that epoch on; ``record`` appends
    every logged validation to a JSON-lines file; ``kill_at`` = (trial_marker_file, epoch) SIGKILLs the
    process at the start of that epoch, once (the marker file says it already happened)."""

    def __init__(self, lr: float = 0.05, hidden: int = 8, batch_size: int = 16, nan_from_epoch: int | None = None,
                 record: str | None = None, kill_at_epoch: int | None = None, kill_marker: str | None = None,
                 log_name: str = "val_loss") -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.lr, self.batch_size = lr, batch_size
        self.nan_from_epoch, self.record = nan_from_epoch, record
        self.kill_at_epoch, self.kill_marker, self.log_name = kill_at_epoch, kill_marker, log_name
        self._val: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        if self.nan_from_epoch is not None and self.current_epoch + 1 >= self.nan_from_epoch:
            loss = loss + float("nan")
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        if self.nan_from_epoch is not None and self.current_epoch + 1 >= self.nan_from_epoch:
            loss = loss + float("nan")
        self.log(self.log_name, loss)

    def on_validation_epoch_end(self):
        if self.record and not self.trainer.sanity_checking:
            value = float(self.trainer.callback_metrics.get(self.log_name, float("nan")))
            with open(self.record, "a") as f:
                f.write(json.dumps({"pid": os.getpid(), "step": self.global_step, "value": value,
                                    "lr": self.lr}) + "\n")

    def on_train_epoch_start(self):
        if self.kill_at_epoch is not None and self.current_epoch + 1 == self.kill_at_epoch:
            marker = Path(self.kill_marker)
            if not marker.exists():
                marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self):
        return DataLoader(_data(64, 0), batch_size=self.batch_size)

    def val_dataloader(self):
        return DataLoader(_data(32, 1), batch_size=32)


def tiny_task(lr: float = 0.05, hidden: int = 8, batch_size: int = 16, nan_from_epoch: int | None = None,
              record: str | None = None, kill_at_epoch: int | None = None, kill_marker: str | None = None,
              log_name: str = "val_loss") -> TinyTask:
    return TinyTask(lr, int(hidden), int(batch_size), nan_from_epoch, record, kill_at_epoch, kill_marker, log_name)


def tiny_task_with_data(lr: float = 0.05, seed: int = 0):
    """The (module, datamodule) form, taking a ``seed`` like ganno_lightning.examples.digits.digits_task."""
    module = TinyTask(lr)

    class Data(pl.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(_data(64, seed), batch_size=16)

        def val_dataloader(self):
            return DataLoader(_data(32, 1), batch_size=32)

    return module, Data()
