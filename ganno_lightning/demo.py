"""Demo: train a small MLP on scikit-learn's bundled digits with GANNOCallback.

Run ``python -m ganno_lightning.demo [--agent PATH] [--epochs N] [--out DIR]``. It prints every
layer's LR scale (the agent's action) beside its effective LR (the cosine schedule's LR x scale)
and writes the schedule to ``DIR/ganno_schedule.csv`` and ``.png``. ``--without-agent`` trains the
same model, data and cosine schedule without the callback, for comparison.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L

from ganno_lightning.examples.digits import DigitsClassifier, DigitsDataModule
from ganno_lightning.layerwise.agent import DEFAULT_AGENT_PATH, GANNOAgent
from ganno_lightning.layerwise.callback import GANNOCallback
from ganno_lightning.layerwise.schedule import LRSchedule


def _agent(path: str | None) -> GANNOAgent:
    if path:
        return GANNOAgent.load(path)
    if DEFAULT_AGENT_PATH.is_file():
        return GANNOAgent.default()
    print("NOTE: no trained default agent ships with this version yet, so this demo runs an UNTRAINED agent\n"
          "      (random policy) to show the mechanics. Pass --agent PATH for a trained one.\n", file=sys.stderr)
    return GANNOAgent.create(interval=25, seed=0)


def print_schedule(schedule: LRSchedule) -> None:
    """Print what the agent chose (each layer's LR scale) beside the effective LR it gave.

    The effective LR is the scheduler's LR times the scale, so a decaying schedule can hide the
    agent's action: a scale the agent raised 4x still shows a falling LR under a cosine decay.
    """
    width = max(11, *(len(name) for name in schedule.layer_names))
    names = " ".join(f"{name:>{width}}" for name in schedule.layer_names)
    print(f"\nPer-layer LR scales the agent chose and the learning rates they gave ({len(schedule)} decisions):")
    scale_title, lr_title = "agent's LR scale (its action)", "effective LR (scheduler LR x scale)"
    print(f"{'':>6}   {scale_title:^{len(names)}}   {lr_title:^{len(names)}}")
    print(f"{'step':>6}   {names}   {names}")
    for step, scales, lrs in zip(schedule.steps, schedule.scales, schedule.lrs):
        print(f"{step:>6}   " + " ".join(f"{scale:>{width}.3f}" for scale in scales) + "   "
              + " ".join(f"{lr:>{width}.3e}" for lr in lrs))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", default=None, help="agent file (default: the bundled agent)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default="ganno_demo", help="where the schedule CSV and PNG go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--without-agent", action="store_true",
                        help="train without GANNOCallback (the cosine schedule alone), for comparison")
    args = parser.parse_args(argv)

    L.seed_everything(args.seed, verbose=False)
    callbacks = [] if args.without_agent else [GANNOCallback(_agent(args.agent), save_dir=args.out)]
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="auto", devices=1, callbacks=callbacks,
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=False)
    # 1,500 training images; SGD (momentum 0.9) with a cosine schedule over every optimizer step
    model = DigitsClassifier(hidden=[128, 128], optimizer="sgd", lr=0.05, scheduler="cosine", scheduler_interval="step")
    data = DigitsDataModule(batch_size=64, val_size=297, train_first=True, shuffle_seed=None, val_batch_size=256)
    trainer.fit(model, datamodule=data)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    final = f"final val_loss={metrics.get('val_loss', float('nan')):.4f} val_acc={metrics.get('val_acc', float('nan')):.4f}"
    if args.without_agent:
        print(f"\n{final} (without the agent: the cosine schedule alone)")
        return metrics
    print_schedule(callbacks[0].schedule)
    print(f"\n{final}")
    print(f"schedule written to {Path(args.out) / 'ganno_schedule.csv'} and {Path(args.out) / 'ganno_schedule.png'}")
    return metrics


if __name__ == "__main__":
    main()
