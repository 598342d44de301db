"""Small bundled-data tasks for the PBT runner, tests and benchmark (no download, CPU-fast).

A task factory has the signature ``factory(seed: int, **kwargs) -> (LightningModule, LightningDataModule)``;
the runner imports it from a ``"package.module:function"`` string, so any user task plugs in the same way.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["DigitsClassifier", "DigitsData", "digits"]


class DigitsData(pl.LightningDataModule):
    """scikit-learn's 8x8 digits (1797 images), standardised, with a fixed train/validation split.

    Args:
        batch_size: training batch size.
        val_fraction: share of the data held out for validation.
        split_seed: seed of the split; every member of a population must share it.
        train_subset: keep only this many training examples (a harder, overfitting-prone task).
    """

    def __init__(
        self, batch_size: int = 64, val_fraction: float = 0.3, split_seed: int = 0, train_subset: int | None = None
    ) -> None:
        super().__init__()
        self.batch_size, self.val_fraction, self.split_seed, self.train_subset = (
            batch_size,
            val_fraction,
            split_seed,
            train_subset,
        )

    def setup(self, stage: str | None = None) -> None:
        from sklearn.datasets import load_digits

        data = load_digits()
        x = torch.tensor(data.data, dtype=torch.float32) / 16.0
        y = torch.tensor(data.target, dtype=torch.long)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.split_seed))
        n_val = int(len(x) * self.val_fraction)
        val, train = order[:n_val], order[n_val:]
        if self.train_subset is not None:
            train = train[: self.train_subset]
        mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-3)
        x = (x - mean) / std
        self.train_set = TensorDataset(x[train], y[train])
        self.val_set = TensorDataset(x[val], y[val])

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.split_seed + 1)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=512)


class DigitsClassifier(pl.LightningModule):
    """A small MLP on 64 inputs; logs ``train_loss``, ``val_loss`` and ``val_acc``.

    Args:
        lr: initial learning rate (PBT overrides it through the ``lr`` setter).
        optimizer: ``"sgd"`` (momentum 0.9) or ``"adam"``.
        hidden: hidden width.
        weight_decay: initial weight decay.
        scheduler: ``None`` or ``"cosine"`` (cosine annealing over ``max_epochs`` epochs).
        max_epochs: the cosine horizon.
    """

    def __init__(
        self,
        lr: float = 0.01,
        optimizer: str = "sgd",
        hidden: int = 64,
        weight_decay: float = 0.0,
        scheduler: str | None = None,
        max_epochs: int = 10,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"`optimizer` must be 'sgd' or 'adam', got {optimizer!r}.")
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        hp = self.hparams
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, hp.max_epochs))
            return {"optimizer": opt, "lr_scheduler": sched}
        if hp.scheduler is not None:
            raise ValueError(f"`scheduler` must be None or 'cosine', got {hp.scheduler!r}.")
        return opt


def digits(
    seed: int = 0,
    lr: float = 0.01,
    optimizer: str = "sgd",
    hidden: int = 64,
    batch_size: int = 64,
    scheduler: str | None = None,
    max_epochs: int = 10,
    train_subset: int | None = None,
    dropout: float = 0.0,
    split_seed: int = 0,
) -> tuple[DigitsClassifier, DigitsData]:
    """Task factory: a seeded digits MLP and its data (the split is shared, the init follows ``seed``)."""
    pl.seed_everything(seed, workers=False, verbose=False)
    model = DigitsClassifier(
        lr=lr, optimizer=optimizer, hidden=hidden, scheduler=scheduler, max_epochs=max_epochs, dropout=dropout
    )
    return model, DigitsData(batch_size=batch_size, split_seed=split_seed, train_subset=train_subset)
