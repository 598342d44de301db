"""Demo: train a small MLP on scikit-learn's bundled digits with GANNOCallback.

Run ``python -m ganno_lightning.demo [--agent PATH] [--epochs N] [--out DIR]``. It prints the
per-layer learning-rate schedule and writes it to ``DIR/ganno_schedule.csv`` and ``.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L

from ganno_lightning.examples.digits import DigitsClassifier, DigitsDataModule
from ganno_lightning.layerwise.agent import DEFAULT_AGENT_PATH, GANNOAgent
from ganno_lightning.layerwise.callback import GANNOCallback


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
    # 1,500 training images; SGD (momentum 0.9) with a cosine schedule over every optimizer step
    model = DigitsClassifier(hidden=[128, 128], optimizer="sgd", lr=0.05, scheduler="cosine", scheduler_interval="step")
    data = DigitsDataModule(batch_size=64, val_size=297, train_first=True, shuffle_seed=None, val_batch_size=256)
    trainer.fit(model, datamodule=data)

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
