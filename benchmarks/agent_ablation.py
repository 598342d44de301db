"""Issue #18's ablation table: several agents' dev-suite evaluations side by side, recipe by recipe.

Each evaluation is a ``ganno-evaluate`` out_dir (or a committed results folder) holding
``results.json`` or ``summary.json``. Rows are named ``recipe_sN`` (one meta-training seed each); the
table lists every row, then each recipe's mean over its seeds with the seeds' range, so one seed's
draw is never read as a recipe's effect.

    python benchmarks/agent_ablation.py --out benchmarks/results/agent_ablation.md \\
        shipped=benchmarks/results/dev_suite_default_agent_evaluation base_s0=runs/eval_pilots/base_s0 ...
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf
from report import write_report

from ganno_lightning.agents.evaluation.analysis import SWEPT_COSINE, run_targets
from ganno_lightning.agents.evaluation.plan import noise_method

CONDITION = "init_lr_x1"
# (column, run target's text in the report): the per-run shares of issue #18's targets
TARGETS = (
    ("< constant", "agent < constant LR"),
    ("harm", "agent > 1.02x constant LR (harm)"),
    ("<= 1.02x tuned cos", "agent <= 1.02x tuned cosine"),
    ("too high: <= 1.05x tuned cos", "start >= 3x the best LR: agent <= 1.05x tuned cosine"),
    ("too low: <= 1.05x tuned cos", "start <= 1/3 of the best LR: agent <= 1.05x tuned cosine"),
    ("near best: harm", "start within 3x of the best LR: agent > 1.02x constant LR (harm)"),
    ("< schedule-free", "agent < schedulefree_adamw"),
    ("< prodigy+cos", "agent < prodigy_cosine"),
    ("harm beyond noise", "(harm beyond noise)"),  # a suffix: the target names the noise factors
    ("diverged (constant did not)", "agent diverged where the constant LR did not"),
    ("long runs: < constant", "steps: agent < constant LR"),  # a suffix: "runs of >= 900 steps: ..."
)
RATIOS = (("vs constant@init", "constant@init"), ("vs tuned cosine", "cosine@tuned"))


def load(folder: Path) -> dict:
    for name in ("results.json", "summary.json"):
        if (folder / name).is_file():
            return json.loads((folder / name).read_text())
    raise SystemExit(f"{folder}: no results.json or summary.json (is it a ganno-evaluate out_dir?)")


def with_noise_floor(results: dict, floor: dict) -> dict:
    """``results`` with the noise-floor runs (``constant@init_x<n>``) of ``floor`` (an evaluation of the
    same suite with ``noise_factors``) added to its comparisons, so its agent's harm beyond noise counts."""
    factors = floor["config"].get("noise_factors") or []
    if not factors or "comparisons" not in results:
        return results
    nudged_methods = {noise_method(n) for n in factors}
    comparisons = json.loads(json.dumps(results["comparisons"]))
    for task_id, task in comparisons[CONDITION].items():  # the one condition the table reads
        for seed, entry in task["seeds"].items():
            nudged = floor["comparisons"].get(CONDITION, {}).get(task_id, {}).get("seeds", {}).get(seed)
            same = nudged is not None and (nudged["methods"]["constant@init"]["final_val_loss"]
                                           == entry["methods"]["constant@init"]["final_val_loss"])
            if not same:  # task ids are only indexes: another suite's task of the same id is another task
                raise SystemExit(f"--yardsticks: its evaluation lacks {CONDITION} {task_id} seed {seed}, or ran it "
                                 "with another constant-LR result: give an evaluation of the same suite and seeds.")
            entry["methods"].update({m: r for m, r in nudged["methods"].items() if m in nudged_methods})
    return {**results, "config": {**results["config"], "noise_factors": factors}, "comparisons": comparisons}


