"""PBT (4 members) against the best of 4 independent runs with fixed random LRs, at equal total compute.

Both arms use the same runner, task (configs/pbt_digits.yaml: SGD-momentum MLP on scikit-learn's
digits), member count, epochs per member and the *same* initial learning rates (drawn log-uniformly
from the config's prior by the seed). The only difference is ``exploit``: ``truncation`` (PBT) or
``none`` (each member keeps its random LR: random search). The score is the best member's final
validation loss.

    PYTHONPATH=. python benchmarks/pbt_vs_random.py --seeds 0 1 2 3 4 5 6 7 --max-epochs 12

Writes benchmarks/results/pbt_vs_random.md (run directories go to a temporary folder, never the repo).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from ganno_lightning.files import atomic_write_bytes
from ganno_lightning.pbt.runner import load_config, run_population

ROOT = Path(__file__).resolve().parents[1]


def run_arm(seed: int, exploit: str, max_epochs: int, workdir: Path, extra: list[str] = ()) -> dict:
    overrides = [*extra,
        f"population_dir={workdir / f'{exploit}_seed{seed}'}",
        f"seed={seed}",
        f"exploit={exploit}",
        f"max_epochs={max_epochs}",
        "max_restarts=1",
    ]
    config = load_config(ROOT / "configs" / "pbt_digits.yaml", overrides)
    start = time.time()
    summary = run_population(config)
    summary["wall_s"] = time.time() - start
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--override", nargs="*", default=[], help="extra config overrides for both arms")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pbt_vs_random.md")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="pbt_bench_") as tmp:
        for seed in args.seeds:
            pbt = run_arm(seed, "truncation", args.max_epochs, Path(tmp), args.override)
            rnd = run_arm(seed, "none", args.max_epochs, Path(tmp), args.override)
            rows.append((seed, pbt, rnd))
            print(json.dumps({"seed": seed, "pbt": pbt["best_score"], "random": rnd["best_score"]}), flush=True)
            write_report(rows, args)  # after every seed, so a cut-short run still leaves its results


def write_report(rows: list, args: argparse.Namespace) -> None:
    config = load_config(ROOT / "configs" / "pbt_digits.yaml", list(args.override))
    lr = config.hyperparameters.lr
    ratios = [p["best_score"] / r["best_score"] for _, p, r in rows]
    wins = sum(p["best_score"] < r["best_score"] for _, p, r in rows)
    lines = [
        "# PBT vs best of 4 random fixed LRs (equal compute)",
        "",
        f"Command: `PYTHONPATH=. python benchmarks/pbt_vs_random.py --seeds {' '.join(map(str, args.seeds))}"
        f" --max-epochs {args.max_epochs}" + (f" --override {' '.join(args.override)}" if args.override else "") + "`",
        "",
        f"Task: configs/pbt_digits.yaml (digits MLP, SGD momentum 0.9, batch {config.task_kwargs.batch_size},"
        f" training examples: {config.task_kwargs.train_subset or 'all 1258'}), 4 members x {args.max_epochs} epochs"
        f" in both arms; LR prior log-uniform [{lr.low:g}, {lr.high:g}]; PBT decides every {config.ready_interval}"
        f" {config.ready_unit}(s) ({'synchronous' if config.synchronous else 'asynchronous'}, truncation"
        f" {config.quantile:.0%}, perturb x{config.perturb_factors[0]}/x{config.perturb_factors[1]}, resample"
        f" {config.resample_probability:.0%}). Same initial LRs in both arms.",
        "",
        "| seed | PBT best final val_loss | random best final val_loss | ratio PBT/random | PBT exploits |"
        " random initial LRs | PBT best final LR | wall s (PBT / random) |",
        "|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for seed, p, r in rows:
        lrs = ", ".join(f"{r_['lr']:.3g}" for r_ in _initial_lrs(seed, args.override))
        lines.append(
            f"| {seed} | {p['best_score']:.4f} | {r['best_score']:.4f} | {p['best_score'] / r['best_score']:.3f} |"
            f" {p['exploits']} | {lrs} | {p['best_hyperparameters']['lr']:.3g} | {p['wall_s']:.0f} / {r['wall_s']:.0f} |"
        )
    lines += [
        "",
        f"PBT lower on {wins}/{len(rows)} seeds done; mean ratio {statistics.mean(ratios):.3f}"
        f" (geometric {statistics.geometric_mean(ratios):.3f}).",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, ("\n".join(lines) + "\n").encode())
    print("\n".join(lines), flush=True)


def _initial_lrs(seed: int, overrides: list[str]) -> list[dict]:
    from ganno_lightning.pbt.runner import initial_values, validate_config

    config = load_config(ROOT / "configs" / "pbt_digits.yaml", [*overrides, f"seed={seed}"])
    strategy = validate_config(config)
    return [initial_values(config, strategy, m) for m in range(config.population_size)]


if __name__ == "__main__":
    main()
