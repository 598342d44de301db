"""Every new zoo family's sampled tasks are learnable: some constant LR of a small grid brings the
validation loss well below its initial value within the default 300-step budget.

The tasks are sampled from the default train ranges with the task kind (or dataset) and the
optimizer narrowed per case, so that every task kind, every dataset and every optimizer is covered.
Trained with a plain loop over the module's own loss, optimizer and loaders (what a Trainer runs,
without its overhead).
"""

import math

import pytest
import torch

from ganno_lightning.envs.tasks import make_family
from ganno_lightning.envs.tasks.base import make_optimizer
from ganno_lightning.envs.tasks.resmlp import TABULAR_DATASETS

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # tests/conftest.py

STEPS = 300
#: A decade apart, where each optimizer's useful LRs lie: plain SGD needs about 10x Adam's or momentum SGD's.
LR_GRID = {
    "adam": (1e-3, 1e-2, 1e-1),
    "adamw": (1e-3, 1e-2, 1e-1),
    "sgd": (1e-3, 1e-2, 1e-1),
    "sgd_plain": (1e-2, 1e-1, 1.0),
}
#: "Learnable": the best final validation loss is below this share of the initial one.
LEARNED = 0.8


def val_loss(module):
    module.eval()
    with torch.no_grad():
        loss = float(module.loss(next(iter(module.val_dataloader()))))
    module.train()
    return loss


def initial_and_final_val_loss(family, hp, seed, lr):
    torch.manual_seed(0)  # the same initial weights at every LR
    module = family.build({**hp, "lr": lr}, seed)
    initial = val_loss(module)
    optimizer = make_optimizer(hp["optimizer"], module.parameters(), lr)
    step = 0
    while step < STEPS:
        for batch in module.train_dataloader():
            loss = module.loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == STEPS:
                break
    return initial, val_loss(module)


def assert_learnable(family):
    task = family.sample(torch.Generator().manual_seed(0))
    hp = {k: v for k, v in task.info.items() if k not in ("family", "split", "seed", "num_layers")}
    runs = [initial_and_final_val_loss(family, hp, task.info["seed"], lr) for lr in LR_GRID[hp["optimizer"]]]
    initial, finals = runs[0][0], [final for _, final in runs]
    best = min(f for f in finals if math.isfinite(f))
    assert best < LEARNED * initial, f"{task.name}: initial val loss {initial:.3f}, final per LR {finals}"


@pytest.mark.parametrize(("kind", "optimizer"), [("copy", "sgd_plain"), ("sort", "sgd"), ("count", "adamw")])
def test_transformer_seq_tasks_are_learnable(kind, optimizer):
    assert_learnable(make_family("transformer_seq", train={"tasks": [kind], "optimizers": [optimizer]}))


@pytest.mark.parametrize(
    ("dataset", "optimizer"),
    [(name, ("adam", "sgd", "adamw", "sgd_plain")[i % 4]) for i, name in enumerate(TABULAR_DATASETS)],
)
def test_resmlp_tasks_are_learnable(dataset, optimizer):
    assert_learnable(make_family("resmlp", train={"datasets": [dataset], "optimizers": [optimizer]}))