def row_values(results: dict, method: str = "agent") -> dict[str, float]:
    """One row: the shares of the targets, and the paired ratios (the agent's only; NaN for another method)."""
    targets = results["run_targets"]
    if "comparisons" in results:  # a full results.json: recount, so targets added since it was written show
        targets = run_targets(OmegaConf.create(results["config"]), results["comparisons"], method)
    shares = {t["target"]: 100 * t["count"] / t["runs"] if t["runs"] else math.nan
              for t in targets if t["condition"] == CONDITION}
    values = {column: shares.get(target, next((v for k, v in shares.items() if k.endswith(target)), math.nan))
              for column, target in TARGETS}
    paired = results["paired"][CONDITION]
    for column, reference in RATIOS:
        agent = method == "agent"
        values[column] = paired[reference]["ratio"] if agent else math.nan
        values[column + " CI"] = tuple(paired[reference]["interval"]) if agent else (math.nan, math.nan)
    return values


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evaluations", nargs="+", help="name=folder, e.g. early_s0=runs/eval_pilots/early_s0")
    parser.add_argument("--out", default="benchmarks/results/agent_ablation.md")
    parser.add_argument("--title", default="Issue #18 ablation on the dev suite")
    parser.add_argument("--suite", default="dev", help="the suite the evaluations ran, named in the text")
    parser.add_argument("--note", default="", help="a paragraph under the title (how the agents were trained)")
    parser.add_argument("--yardsticks", metavar="FOLDER", help="a full results.json's folder: also score the "
                        "baselines tuned per task and seed, the cosine swept on the other seeds, and cosine from the "
                        "user's LR, on the agent's targets; "
                        "where it was evaluated with noise_factors, also the nudged constant LRs (the noise floor), "
                        "and every agent's harm beyond that noise")
    args = parser.parse_args(argv)

    floor = load(Path(args.yardsticks)) if args.yardsticks else {"config": {}}
    if args.yardsticks and "comparisons" not in floor:
        raise SystemExit(f"--yardsticks {args.yardsticks}: needs a full results.json (a summary has no runs)")
    rows = {}
    for item in args.evaluations:
        name, _, folder = item.partition("=")
        if not folder:
            raise SystemExit(f"evaluations: expected name=folder, got {item!r}")
        rows[name] = row_values(with_noise_floor(load(Path(folder)), floor))
    yardsticks = {}
    if args.yardsticks:
        evaluated = {method for task in floor["comparisons"][CONDITION].values()
                     for seed in task["seeds"].values() for method in seed["methods"]}
        yardsticks = {f"({method}, yardstick)": row_values(floor, method)  # those its evaluation ran
                      for method in ("cosine@tuned", SWEPT_COSINE, "warmup_cosine@tuned", "constant@tuned",
                                     "cosine@init")
                      if method in evaluated}
        yardsticks.update({f"({method}, noise floor)": row_values(floor, method)
                           for method in map(noise_method, floor["config"].get("noise_factors") or [])})
    every = [*rows.values(), *yardsticks.values()]
    # a target no evaluation scored (long runs on a suite without them) gets no column
    columns = [c for c, _ in TARGETS if not all(math.isnan(v[c]) for v in every)] + [c for c, _ in RATIOS]
    header = "| agent | " + " | ".join(columns) + " |"
    rule = "|---" * (len(columns) + 1) + "|"

    def fmt(values: dict, column: str) -> str:
        value = values[column]
        if column in dict(RATIOS) and math.isnan(value):
            return "—"
        if column in dict(RATIOS):
            low, high = values[column + " CI"]
            return f"{value:.2f} ({low:.2f}-{high:.2f})"
        return "—" if math.isnan(value) else f"{value:.0f}%"

    lines = [f"# {args.title}", ""]
    if args.note:
        lines += [args.note, ""]
    lines += [f"Per run (task x seed) shares of issue #18's targets on the `{args.suite}` suite, from the user's LR "
              "(`init_lr_x1`; too high / too low: starts at least 3x from the task's calibrated best LR), and "
              "the paired loss ratio agent / method (geometric mean, 95% bootstrap interval; < 1: the agent "
              "is better). Goals: < constant >= 90%, harm <= 5%, the others >= 70%."
              + (" `harm beyond noise` (a diagnostic, not a goal): runs more than 2% worse than the constant LR "
                 "at every one of x1 and the noise factors of the user's LR; the `noise floor` rows score the "
                 "constant LR nudged by that factor in the agent's place: what chance alone beats and harms."
                 if floor["config"].get("noise_factors") else ""), "",
              "## Every agent", "", header, rule]
    for name, values in {**rows, **yardsticks}.items():
        lines.append(f"| {name} | " + " | ".join(fmt(values, c) for c in columns) + " |")

    recipes = defaultdict(list)
    for name, values in rows.items():
        recipes[re.sub(r"_s\d+$", "", name)].append(values)
    if any(len(v) > 1 for v in recipes.values()):
        lines += ["", "## Recipes: mean over meta-training seeds (range)", "",
                  "| recipe | seeds | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
        for recipe, members in recipes.items():
            cells = []
            for column in columns:
                values = [m[column] for m in members]
                if column in dict(RATIOS):  # geometric mean of the ratios
                    mean = math.exp(sum(math.log(v) for v in values) / len(values))
                    cells.append(f"{mean:.2f} ({min(values):.2f}-{max(values):.2f})")
                elif any(math.isnan(v) for v in values):  # a summary written before the target existed
                    cells.append("—")
                else:
                    mean = sum(values) / len(values)
                    cells.append(f"{mean:.0f}% ({min(values):.0f}-{max(values):.0f})")
            lines.append(f"| {recipe} | {len(members)} | " + " | ".join(cells) + " |")
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
