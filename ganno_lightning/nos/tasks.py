"""A small ready-made search task: scikit-learn's bundled 8x8 digits, no download needed.

Used by the smoke configuration and the tests; your own task is any importable LightningModule
(or factory) that logs the monitored metric in ``validation_step``.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["DigitsClassifier", "digits_tensors"]


def digits_tensors(seed: int = 0, val_fraction: float = 0.3, image: bool = False):
    """Split sklearn's digits into train/val tensors (pixels scaled to [0, 1]).

    Returns ``(x_train, y_train, x_val, y_val)``; ``image=True`` shapes inputs as ``(N, 1, 8, 8)``.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    if image:
        x = x.view(-1, 1, 8, 8)
    n_val = int(len(x) * val_fraction)
    return x[n_val:], y[n_val:], x[:n_val], y[:n_val]


class DigitsClassifier(pl.LightningModule):
    """MLP on the 8x8 digits. Logs ``val_loss`` and ``val_acc``.

    Args:
        hidden: hidden width.
        batch_size: training batch size.
        lr: learning rate of the default Adam (replaced by RuleSearchCallback during a search).
        data_seed: seed of the train/val split.

    Example::

        import lightning.pytorch as pl
        from ganno_lightning.nos.tasks import DigitsClassifier

        pl.Trainer(max_steps=20, logger=False, enable_checkpointing=False).fit(DigitsClassifier())
    """

    def __init__(self, hidden: int = 32, batch_size: int = 64, lr: float = 1e-3, data_seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        self._data = digits_tensors(seed=data_seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    def train_dataloader(self):
        x, y, _, _ = self._data
        gen = torch.Generator().manual_seed(self.hparams.data_seed)
        return DataLoader(TensorDataset(x, y), batch_size=self.hparams.batch_size, shuffle=True, generator=gen)

    def val_dataloader(self):
        _, _, x, y = self._data
        return DataLoader(TensorDataset(x, y), batch_size=512)
