"""A PBT task for subprocess tests: a member that records every LR it uses and can kill itself.

Member ``m`` (``seed = m`` with the config's ``seed: 0``) logs the fixed score ``0.1 * (m + 1)``, so
member 0 is always the better one and every other member exploits at its first ready point. Each
optimizer step appends ``{"pid", "step", "lr"}`` to ``record_dir/lrs_<m>.jsonl``, the LR measured from
the update itself (plain SGD: ``lr = (w_before - w_after) / grad``). With ``kill_after_exploit`` the
member SIGKILLs itself at the first batch after its first exploit, once per population (a marker file
in ``record_dir`` says it already did).
"""

import json
import os
import signal
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from ganno_lightning.pbt import PBTCallback


class RecordingRegression(pl.LightningModule):
    def __init__(self, seed: int, record_dir: str, kill_after_exploit: bool) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.layer = torch.nn.Linear(4, 1)
        self.member, self.score = seed, 0.1 * (seed + 1)
        self.record_dir, self.kill_after_exploit = Path(record_dir), kill_after_exploit
        self._exploits_at_start = 0
        self._before = None

    def _pbt(self) -> PBTCallback:
        (callback,) = [c for c in self.trainer.callbacks if isinstance(c, PBTCallback)]
        return callback

    def on_train_start(self) -> None:
        self._exploits_at_start = self._pbt().exploits  # a resumed member starts with its checkpoint's count

    def on_train_batch_start(self, batch, batch_idx):
        marker = self.record_dir / "killed"
        if self.kill_after_exploit and self._pbt().exploits > self._exploits_at_start and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.log("score", self.score, on_epoch=True, on_step=False)
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def on_before_optimizer_step(self, optimizer):
        self._before = (self.layer.weight.detach().clone(), self.layer.weight.grad.detach().clone())

    def on_train_batch_end(self, outputs, batch, batch_idx):
        w0, grad = self._before
        delta, g = (w0 - self.layer.weight.detach()).flatten(), grad.flatten()
        i = g.abs().argmax()
        # global_step already counts this update: the step it was taken at is one less
        line = {"pid": os.getpid(), "step": self.global_step - 1, "lr": float(delta[i] / g[i])}
        with open(self.record_dir / f"lrs_{self.member}.jsonl", "a") as handle:
            handle.write(json.dumps(line) + "\n")

    def train_dataloader(self):
        x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def task(seed: int, record_dir: str, kill_after_exploit: bool = False):
    return RecordingRegression(seed, record_dir, kill_after_exploit), None
