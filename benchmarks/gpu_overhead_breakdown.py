"""Where GANNOCallback's per-step cost on a GPU comes from: one Markdown table, in about 2 minutes.

The model of benchmarks/callback_overhead.py (a 10.5M-parameter MLP, 4 layers of width 2048, Adam,
batch 64) trained by a real Lightning Trainer, in six variants:

- plain: the user's Adam, torch's default implementation (foreach on a GPU);
- plain, fused Adam: ``Adam(fused=True)``, for reference;
- split, foreach: one param group per layer, as GANNOCallback split them before it chose the fused
  kernel (what a per-layer split costs by itself: 7 launches and 5 host ops per group);
- split, fused: one param group per layer, as GANNOCallback splits them now (torch's fused kernel
  where the user left the implementation to torch);
- GANNOCallback, foreach split: the whole callback with the old split;
- GANNOCallback: the whole callback as it is.

Step time is measured with CUDA events over whole decision intervals after a warm-up, in rounds
that run every variant (in reversed order every other round, so a drift of the machine's speed
cancels out); the table gives each variant's median and the median of its per-round ratio to
plain. Kernels and top-level aten ops per step come from one profiled interval per variant.

    python3 -P benchmarks/gpu_overhead_breakdown.py --out /tmp/gpu_overhead_breakdown.md
    python3 -P benchmarks/gpu_overhead_breakdown.py --device cpu --quick   # try the script on a CPU
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ganno_lightning import GANNOAgent, GANNOCallback
from ganno_lightning.layerwise import lr_control
from ganno_lightning.layerwise.lr_control import LayerwiseLR
from ganno_lightning.layerwise.partition import LayerPartition

sys.path.insert(0, str(Path(__file__).parent))  # the model of callback_overhead.py, beside this file (also under -P)
import callback_overhead as overhead  # noqa: E402

VARIANTS = {
    "plain": "plain (torch's default Adam)",
    "plain_fused": "plain, `Adam(fused=True)`",
    "split_foreach": "split per layer, foreach (the old split, no callback)",
    "split_fused": "split per layer, fused (the split now, no callback)",
    "full_foreach": "GANNOCallback with the old foreach split",
    "full": "**GANNOCallback** (as it is)",
}


class WideMLP(overhead.WideMLP):
    """callback_overhead.py's model, with the optimizer set-up of one variant."""

    def __init__(self, width: int, depth: int, dim: int, variant: str):
        super().__init__(width, depth, dim)
        self.variant = variant

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-4, fused=True if self.variant == "plain_fused" else None)
        if self.variant.startswith("split"):  # the callback's split, without its hooks or observer
            self._split = LayerwiseLR(optimizer, LayerPartition.from_module(self), install_hooks=False)
        return optimizer


class Window(L.Callback):
    """Times optimizer steps (start, start + length] with CUDA events (or the wall clock), or profiles them."""

    def __init__(self, start: int, length: int, cuda: bool, profile: bool = False):
        self.start, self.end, self.cuda, self.profile = start, start + length, cuda, profile
        self.ms: float | None = None
        self.profiler = None

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step != self.start:
            return
        if self.profile:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.cuda:
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()
        elif self.cuda:
            self._events = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self._events[0].record()
        else:
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step != self.end:
            return
        if self.profile:
            if self.cuda:
                torch.cuda.synchronize()
            self.profiler.__exit__(None, None, None)
        elif self.cuda:
            self._events[1].record()
            torch.cuda.synchronize()
            self.ms = self._events[0].elapsed_time(self._events[1])
        else:
            self.ms = (time.perf_counter() - self._t0) * 1e3


