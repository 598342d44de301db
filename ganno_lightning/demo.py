"""Demo: train a small MLP on scikit-learn's bundled digits with GANNOCallback.

Run ``python -m ganno_lightning.demo [--agent PATH] [--epochs N] [--out DIR]``. It prints the
per-layer learning-rate schedule and writes it to ``DIR/ganno_schedule.csv`` and ``.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ganno_lightning.layerwise.agent import DEFAULT_AGENT_PATH, GANNOAgent
from ganno_lightning.layerwise.callback import GANNOCallback


class DigitsClassifier(L.LightningModule):
    """A 3-layer MLP for the 8x8 digits (1,797 images that ship with scikit-learn)."""

    def __init__(self, lr: float = 0.05, hidden: int = 128, batch_size: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 10))
        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        y = torch.tensor(digits.target)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        self.train_set = TensorDataset(x[order[:1500]], y[order[:1500]])
        self.val_set = TensorDataset(x[order[1500:]], y[order[1500:]])

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=256)


def _agent(path: str | None) -> GANNOAgent:
    if path:
        return GANNOAgent.load(path)
    if DEFAULT_AGENT_PATH.is_file():
        return GANNOAgent.default()
    print("NOTE: no trained default agent ships with this version yet, so this demo runs an UNTRAINED agent\n"
          "      (random policy) to show the mechanics. Pass --agent PATH for a trained one.\n", file=sys.stderr)
    return GANNOAgent.create(interval=25, seed=0)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", default=None, help="agent file (default: the bundled agent)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default="ganno_demo", help="where the schedule CSV and PNG go")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    L.seed_everything(args.seed, verbose=False)
    callback = GANNOCallback(_agent(args.agent), save_dir=args.out)
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="auto", devices=1, callbacks=[callback],
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=False)
    trainer.fit(DigitsClassifier())

    schedule = callback.schedule
    print(f"\nPer-layer learning rates chosen by the agent ({len(schedule)} decisions):")
    print(f"{'step':>6} " + " ".join(f"{name:>11}" for name in schedule.layer_names))
    for step, lrs in zip(schedule.steps, schedule.lrs):
        print(f"{step:>6} " + " ".join(f"{lr:>11.3e}" for lr in lrs))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    print(f"\nfinal val_loss={metrics.get('val_loss', float('nan')):.4f} val_acc={metrics.get('val_acc', float('nan')):.4f}")
    print(f"schedule written to {Path(args.out) / 'ganno_schedule.csv'} and {Path(args.out) / 'ganno_schedule.png'}")
    return metrics


if __name__ == "__main__":
    main()
