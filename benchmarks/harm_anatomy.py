"""Where an agent's harm comes from: its harmed runs against the rest, from evaluations' per-run results.

Issue #18's harm target counts runs where the agent ends more than 2% above the constant LR at the user's
LR. This splits an evaluation's runs (condition ``init_lr_x1``) into harmed and not harmed and, for each
group, says which way the agent moved the LRs (the layers' mean log2 scale, averaged over its decisions),
how sensitive the run is to the LR at all (the constant LR nudged by the suite's ``noise_factors``), how
many are "solved" (both losses below ``LOSS_FLOOR`` x the initial loss, where the paired statistics call
a tie), and which families the harm sits in.

    python benchmarks/harm_anatomy.py --out benchmarks/results/deploy_scale_bounds/harm_anatomy.md \\
        shipped_dev=runs/bounds_plain_dev shipped_dev_deep=runs/bounds_plain_dev_deep
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import Counter
from pathlib import Path

from report import write_report

from ganno_lightning.agents.evaluation.analysis import LOSS_FLOOR, task_family
from ganno_lightning.agents.evaluation.paired_stats import HARM_MARGIN

CONDITION = "init_lr_x1"
HARM = 1 + HARM_MARGIN  # harmed: more than 2% above the constant LR
MOVED = 0.2  # |mean log2 scale| above this: the agent raised (or cut) the LRs; below: it stayed near x1


def run_rows(results: dict) -> list[dict]:
    """One row per task x seed of ``CONDITION``: the agent's loss ratio to the constant LR and what it did."""
    runs = {run["id"]: run for run in results["runs"]}
    rows = []
    for task_id, task in results["comparisons"][CONDITION].items():
        for entry in task["seeds"].values():
            methods = entry["methods"]
            agent, constant = methods["agent"]["final_val_loss"], methods["constant@init"]["final_val_loss"]
            scales = runs[methods["agent"]["run"]]["schedule"]["scales"]  # per decision, per layer
            log_scale = statistics.fmean(statistics.fmean(math.log2(s) for s in step) for step in scales)
            initial = runs[methods["constant@init"]["run"]]["initial_val_loss"]
            nudged = [m["final_val_loss"] for name, m in methods.items() if name.startswith("constant@init_x")]
            rows.append({
                "family": task_family(task_id),
                "ratio": agent / constant if constant > 0 else math.inf,
                "log_scale": log_scale,
                # how far a 3% LR change alone moves this run's loss
                "sensitivity": max((_log_change(n, constant) for n in nudged), default=math.nan),
                "solved": agent < LOSS_FLOOR * initial and constant < LOSS_FLOOR * initial,
            })
    return rows


def _log_change(loss: float, reference: float) -> float:
    """|log(loss / reference)|; inf where either run diverged (or ended at zero)."""
    if 0 < min(loss, reference) and max(loss, reference) < math.inf:
        return abs(math.log(loss / reference))
    return math.inf


def group_line(name: str, rows: list[dict]) -> str:
    if not rows:
        return f"| {name} | 0 | | | | | | |"
    raised = sum(r["log_scale"] > MOVED for r in rows)
    cut = sum(r["log_scale"] < -MOVED for r in rows)
    sensitive = sum(r["sensitivity"] > math.log(HARM) for r in rows)
    median_sensitivity = statistics.median(r["sensitivity"] for r in rows)
    return (f"| {name} | {len(rows)} | {raised} | {cut} | {len(rows) - raised - cut} | {sensitive} | "
            f"{100 * (math.exp(median_sensitivity) - 1):.1f}% | {sum(r['solved'] for r in rows)} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evaluations", nargs="+", help="name=folder of a ganno-evaluate out_dir (its results.json)")
    parser.add_argument("--out", default="benchmarks/results/harm_anatomy.md")
    args = parser.parse_args(argv)
    lines = ["# Where the agent's harm comes from", "",
             f"Condition `{CONDITION}`; harmed: the agent ends more than {100 * (HARM - 1):.0f}% above the constant "
             f"LR. Raised / cut: the layers' mean log2 LR scale, averaged over the agent's decisions, above {MOVED} / "
             f"below -{MOVED}. Sensitive: the constant LR nudged by the suite's noise factors (3%) itself moves the "
             f"final loss by more than 2%. Solved: both losses below {LOSS_FLOOR:g} x the initial loss (a tie in the "
             "paired statistics, a harm in the target's count).", "",
             "| evaluation: runs | runs | raised | cut | near x1 | sensitive | median loss change from a 3% nudge "
             "| solved |", "|---|---|---|---|---|---|---|---|"]
    families: dict[str, Counter] = {}
    for spec in args.evaluations:
        name, _, folder = spec.partition("=")
        results = json.loads((Path(folder) / "results.json").read_text())
        rows = run_rows(results)
        harmed = [r for r in rows if r["ratio"] > HARM]
        lines += [group_line(f"{name}: harmed", harmed), group_line(f"{name}: not harmed", [r for r in rows
                                                                                             if r["ratio"] <= HARM])]
        families[name] = Counter(r["family"] for r in harmed)
    names = sorted({f for counts in families.values() for f in counts})
    lines += ["", "Harmed runs per family:", "", "| evaluation | " + " | ".join(names) + " |",
              "|---" * (len(names) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(str(counts[f]) for f in names) + " |" for name, counts in families.items()]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
