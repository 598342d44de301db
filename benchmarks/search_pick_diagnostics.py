"""Issue #18 diagnostic: when is the initial LR search's pick right, and does the agent help after it?

``GANNOCallback(lr_search=True)`` (the shipped deployment) starts a fit at the factor of the user's LR whose
50-step trial scored lowest; the agent then acts around a cosine from there. This script reads the runs of
evaluations of that deployment (each run records its trials' scores) beside the same evaluation's cosine LR grid,
and asks four things, per suite:

1. **The pick against the tuned cosine's best factor**, per family: how often it is that factor, and how far off
   it is otherwise (log2).
2. **The agent after a right and after a wrong pick**: within 2% of the tuned cosine, and below the cosine at
   the pick (what the agent's identity policy would end at).
3. **Trusting a clear pick** (a counterfactual from the baseline runs): where the pick's trial beat both
   neighbouring factors by a log-loss margin of at least ``m``, the cosine at the pick alone (its run is in the
   grid); elsewhere the agent.
4. **A learned correction of the pick** (out of fold, folds grouped by task): ridge regression or boosted trees
   predict, from the shape of the five trial scores (log score over the lowest, which trials diverged, SGD or
   not, the pick's score over the initial loss), the cosine's log loss ratio at the pick and at one grid step
   either side; the fit starts at the predicted best of the three.

Every ratio is the geometric mean over runs of the final validation loss over the tuned cosine's, each loss
floored at 1e-3 of the task's initial validation loss as the evaluation report does ("within 2%" is not floored,
as in the report's targets); "below" and "harm" compare
with the constant LR at the user's LR (harm: more than 2% worse).

    ganno-evaluate configs/evaluate_dev.yaml agent.path=default \\
        "baselines_from=[benchmarks/results/dev_suite_baselines.jsonl.gz]" workers=2 out_dir=runs/R5_dev
    # the same for dev_deep, then:
    PYTHONPATH=. python benchmarks/search_pick_diagnostics.py runs/R5_dev runs/R5_dev_deep \\
        --out benchmarks/results/search_pick_diagnostics.md
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from report import write_report
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GroupKFold

from ganno_lightning.layerwise.lr_search import DEFAULT_FACTORS
from ganno_lightning.trials.pool import read_log

LOSS_FLOOR = 1e-3  # x the task's initial validation loss, as agents/evaluation/analysis.py floors ratios
MARGINS = (0.05, 0.1, 0.2, 0.3)
SHIFTS = (-1, 0, 1)


@dataclass
class Run:
    """One agent run from the user's LR, with what the baselines say about its task and seed."""

    task: str
    family: str
    pick: float                 # the search's factor
    scores: dict[float, float]  # each factor's trial score (inf: diverged)
    sgd: bool
    initial: float              # the task's initial validation loss
    agent: float
    constant: float             # the constant LR at the user's LR
    cosine: dict[float, float]  # the cosine's final loss per grid factor (widened grids included)

    @property
    def floor(self) -> float:
        return LOSS_FLOOR * self.initial

    def log_ratio(self, loss: float) -> float:
        """log(loss / tuned cosine's), both floored (a diverged run counts as 1e9)."""
        best = min(self.cosine.values())
        return math.log(max(min(loss, 1e9), self.floor) / max(best, self.floor))

    def shifted(self, steps: int) -> float | None:
        """The grid factor ``steps`` grid points from the pick (``None`` off the grid)."""
        grid = sorted(self.cosine)
        if self.pick not in grid:
            return None
        index = grid.index(self.pick) + steps
        return grid[index] if 0 <= index < len(grid) else None


def _loss(run: dict) -> float:
    loss = run.get("final_val_loss")
    return loss if run["status"] == "ok" and loss is not None and math.isfinite(loss) else math.inf


def load_runs(out_dir: str) -> list[Run]:
    """The agent's runs from the user's LR of one evaluation, with their tasks' cosine grids."""
    runs = read_log(str(Path(out_dir) / "runs.jsonl")).values()
    cosine: dict = defaultdict(dict)
    constant: dict = {}
    for run in runs:
        key = (run["task"], run["seed"])
        if run["method"] == "cosine":
            cosine[key][run["lr_factor"]] = _loss(run)
        elif run["method"] == "constant" and run["lr_factor"] == 1.0:
            constant[key] = _loss(run)
    found = []
    for run in runs:
        key = (run["task"], run["seed"])
        if run["method"] != "agent" or run["lr_factor"] != 1.0 or not run.get("lr_search") or key not in constant:
            continue
        scores = {float(f): (s if s is not None and math.isfinite(s) else math.inf)
                  for f, s in run["lr_search"]["scores"].items()}
        found.append(Run(run["task"], run["task"].split("#")[0], float(run["lr_search"]["factor"]), scores,
                         "sgd" in run["task_name"], run["initial_val_loss"], _loss(run), constant[key], cosine[key]))
    if not found:
        sys.exit(f"{out_dir}: no agent run with an initial LR search (evaluate with the search on)")
    return found


def features(run: Run) -> list[float]:
    """The shape of the trial scores, as a callback would see it."""
    scores = [run.scores.get(f, math.inf) for f in DEFAULT_FACTORS]
    lowest = min(scores)
    shape = [min(math.log(s / lowest), 3.0) if math.isfinite(s) else 3.0 for s in scores]
    diverged = [float(not math.isfinite(s)) for s in scores]
    return shape + diverged + [float(run.sgd), math.log(lowest / run.initial)]


def within_2pct(run: Run, loss: float) -> bool:
    """At most 2% above the tuned cosine's loss, unfloored (the report's target)."""
    return loss <= 1.02 * min(run.cosine.values())


