"""PowerSign and AddSign against Adam and SGD-momentum on a small ConvNet (sklearn digits, 8x8).

Every optimizer gets the same step budget, its best learning rate from a small grid (chosen on the
validation split, mean over seeds) and is reported on the held-out test split. A second table
times ``optimizer.step()`` of PowerSign relative to ``torch.optim.Adam``.

Run (about 5 minutes on 2 CPU cores)::

    PYTHONPATH=. python benchmarks/nos_optimizers.py            # prints Markdown, writes benchmarks/results/nos_optimizers.md
    PYTHONPATH=. python benchmarks/nos_optimizers.py --steps 100 --seeds 1   # quick look
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from report import write_report

from ganno_lightning.examples.digits import digits_network, load_digits_split
from ganno_lightning.nos import RuleOptimizer

GRIDS = {
    "PowerSign": [0.01, 0.03, 0.1, 0.3],
    "AddSign": [0.01, 0.03, 0.1, 0.3],
    "SGD-momentum": [0.01, 0.03, 0.1, 0.3],
    "Adam": [3e-4, 1e-3, 3e-3, 1e-2],
}


def make_optimizer(name: str, params, lr: float, **kw):
    if name == "PowerSign":
        return RuleOptimizer(params, rule="powersign", lr=lr, **kw)
    if name == "AddSign":
        return RuleOptimizer(params, rule="addsign", lr=lr, **kw)
    if name == "SGD-momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "Adam":
        return torch.optim.Adam(params, lr=lr, **kw)
    raise ValueError(f"unknown optimizer {name!r}")


def convnet() -> nn.Module:
    """conv16-conv32-pool-fc64 on flat 64-pixel inputs."""
    return digits_network(hidden=[64], channels=[16, 32])


def load_splits():
    """60/20/20 train/val/test (1,078 / 359 / 360 images), train first, permutation seed 1234."""
    split = load_digits_split(359, seed=1234, test_size=360, train_first=True)
    return (split.x_train, split.y_train), (split.x_val, split.y_val), (split.x_test, split.y_test)


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    acc = (model(x).argmax(-1) == y).float().mean().item()
    model.train()
    return acc


def train_once(name: str, lr: float, seed: int, steps: int, batch: int, splits) -> dict:
    (xtr, ytr), (xva, yva), (xte, yte) = splits
    torch.manual_seed(seed)
    model = convnet()
    opt = make_optimizer(name, model.parameters(), lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(xtr), (batch,), generator=gen)
        loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        try:
            opt.step()
        except FloatingPointError:  # a rule producing NaN counts as diverged
            return {"val": 0.0, "test": 0.0, "loss": float("nan")}
        losses.append(loss.item())
    if not torch.isfinite(torch.tensor(losses[-20:])).all():
        return {"val": 0.0, "test": 0.0, "loss": float("nan")}
    return {"val": accuracy(model, xva, yva), "test": accuracy(model, xte, yte), "loss": statistics.mean(losses[-20:])}


def step_time(make, model: nn.Module, repeats: int) -> float:
    """Median seconds of one optimizer.step() with fixed random gradients."""
    params = [p for p in model.parameters()]
    gen = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    opt = make(params)
    for _ in range(10):
        opt.step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timing-repeats", type=int, default=200)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "nos_optimizers.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    splits = load_splits()
    start = time.perf_counter()

    grid_rows, best_rows = [], []
    for name, lrs in GRIDS.items():
        per_lr = {}
        for lr in lrs:
            runs = [train_once(name, lr, seed, args.steps, args.batch, splits) for seed in range(args.seeds)]
            per_lr[lr] = runs
            val = statistics.mean(r["val"] for r in runs)
            grid_rows.append(f"| {name} | {lr:g} | {val:.4f} | {statistics.mean(r['test'] for r in runs):.4f} |")
            print(f"{name:13s} lr={lr:<7g} val={val:.4f}", flush=True)
        best_lr = max(per_lr, key=lambda lr: statistics.mean(r["val"] for r in per_lr[lr]))
        runs = per_lr[best_lr]
        tests = [r["test"] for r in runs]
        sd = statistics.stdev(tests) if len(tests) > 1 else 0.0
        best_rows.append(
            (name, best_lr, statistics.mean(r["val"] for r in runs), statistics.mean(tests), sd, statistics.mean(r["loss"] for r in runs))
        )

    # optimizer step time, PowerSign relative to Adam (same parameters, same fixed gradients)
    models = {
        "ConvNet (digits)": convnet(),
        "MLP 3 x Linear(1024, 1024)": nn.Sequential(nn.Linear(1024, 1024), nn.Linear(1024, 1024), nn.Linear(1024, 1024)),
    }
    timing_rows = []
    for label, model in models.items():
        n_params = sum(p.numel() for p in model.parameters())
        t = {
            "adam": step_time(lambda p: torch.optim.Adam(p, lr=1e-3), model, args.timing_repeats),
            "adam_foreach": step_time(lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True), model, args.timing_repeats),
            "ps": step_time(lambda p: RuleOptimizer(p, rule="powersign", lr=1e-3), model, args.timing_repeats),
            "ps_nocheck": step_time(lambda p: RuleOptimizer(p, rule="powersign", lr=1e-3, check_finite=False), model, args.timing_repeats),
        }
        timing_rows.append(
            f"| {label} | {n_params:,} | {t['adam'] * 1e3:.3f} | {t['adam_foreach'] * 1e3:.3f} | {t['ps'] * 1e3:.3f} | "
            f"{t['ps_nocheck'] * 1e3:.3f} | {t['ps'] / t['adam']:.2f}x | {t['ps_nocheck'] / t['adam']:.2f}x | "
            f"{t['ps_nocheck'] / t['adam_foreach']:.2f}x |"
        )

    elapsed = time.perf_counter() - start
    adam_test = next(r[3] for r in best_rows if r[0] == "Adam")
    lines = [
        "# NOS optimizers: PowerSign / AddSign vs Adam / SGD-momentum",
        "",
        f"Command: `PYTHONPATH=. python benchmarks/nos_optimizers.py --steps {args.steps} --batch {args.batch} "
        f"--seeds {args.seeds} --threads {args.threads}`  ",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); "
        f"total {elapsed:.0f} s.  ",
        f"Task: sklearn digits (8x8, 1,078 train / 359 val / 360 test), ConvNet conv16-conv32-pool-fc64, "
        f"{args.steps} steps of batch {args.batch}, seeds 0..{args.seeds - 1}. "
        "Best LR per optimizer picked on mean validation accuracy; test accuracy reported at that LR.",
        "",
        "| optimizer | best lr | val acc | test acc (mean ± sd over seeds) | final train loss | test acc / Adam |",
        "|---|---|---|---|---|---|",
    ]
    for name, lr, val, test, sd, loss in best_rows:
        lines.append(f"| {name} | {lr:g} | {val:.4f} | {test:.4f} ± {sd:.4f} | {loss:.4f} | {test / adam_test:.3f} |")
    lines += [
        "",
        "## Optimizer step time (median of "
        f"{args.timing_repeats} `step()` calls, ms)",
        "",
        "`check` = PowerSign's default finiteness check (one host sync per step).",
        "",
        "| model | params | Adam (default) | Adam (foreach) | PowerSign | PowerSign no check | PowerSign / Adam | no check / Adam | no check / Adam foreach |",
        "|---|---|---|---|---|---|---|---|---|",
        *timing_rows,
        "",
        "## Full LR grid (mean over seeds)",
        "",
        "| optimizer | lr | val acc | test acc |",
        "|---|---|---|---|",
        *grid_rows,
        "",
    ]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