def profile_counts(profiler, steps: int) -> tuple[float, float]:
    """(GPU kernels and copies, top-level aten ops) per step: launch-bound GPU time follows these counts."""
    device_events, top_level = 0, 0
    for event in profiler.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            device_events += 1
        elif event.name.startswith("aten::") and (event.cpu_parent is None
                                                 or not event.cpu_parent.name.startswith("aten::")):
            top_level += 1
    return device_events / steps, top_level / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="toy sizes and one round: to try the script")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of all variants (fewer if --budget runs out)")
    parser.add_argument("--intervals", type=int, default=12, help="timed decision intervals per run")
    parser.add_argument("--budget", type=float, default=100.0, help="seconds for the timed rounds")
    parser.add_argument("--out", default="gpu_overhead_breakdown.md")
    args = parser.parse_args()
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU here (use --device cpu --quick to try the script)")
    if not cuda:
        torch.set_num_threads(1)  # toy sizes: torch's threads would only wait on each other
    width, depth, dim, batch, interval = (64, 4, 64, 16, 5) if args.quick else (2048, 4, 1024, 64, 25)
    rounds, intervals = (1, 2) if args.quick else (args.rounds, args.intervals)
    warm, timed = interval * 2, interval * intervals
    data = TensorDataset(torch.randn(batch * 8, dim), torch.randint(0, 10, (batch * 8,)))
    agent = GANNOAgent.create(interval=interval, seed=0)
    fused_devices = lr_control.FUSED_DEVICE_TYPES

    def run(variant: str, profile: bool = False) -> Window:
        L.seed_everything(0, verbose=False)
        window = Window(warm, interval if profile else timed, cuda, profile)
        callbacks = [window] + ([GANNOCallback(agent)] if variant.startswith("full") else [])
        # the old split: torch's default implementation (foreach on a GPU) pinned per group
        lr_control.FUSED_DEVICE_TYPES = () if variant.endswith("foreach") else fused_devices
        try:
            trainer = L.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, max_steps=window.end + 1,
                                logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, callbacks=callbacks)
            trainer.fit(WideMLP(width, depth, dim, variant), DataLoader(data, batch_size=batch, shuffle=True))
        finally:
            lr_control.FUSED_DEVICE_TYPES = fused_devices
        return window

    started = time.perf_counter()
    counts = {}
    for variant in VARIANTS:  # also the warm-up: CUDA context, kernels, allocator
        counts[variant] = profile_counts(run(variant, profile=True).profiler, interval)
        print(f"profiled {variant}: {counts[variant][0]:.1f} GPU kernels/copies, {counts[variant][1]:.1f} "
              f"top-level aten ops per step", flush=True)
    profiled_s = time.perf_counter() - started

    step_ms = {v: [] for v in VARIANTS}
    timed_started = time.perf_counter()
    n_params = sum(p.numel() for p in WideMLP(width, depth, dim, "plain").parameters())
    where = f"{args.device}, {torch.cuda.get_device_name()}" if cuda else args.device

    def report() -> str:
        done = len(step_ms["plain"])
        lines = [
            f"# GANNOCallback's per-step cost, broken down ({where})",
            "",
            f"MLP {depth} layers, width {width}, {n_params / 1e6:.1f}M parameters, Adam lr 1e-4, batch {batch}; "
            f"interval {interval}; {timed} timed steps per run after {warm} warm-up steps; {done} round(s) of all "
            f"variants, in reversed order every other round; torch {torch.__version__}, lightning {L.__version__}. "
            f"Step time: {'CUDA events' if cuda else 'wall clock'} over whole intervals (decisions included). "
            "Counts: one profiled interval per variant.",
            "",
            "| variant | step (ms), median | ratio to plain (median of rounds) | "
            + ("GPU kernels+copies / step | " if cuda else "") + "top-level aten ops / step |",
            "|---|---|---|" + ("---|" if cuda else "") + "---|",
        ]
        for variant, label in VARIANTS.items():
            ratio = statistics.median(a / b for a, b in zip(step_ms[variant], step_ms["plain"]))
            kernels, ops = counts[variant]
            lines.append(f"| {label} | {statistics.median(step_ms[variant]):.3f} | {ratio:.4f} "
                         f"({100 * (ratio - 1):+.1f}%) | " + (f"{kernels:.1f} | " if cuda else "") + f"{ops:.1f} |")
        lines += [
            "",
            "Per-round step times (ms): " + "; ".join(
                f"{v}: " + ", ".join(f"{x:.3f}" for x in step_ms[v]) for v in VARIANTS),
            "",
            f"Wall: {profiled_s:.0f} s profiling and warm-up, {time.perf_counter() - timed_started:.0f} s timed.",
            "",
            f"Command: `python3 -P benchmarks/gpu_overhead_breakdown.py --device {args.device}"
            + (" --quick" if args.quick else f" --rounds {args.rounds} --intervals {args.intervals} "
                                             f"--budget {args.budget:g}") + "`",
        ]
        return "\n".join(lines) + "\n"

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for r in range(rounds):
        order = list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]
        for variant in order:
            step_ms[variant].append(run(variant).ms / timed)
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{v} {step_ms[v][-1]:.3f} ms" for v in VARIANTS), flush=True)
        out.write_text(report())  # after every round: a timeout still leaves the rounds done
        spent = time.perf_counter() - timed_started
        if r + 1 < rounds and spent / (r + 1) * (r + 2) > args.budget:
            print(f"stopping after {r + 1} rounds: the next would pass --budget {args.budget:g} s", flush=True)
            break
    out.write_text(report())
    print(report(), end="")

if __name__ == "__main__":
    main()