def outcome(runs: list[Run], losses: list[float]) -> str:
    logs = [run.log_ratio(loss) for run, loss in zip(runs, losses)]
    within = sum(within_2pct(run, loss) for run, loss in zip(runs, losses))
    below = sum(loss < run.constant for run, loss in zip(runs, losses))
    harm = sum(loss > 1.02 * run.constant for run, loss in zip(runs, losses))
    return f"{math.exp(float(np.mean(logs))):.3f} | {within} | {below} | {harm}"


def learned_picks(runs: list[Run], model: str) -> list[float]:
    """Out of fold: the grid factor among the pick and its neighbours with the lowest predicted log ratio."""
    x = np.array([features(run) for run in runs])
    targets = {s: np.array([min(run.log_ratio(run.cosine[f]), 5.0) if (f := run.shifted(s)) else 5.0
                            for run in runs]) for s in SHIFTS}
    predicted = {s: np.zeros(len(runs)) for s in SHIFTS}
    groups = [run.task for run in runs]
    for train, test in GroupKFold(n_splits=5).split(x, groups=groups):
        for s in SHIFTS:
            regressor = (RidgeCV(alphas=np.logspace(-2, 3, 12)) if model == "ridge" else
                         HistGradientBoostingRegressor(max_depth=3, max_iter=100, learning_rate=0.05,
                                                       min_samples_leaf=10, random_state=0))
            predicted[s][test] = regressor.fit(x[train], targets[s][train]).predict(x[test])
    picks = []
    for i, run in enumerate(runs):
        shift = min(SHIFTS, key=lambda s: (predicted[s][i], abs(s)))
        picks.append(run.shifted(shift) or run.pick)
    return picks


def suite_lines(name: str, runs: list[Run]) -> list[str]:
    lines = [f"## {name} ({len(runs)} runs from the user's LR)", "",
             "| family | runs | pick = tuned cosine's best factor | log2(pick / best), mean | median |",
             "|---|---:|---:|---:|---:|"]
    by_family: dict = defaultdict(list)
    for run in runs:
        by_family[run.family].append(run)
    for family, members in sorted(by_family.items()):
        offsets = [math.log2(run.pick / min(run.cosine, key=run.cosine.get)) for run in members]
        right = sum(abs(o) < 1e-9 for o in offsets)
        lines.append(f"| {family} | {len(members)} | {right} | {np.mean(offsets):+.2f} | {np.median(offsets):+.2f} |")
    lines += ["", "| the search's pick | runs | agent within 2% of the tuned cosine | cosine at the pick within 2% | "
              "agent below the cosine at the pick |", "|---|---:|---:|---:|---:|"]
    for label, right in (("the tuned cosine's best factor", True), ("another factor", False)):
        members = [run for run in runs if (run.pick == min(run.cosine, key=run.cosine.get)) == right]
        lines.append(f"| {label} | {len(members)} | "
                     f"{sum(within_2pct(run, run.agent) for run in members)} | "
                     f"{sum(within_2pct(run, run.cosine.get(run.pick, math.inf)) for run in members)}"
                     f" | {sum(run.agent < run.cosine.get(run.pick, math.inf) for run in members)} |")
    at_pick = [run.cosine.get(run.pick, math.inf) for run in runs]
    lines += ["", "| start (and what runs after it) | runs not the agent | ratio to the tuned cosine | within 2% | "
              "below the constant LR | harm |", "|---|---:|---:|---:|---:|---:|",
              f"| the agent after the search (shipped) | 0 | {outcome(runs, [run.agent for run in runs])} |",
              f"| the cosine at the pick, everywhere | {len(runs)} | {outcome(runs, at_pick)} |"]
    for margin in MARGINS:
        trusted = [_margin(run) >= margin for run in runs]
        losses = [cos if trust else run.agent for run, cos, trust in zip(runs, at_pick, trusted)]
        lines.append(f"| the cosine at a pick that beat its neighbours by >= {margin} in log loss, else the agent "
                     f"| {sum(trusted)} | {outcome(runs, losses)} |")
    for model in ("ridge", "boosted trees"):
        picks = learned_picks(runs, "ridge" if model == "ridge" else "trees")
        losses = [run.cosine.get(p, math.inf) for run, p in zip(runs, picks)]
        lines.append(f"| the cosine at a learned shift of the pick ({model}, out of fold) | {len(runs)} | "
                     f"{outcome(runs, losses)} |")
    return lines + [""]


def _margin(run: Run) -> float:
    """How far, in log loss, the pick's trial beat its neighbouring factors' (9: a neighbour diverged)."""
    factors = list(DEFAULT_FACTORS)
    if run.pick not in factors or not math.isfinite(run.scores.get(run.pick, math.inf)):
        return 0.0
    index = factors.index(run.pick)
    neighbours = [run.scores.get(factors[j], math.inf) for j in (index - 1, index + 1) if 0 <= j < len(factors)]
    return min(math.log(s / run.scores[run.pick]) if math.isfinite(s) else 9.0 for s in neighbours)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dirs", nargs="+", help="evaluation out_dirs of a deployment with the LR search on")
    parser.add_argument("--out", default="benchmarks/results/search_pick_diagnostics.md")
    args = parser.parse_args(argv)
    lines = ["# When is the initial LR search's pick right, and does the agent help after it? (issue #18)", "",
             f"Command: `PYTHONPATH=. python benchmarks/search_pick_diagnostics.py "
             f"{shlex.join(sys.argv[1:] if argv is None else argv)}`", ""]
    for out_dir in args.out_dirs:
        lines += suite_lines(Path(out_dir).name, load_runs(out_dir))
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
