"""GANNOCallback overhead: training-step time with / without the callback, measured in one run.

A >10M-parameter MLP is trained with a real Lightning ``Trainer``. Runs with and without the callback
alternate (A B B A ...) so that both see the same machine load, and each run is timed over a window
of whole intervals (every decision and gradient sample inside it counted). Besides the A/B ratio,
the time spent inside the callback's own code is measured directly (a steadier figure on a busy
machine). Target: overhead under 1% at the default interval. The agent's rollback on loss spikes (the
shipped agent's is on) copies weights and optimizer state at every decision and is timed with the rest
(``--rollback`` chooses where the copy lives, or turns it off); its initial LR search is not run: it is
a fixed number of extra training steps before the fit (see the README), not a per-step overhead.

    python benchmarks/callback_overhead.py                 # CPU
    python benchmarks/callback_overhead.py --device cuda   # GPU, when one is available
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from report import write_report

from ganno_lightning import GANNOAgent, GANNOCallback
from ganno_lightning.layerwise.controller import LayerwiseController

RESULTS = Path(__file__).parent / "results" / "callback_overhead.md"


class WideMLP(L.LightningModule):
    def __init__(self, width: int, depth: int, dim: int):
        super().__init__()
        layers = [nn.Linear(dim, width), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Linear(width, width), nn.ReLU()]
        layers.append(nn.Linear(width, 10))
        self.net = nn.Sequential(*layers)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-4)


class WindowTimer(L.Callback):
    """Wall time of optimizer steps (start, start + length]: whole intervals, decisions included.

    ``WindowTimer.open`` is True inside the window, so the callback's own code is timed over the same steps.
    """

    open = False

    def __init__(self, start: int, length: int, sync):
        self.start, self.end, self.sync = start, start + length, sync
        self.seconds = None

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.start:
            self.sync()
            self._t0 = time.perf_counter()
            WindowTimer.open = True

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.end:
            self.sync()
            self.seconds = time.perf_counter() - self._t0
            WindowTimer.open = False


def instrument(seconds: list[float]) -> None:
    """Accumulate the wall time spent inside the controller's observe/apply/rollback and step hooks, within the
    timed window (the fit's start, its early decisions and the first rollback copy fall before it)."""

    def timed(fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if WindowTimer.open:
                    seconds[0] += time.perf_counter() - t0
        return wrapper

    from ganno_lightning.layerwise import lr_control, observer

    LayerwiseController.observe = timed(LayerwiseController.observe)
    LayerwiseController.recover_from_spike = timed(LayerwiseController.recover_from_spike)  # the rollback's copy
    LayerwiseController.apply = timed(LayerwiseController.apply)
    observer.LayerObserver.after_step = timed(observer.LayerObserver.after_step)
    observer.LayerObserver.record_loss = timed(observer.LayerObserver.record_loss)
    lr_control.LayerwiseLR.scale_lrs = timed(lr_control.LayerwiseLR.scale_lrs)
    lr_control.LayerwiseLR.unscale_lrs = timed(lr_control.LayerwiseLR.unscale_lrs)


def command_extras(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The model, interval and agent options that differ from their defaults, for the report's command line."""
    return "".join(f" --{name} {getattr(args, name)}" for name in ("width", "depth", "batch", "interval", "agent",
                                                                   "rollback")
                   if getattr(args, name) != parser.get_default(name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--interval", type=int, default=25, help="the default agent interval")
    parser.add_argument("--agent", default="default", help="'default' (the shipped agent, whose features are "
                        "what users pay for), 'fresh' (an untrained agent of the package's default 23 features) or an agent file")
    parser.add_argument("--rollback", default="agent", choices=["agent", "host", "device", "off"],
                        help="the rollback on loss spikes: the agent's own (its file's rule, in host memory), "
                        "on with the copy in host or device memory, or off")
    parser.add_argument("--intervals", type=int, default=4, help="timed intervals per run")
    parser.add_argument("--reps", type=int, default=5, help="A/B pairs")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    dim = 1024
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    steps = args.interval * (args.intervals + 2)
    data = TensorDataset(torch.randn(args.batch * 8, dim), torch.randint(0, 10, (args.batch * 8,)))
    if args.agent == "fresh":
        agent = GANNOAgent.create(interval=args.interval, seed=0)
    else:
        agent = GANNOAgent.from_source(args.agent)
    inside = [0.0]
    instrument(inside)
    rollback = ({} if args.rollback == "agent" else {"recover_on_spike": False} if args.rollback == "off"
                else {"recover_on_spike": True, "rollback_memory": args.rollback})

    def run(with_callback: bool) -> float:
        L.seed_everything(0, verbose=False)
        model = WideMLP(args.width, args.depth, dim)
        timer = WindowTimer(args.interval, args.interval * args.intervals, sync)
        ganno = GANNOCallback(agent, interval=args.interval, lr_search=False, **rollback)
        callbacks = ([ganno] if with_callback else []) + [timer]
        trainer = L.Trainer(accelerator="gpu" if args.device.startswith("cuda") else "cpu", devices=1,
                            max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=callbacks)
        trainer.fit(model, DataLoader(data, batch_size=args.batch, shuffle=True))
        return timer.seconds

    n_params = sum(p.numel() for p in WideMLP(args.width, args.depth, dim).parameters())
    probe = GANNOCallback(agent, **rollback)
    rollback_note = (f"rollback on loss spikes: on (x{probe.spike_factor:g}, the copy in {probe.rollback_memory} "
                     f"memory, written at every decision)" if probe.recover_on_spike else "rollback on loss spikes: off")
    run(False)  # warm-up
    without, with_, inside_fraction = [], [], []
    for rep in range(args.reps):
        # ABBA order: a slow drift of the machine's speed cancels out instead of biasing one side
        for with_callback in ((False, True) if rep % 2 == 0 else (True, False)):
            if with_callback:
                inside[0] = 0.0
                with_.append(run(True))
                inside_fraction.append(inside[0] / with_[-1])
            else:
                without.append(run(False))
            seconds = (with_ if with_callback else without)[-1]
            print(f"pair {rep + 1}/{args.reps}, {'with' if with_callback else 'without'} the callback: {seconds:.3f} s",
                  flush=True)

    timed_steps = args.interval * args.intervals
    ratio = statistics.median(w / wo for w, wo in zip(with_, without))
    on_gpu = args.device.startswith("cuda")
    gpu = f", {torch.cuda.get_device_name(torch.device(args.device))}" if on_gpu else ""
    table = [
        f"# GANNOCallback overhead ({args.device}{gpu})",
        "",
        f"Model: MLP {args.depth} layers, width {args.width}, {n_params / 1e6:.1f}M parameters, Adam, batch {args.batch}; "
        f"agent `{args.agent}` ({len(agent.feature_names)} features: {', '.join(agent.feature_names)}); "
        f"interval {args.interval}; {timed_steps} timed steps per run ({args.intervals} decisions, "
        f"{args.intervals * 2} gradient samples); {args.reps} A/B pairs in ABBA order, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {rollback_note}; no initial LR search.",
        "",
        "| | step time (ms), median | |",
        "|---|---|---|",
        f"| without callback | {statistics.median(without) / timed_steps * 1e3:.2f} | |",
        f"| with GANNOCallback | {statistics.median(with_) / timed_steps * 1e3:.2f} | |",
        f"| **ratio with/without** (median of pairs) | **{ratio:.4f}** | overhead {100 * (ratio - 1):+.2f}% |",
        f"| ratio of the median step times | {statistics.median(with_) / statistics.median(without):.4f} | |",
        f"| time inside the callback's code / step time | {100 * statistics.median(inside_fraction):.2f}% | |",
        "",
        "Pairs (with/without): " + ", ".join(f"{w / wo:.4f}" for w, wo in zip(with_, without)),
        *(["", "On a GPU the time inside the callback's code is host time: the decision's one host sync also waits "
           "there for the GPU work queued before it, so this share over-counts; the A/B ratio is the measure."]
          if on_gpu else []),
        "",
        f"Command: `python benchmarks/callback_overhead.py --device {args.device} --reps {args.reps} "
        f"--intervals {args.intervals}{command_extras(args, parser)}`",
    ]
    write_report(table, args.out)


if __name__ == "__main__":
    main()
