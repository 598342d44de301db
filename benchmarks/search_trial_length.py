"""Issue #18 diagnostic: would longer or wider initial-LR-search trials pick better LRs for long fits?

``GANNOCallback(lr_search=True)`` picks the start factor from short constant-LR trials (50 steps at 0.1x-10x).
This script asks, offline and from an evaluation suite's archived baselines only, what a search with trials of
``L`` steps would have picked: for each task and seed, the factor whose *constant-LR* run has the lowest
validation loss at step ``L`` (its archived curve; ties go to the factor nearest 1x), scored by the final loss of
the archived *cosine* at that factor (the prior the search is deployed with, without the agent). Two factor sets:
the search's five, and a wide one (0.011x-90x, where the archive has both schedules). Reported per ``L``: the
geometric mean ratio of that cosine to the tuned cosine (the best cosine of the grid), and the runs below the
constant LR at the user's LR; beside them, the tuned cosine's own count (an upper bound for any pick).

    PYTHONPATH=. python benchmarks/search_trial_length.py benchmarks/results/dev_long_suite_baselines.jsonl.gz \\
        --lengths 100 200 300 500 1000 3000 --out benchmarks/results/search_trial_length_dev_long.md
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections import defaultdict
from pathlib import Path

from report import write_report

from ganno_lightning.layerwise.lr_search import InitialLRSearch
from ganno_lightning.trials.pool import read_log

FACTOR_SETS = {
    "search (0.1x-10x)": (0.1, 0.3, 1.0, 3.0, 10.0),
    "wide (0.011x-90x)": (0.0111111, 0.0333333, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 90.0),
}


def load_runs(path: str) -> tuple[dict, dict]:
    """Per (task, seed): ``{factor: (final loss, {step: val loss})}`` of the constant LR, ``{factor: final}`` of the cosine."""
    constant: dict = defaultdict(dict)
    cosine: dict = defaultdict(dict)
    for run in read_log(path).values():
        final = run["final_val_loss"] if run["status"] == "ok" else math.inf
        final = final if final is not None and math.isfinite(final) else math.inf
        key = (run["task"], run["seed"])
        if run["method"] == "constant":
            constant[key][run["lr_factor"]] = (final, dict(run.get("curve") or []))
        elif run["method"] == "cosine":
            cosine[key][run["lr_factor"]] = final
    return constant, cosine


def pick(constant: dict, cosine: dict, factors: tuple[float, ...], length: int) -> float | None:
    """The factor a search of ``length``-step constant-LR trials would pick (``None``: no factor has both runs).

    The callback's rule (:meth:`InitialLRSearch.choose`): the lowest finite score, a tie to the factor nearest
    1x; no finite score picks 1x, the user's LR.
    """
    scores = {}
    for factor in factors:
        if factor in constant and factor in cosine:
            scores[factor] = constant[factor][1].get(length, math.inf)
    return InitialLRSearch().choose(scores) if scores else None


def table(constant: dict, cosine: dict, lengths: list[int]) -> list[str]:
    keys = [k for k in constant if 1.0 in constant[k] and cosine.get(k)]
    tuned_below = sum(min(cosine[k].values()) < constant[k][1.0][0] for k in keys)
    lines = [f"{len(keys)} task x seed runs; the tuned cosine itself is below the constant LR at the user's LR in "
             f"{tuned_below} of them.", "",
             "| factors | trial steps | cosine at the pick / tuned cosine (geometric mean) | below the constant LR |",
             "|---|---:|---:|---:|"]
    for name, factors in FACTOR_SETS.items():
        for length in lengths:
            logs, below = [], 0
            for key in keys:
                factor = pick(constant[key], cosine[key], factors, length)
                if factor is None:
                    continue
                loss, best = cosine[key][factor], min(cosine[key].values())
                logs.append(math.log(min(loss, 1e9) / best))
                below += loss < constant[key][1.0][0]
            ratio = math.exp(sum(logs) / len(logs))
            lines.append(f"| {name} | {length} | {ratio:.3f} | {below}/{len(logs)} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("baselines", help="an evaluation suite's archived baselines (.jsonl.gz)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 300, 1000],
                        help="trial lengths in optimizer steps (points of the archived validation curves)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/search_trial_length.md"),
                        help="the Markdown report (also printed)")
    args = parser.parse_args(argv)
    constant, cosine = load_runs(args.baselines)
    command = "PYTHONPATH=. python benchmarks/search_trial_length.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    write_report(["# Initial LR search: what longer or wider trials would pick (issue #18)", "",
                  f"Command: `{command}`", "", *table(constant, cosine, args.lengths)], args.out)


if __name__ == "__main__":
    main()
