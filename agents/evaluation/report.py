"""The Markdown report and the plots."""

import math
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig

from ganno_lightning.agents.evaluation.analysis import (
    FAR_FROM_BEST,
    LEARNED_SHARE,
    SWEPT_COSINE,
    agent_wins,
    method_names,
    noise_floor,
    run_targets,
    task_value,
    unlearned_tasks,
    yardsticks,
)
from ganno_lightning.agents.evaluation.plan import Condition, conditions_of, noise_method, peer_name
from ganno_lightning.agents.peers import PEERS


#: Column titles of the yardsticks scored on the agent's targets (``analysis.yardsticks``).
YARDSTICK_TITLES = {"cosine@tuned": "tuned cosine", SWEPT_COSINE: "swept cosine"}


def _fmt(value: Optional[float], digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}g}"


def _count(k: int, n: int) -> str:
    return f"{k}/{n}"


SUMMARY_COLUMNS = [
    "method", "final val loss (mean)", "val acc (mean)", "loss / tuned cosine (median)", "diverged runs",
    "reached target (runs)", "steps to target (median)", "agent < method (tasks)", "agent <= method (tasks)",
    "agent within {within} (tasks)",
]


def summary_table(cfg: DictConfig, rows: Dict[str, Any]) -> str:
    """One condition's summary as a Markdown table (the columns of :data:`SUMMARY_COLUMNS`)."""
    within = f"{cfg.within * 100:g}%"
    header = [c.format(within=within) for c in SUMMARY_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, r in rows.items():
        n = r["tasks"]
        mean = _fmt(r["mean_final_val_loss"])
        if r["finite_tasks"] < n:
            mean += f" ({n - r['finite_tasks']} task(s) inf)"
        diverged = _count(r["diverged_runs"], r["runs"]) + (f", {r['failed_runs']} failed" if r["failed_runs"] else "")
        is_agent = method == "agent"
        cells = [
            method, mean, _fmt(r["mean_final_val_acc"], 3), _fmt(r["median_ratio_to_tuned_cosine"], 3), diverged,
            _count(r["reached_target"], r["runs_with_target"]), _fmt(r["median_steps_to_target"]),
            "—" if is_agent else _count(r["agent_better"], n),
            "—" if is_agent else _count(r["agent_not_worse"], n),
            "—" if is_agent else _count(r["agent_within"], n),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def task_table(cfg: DictConfig, tasks: Dict[str, Any]) -> str:
    """One condition's per-task table: seed-mean final val loss of every method, and the target checks."""
    within = f"{cfg.within * 100:g}%"
    methods = method_names(cfg.schedules, cfg.peers)
    header = ["task", "layers", "task LR (x1)", *methods, "agent steps to target (per seed)", "agent < constant",
              "agent <= tuned cosine", f"agent within {within} of tuned cosine"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task_id, t in tasks.items():
        agent = task_value(t, "agent")
        cells = [f"`{task_id}` {t['name']}", str(t["num_layers"]), _fmt(t["base_lr"], 2)]
        for method in methods:
            cell = _fmt(task_value(t, method))
            if method.endswith("@tuned"):
                factors = Counter(s["methods"][method]["lr_factor"] for s in t["seeds"].values())
                cell += " (" + ", ".join(f"x{f:g}" for f, _ in factors.most_common()) + ")"
            cells.append(cell)
        steps = [s["methods"]["agent"]["steps_to_target"] for s in t["seeds"].values()]
        cells.append(", ".join("never" if x is None else str(x) for x in steps))
        cells.append("yes" if agent_wins(agent, task_value(t, "constant@init"), strict=True) else "no")
        cells.append("yes" if agent_wins(agent, task_value(t, "cosine@tuned")) else "no")
        cells.append("yes" if agent_wins(agent, task_value(t, "cosine@tuned"), margin=cfg.within) else "no")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_table(targets: List[Dict[str, Any]]) -> str:
    lines = ["| target | condition | measure | tasks | share |", "|---|---|---|---|---|"]
    for t in targets:
        share = "n/a" if t["percent"] is None else f"{t['percent']:.0f}%"
        lines.append(f"| {t['target']} | {t['condition']} | {t['comparison']} | {t['count']}/{t['tasks']} | {share} |")
    return "\n".join(lines)


def run_targets_table(rows: List[Dict[str, Any]], references: Optional[Dict[str, List[Dict[str, Any]]]] = None) -> str:
    """Issue #18's targets over task x seed runs (see ``analysis.run_targets``).

    ``references``: by column title, the same targets scored for another method in the agent's
    place (the tuned cosine: how far a schedule tuned on the scored loss itself gets; the constant
    LR nudged by 3%: what chance alone scores).
    """
    references = references or {}
    shares = {title: {(r["condition"], r["target"]): r for r in rows_} for title, rows_ in references.items()}
    lines = ["| condition | runs where | holds in | share | goal |" + "".join(f" {t} |" for t in references),
             "|---|---|---|---|---|" + "---|" * len(references)]
    for r in rows:
        line = f"| {r['condition']} | {r['target']} | {r['count']}/{r['runs']} | {r['percent']:.0f}% | {r['goal']} |"
        for by_target in shares.values():
            ref = by_target.get((r["condition"], r["target"]))
            line += f" {ref['percent']:.0f}% |" if ref else " — |"
        lines.append(line)
    return "\n".join(lines)


def paired_table(rows: Dict[str, Any]) -> str:
    """The agent against each method over task x seed pairs (see ``analysis.paired``)."""
    lines = ["| agent vs | loss ratio agent/method (95% CI) | wins / ties / losses | harm (> 2% worse) |",
             "|---|---|---|---|"]
    for method, row in rows.items():
        low, high = row["interval"]
        lines.append(f"| {method} | {row['ratio']:.3f} ({low:.3f}-{high:.3f}) | "
                     f"{row['wins']} / {row['ties']} / {row['losses']} of {row['pairs']} | {row['harms']} |")
    return "\n".join(lines)


def family_table(rows: Dict[str, Dict[str, Any]]) -> str:
    """The agent against each method within each family (see ``analysis.paired_by_family``)."""
    methods = list(next(iter(rows.values()), {}))
    lines = ["| family | " + " | ".join(f"agent/{m} (95% CI), harm" for m in methods) + " |",
             "|---|" + "---|" * len(methods)]
    for family, by_method in rows.items():
        cells = [f"{r['ratio']:.3f} ({r['interval'][0]:.3f}-{r['interval'][1]:.3f}), {r['harms']} of {r['pairs']}"
                 for r in by_method.values()]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(cfg: DictConfig, path: Path, comparisons, summary, targets, runs, plots, seconds: float,
                 paired: Optional[Dict[str, Any]] = None, grids: Optional[Dict[str, List[float]]] = None,
                 by_family: Optional[Dict[str, Any]] = None) -> str:
    """Write ``report.md`` and return its text."""
    within = f"{cfg.within * 100:g}%"
    reference = "the constant LR at the condition's initial LR" if cfg.target.reference == "constant" \
        else "the LR-grid-tuned cosine"
    failed = [r for r in runs.values() if r["status"] == "failed"]
    parts = [
        "# GANNO agent vs handcrafted LR schedules" + (" and LR-free peers" if cfg.peers else ""),
        "",
        f"Agent: `{cfg.agent.path}` (exploration `{cfg.agent.exploration}`{_agent_overrides(cfg.agent)}). Suite: "
        + ", ".join(f"{e.family} ({e.split}, {e.tasks} task(s)" + (f", {e.steps} steps" if e.steps is not None else "")
                    + ")" for e in cfg.suite)
        + f"; seeds {list(cfg.seeds)}; {cfg.steps} optimizer steps per run (unless an entry sets its own), validation every "
        f"{cfg.val_every}; "
        f"LR grid x{', x'.join(f'{f:g}' for f in cfg.lr_grid)} of each task's sampled LR. "
        f"{len(runs)} runs, {seconds / 60:.1f} min.",
    ]
    unlearned = {c: ids for c, ids in unlearned_tasks(comparisons).items() if ids}
    parts += ["", f"Tasks that no method learned (final val loss, mean over seeds, at least {LEARNED_SHARE:g}x the "
              "initial for every method): " + ("; ".join(f"{c}: {', '.join(ids)}" for c, ids in unlearned.items())
                                               if unlearned else "none.")]
    if grids:
        widened = [key for key, factors in grids.items() if len(factors) > len(set(cfg.lr_grid))]
        parts += ["", f"Tuning grids widened because the best LR of some seed sat at an edge: {len(widened)} of "
                  f"{len(grids)} (task, schedule) pairs" + (f", e.g. `{widened[0]}` to x{min(grids[widened[0]]):g}-"
                                                           f"x{max(grids[widened[0]]):g}." if widened else ".")]
        if not cfg.extend_grid:
            parts[-1] = "Tuning grids were not widened (`extend_grid: false`): a best LR may sit at the grid's edge."
    if len(cfg.seeds) < 3:
        parts += ["", f"**Only {len(cfg.seeds)} seed(s): a smoke test, not an evaluation (use 3 or more).**"]
    if failed:
        parts += ["", f"**{len(failed)} run(s) failed with an error (counted as inf loss)**, e.g. "
                  f"`{failed[0]['id']}`: {failed[0]['reason']}"]
    parts += [
        "",
        "## Targets",
        "",
        targets_table(targets),
        "",
        "Per run (task x seed; a start is too high or too low when it is at least "
        f"{FAR_FROM_BEST:g}x from the task's calibrated best LR). The column `tuned cosine` scores the tuned "
        "cosine (its LR picked per task and seed by the very loss it is scored on) in the agent's "
        "place: a yardstick for the goals, which it too can miss. The column `swept cosine` scores the cosine at "
        "the grid LR the task's other seeds favour (fewest divergences, then the lowest mean log loss): what a "
        "user's LR sweep on a few seeds delivers, chosen without the loss it is scored on."
        + (" The columns `constant@init_x<n>` score the constant LR at n times the run's LR (`noise_factors`): "
           "a change too small to matter, so what it beats or harms is chance, the floor under the agent's "
           "shares; `harm beyond noise` counts the agent's runs more than 2% worse than all of those constant LRs."
           if cfg.noise_factors else ""),
        "",
        run_targets_table(run_targets(cfg, comparisons), {
            **{YARDSTICK_TITLES[method]: rows for method, rows in yardsticks(cfg, comparisons).items()},
            **noise_floor(cfg, comparisons),
        }),
        "",
        "## How to read this",
        "",
        "- Every method of a task and seed starts from the same weights and sees the same batches. "
        "`agent`: `GANNOCallback(agent)` from the condition's initial LR, no scheduler underneath (the agent's "
        "own LR prior where its file records one). "
        "`<schedule>@init`: the schedule at the condition's initial LR. `<schedule>@tuned`: per task and seed, "
        "the grid LR with the lowest final validation loss (the chosen multipliers are in the per-task tables).",
        "- Conditions: `init_lr_x<f>` starts from the task's sampled LR times f (x10 / x0.1: 10x too high / low); "
        "`deeper_x2` uses networks exactly twice as deep as the deepest of the family's meta-training range.",
        "- **Tuning favours the baselines**: `@tuned` picks its LR by the same validation loss it is then scored on "
        "(and gets one run per grid point), while the agent runs once and is never tuned"
        + (_lr_search_cost(runs) or "."),
        "- Per task, a method's loss is the mean over seeds of the final validation loss; a diverged or failed run "
        "(non-finite loss) is inf, so any divergence makes that task a loss for the method.",
        "- `final val loss (mean)`: mean over tasks with a finite loss (the others are counted). "
        "`val acc (mean)`: argmax accuracy of the final weights, classifiers only. "
        "`loss / tuned cosine (median)`: median over tasks of the method's loss divided by the tuned cosine's "
        "(scale-free across families; < 1 is better).",
        f"- `reached target`: runs whose validation loss reached the target: {cfg.target.factor:g} x the final "
        f"validation loss of {reference} (same task and seed); `steps to target`: the first validation check at "
        "which it did (median over the runs that did).",
        f"- `agent < method` / `agent <= method` / `agent within {within}`: tasks where the agent's loss is lower than / "
        f"at most / at most {1 + cfg.within:g} x the method's.",
    ]
    if cfg.peers:
        with_lr = [f"`{p}`" for p in cfg.peers if PEERS[p].uses_lr] or ["none"]
        lr_free = [f"`{p}`" for p in cfg.peers if not PEERS[p].uses_lr] or ["none"]
        parts.append(
            "- `peer:<name>`: the module's optimizer replaced by an LR-free or adaptive one that users pick instead of "
            f"tuning (`ganno_lightning.agents.peers`), never tuned. From the condition's initial LR: {', '.join(with_lr)}; "
            f"LR-free (lr=1 in every condition, so one run per task and seed): {', '.join(lr_free)}.")
    if paired:
        parts.append(
            "- Paired comparison: per task and seed, the ratio of the agent's final validation loss to the method's "
            "(the same weights and batches). `loss ratio`: their geometric mean over every pair (< 1: the agent is "
            "better), with a 95% bootstrap interval that resamples tasks, then seeds within a task (an interval "
            "containing 1 decides nothing). A tie: within 0.5%, or both losses below 1e-3 of the task's initial "
            "validation loss. `harm`: pairs where the agent ends more than 2% worse; a diverged run counts as a "
            "100x loss for its method.")
    for condition in conditions_of(cfg):
        parts += ["", f"## {condition.name}", "", summary_table(cfg, summary[condition.name]), ""]
        if paired:
            parts += [paired_table(paired[condition.name]), ""]
        if by_family and len(by_family[condition.name]) > 1:
            parts += ["Per family (the same paired comparison within each):", "",
                      family_table(by_family[condition.name]), ""]
        parts += ["Per task (final val loss, mean over seeds):", "", task_table(cfg, comparisons[condition.name])]
        for plot in plots.get(condition.name, []):
            parts += ["", f"![{plot.stem}]({plot.name})"]
    text = "\n".join(parts) + "\n"
    path.write_text(text)
    return text


# ------------------------------------------------------------------------------------------------
# Plots


_COLORS = {"constant": "tab:blue", "step_decay": "tab:orange", "cosine": "tab:green", "warmup_cosine": "tab:red"}
_PEER_COLORS = {"schedulefree_adamw": "tab:purple", "prodigy": "tab:brown", "prodigy_cosine": "tab:pink",
                "dadapt_adam": "tab:olive", "adam_hd": "tab:cyan"}


def plot_loss_curves(cfg: DictConfig, condition: Condition, tasks: Dict[str, Any], runs, path: Path) -> Path:
    """Validation-loss curves of every method on every task of ``condition`` (first seed), one panel per task.

    Solid lines: schedules at the initial LR; dashed: tuned; dash-dotted: peers; black: the agent; an ``x`` marks where
    a run diverged; the dotted line is the steps-to-target target. The noise floor's nudged constant LRs are left out
    (they would overlay the constant LR's line).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    seed = str(cfg.seeds[0])
    n = len(tasks)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols + 1.8, 3.3 * rows), squeeze=False)
    nudged = {noise_method(n) for n in cfg.noise_factors}
    for ax, (task_id, task) in zip(axes.flat, tasks.items()):
        for method, entry in task["seeds"][seed]["methods"].items():
            if method in nudged or method == SWEPT_COSINE:  # the swept cosine is one of the grid's cosine runs
                continue
            curve = runs[entry["run"]]["curve"]
            points = [(s, v) for s, v in curve if math.isfinite(v)]
            if method == "agent":
                style = {"color": "black", "linewidth": 2.2, "zorder": 3}
            elif peer_name(method) is not None:
                style = {"color": _PEER_COLORS.get(peer_name(method)), "linewidth": 1.2, "linestyle": "-."}
            else:
                schedule, kind = method.split("@")
                style = {"color": _COLORS.get(schedule), "linewidth": 1.2, "linestyle": "-" if kind == "init" else "--"}
            (line,) = ax.plot([p[0] for p in points], [p[1] for p in points], label=method, **style)
            if entry["status"] != "ok" and points:
                ax.plot(*points[-1], marker="x", markersize=8, color=line.get_color())
        target = task["seeds"][seed]["target"]
        if target is not None:
            ax.axhline(target, color="grey", linewidth=0.8, linestyle=":")
        ax.set_yscale("log")
        ax.set_title(f"{task_id}\n{task['name']}", fontsize=7)
        ax.set_xlabel("optimizer step", fontsize=7)
        ax.set_ylabel("val loss", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7)
    fig.suptitle(f"{condition.name}: validation loss (seed {seed}; dotted: target; x: diverged)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / (4.2 * cols + 1.8), 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


#: The comparisons the per-task paired plot shows: doing nothing, and the tuned schedule users aim for.
PAIRED_PLOT_METHODS = ("constant@init", "cosine@tuned", "constant@tuned")


def plot_paired(rows: Dict[str, Any], title: str, path: Path) -> Path:
    """Per task, the agent/method loss ratio over its seeds with its 95% interval, one panel per method.

    A point left of the line at 1 is a task where the agent ends lower; an interval that crosses
    it is a task where the seeds do not decide.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    methods = [m for m in PAIRED_PLOT_METHODS if m in rows]
    tasks = [t["task"] for t in rows[methods[0]]["tasks"]]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 0.28 * len(tasks) + 1.6), sharey=True,
                             squeeze=False)
    for ax, method in zip(axes[0], methods):
        by_task = {t["task"]: t for t in rows[method]["tasks"]}
        ratios = [by_task[task]["ratio"] for task in tasks]
        low = [r - by_task[task]["interval"][0] for r, task in zip(ratios, tasks)]
        high = [by_task[task]["interval"][1] - r for r, task in zip(ratios, tasks)]
        colors = ["tab:green" if by_task[t]["interval"][1] < 1 else "tab:red" if by_task[t]["interval"][0] > 1
                  else "tab:gray" for t in tasks]
        ax.errorbar(ratios, range(len(tasks)), xerr=[low, high], fmt="none", ecolor=colors, elinewidth=1.2)
        ax.scatter(ratios, range(len(tasks)), c=colors, s=18, zorder=3)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        whole = rows[method]
        ax.set_title(f"agent / {method}\n{whole['ratio']:.2f} ({whole['interval'][0]:.2f}-{whole['interval'][1]:.2f}), "
                     f"W/T/L {whole['wins']}/{whole['ties']}/{whole['losses']}", fontsize=9)
        ax.set_xlabel("final val loss ratio (< 1: agent better)")
    axes[0][0].set_yticks(range(len(tasks)), tasks, fontsize=8)
    axes[0][0].invert_yaxis()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_schedules(cfg: DictConfig, condition: Condition, tasks: Dict[str, Any], runs, out_dir: Path) -> List[Path]:
    """The agent's per-layer LR schedule (``LRSchedule.plot``) on the first ``schedule_plots`` tasks of each family."""
    from ganno_lightning.layerwise.schedule import LRSchedule

    per_family: Counter = Counter()
    paths = []
    for task_id, task in tasks.items():
        family = task_id.split("#")[0]
        if per_family[family] >= cfg.schedule_plots:
            continue
        run = runs[task["seeds"][str(cfg.seeds[0])]["methods"]["agent"]["run"]]
        state = run.get("schedule")
        if not state or not state.get("steps"):
            continue
        per_family[family] += 1
        schedule = LRSchedule(state["layer_names"])
        schedule.load_state_dict(state)
        paths.append(schedule.plot(out_dir / f"schedule_{condition.name}_{_slug(task_id)}.png"))
    return paths


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _lr_search_cost(runs: Dict[str, Dict[str, Any]]) -> Optional[str]:
    """What an initial LR search added to the agent's runs (``None`` when none ran), to be read beside the tuning."""
    searches = [r["lr_search"] for r in runs.values() if r.get("lr_search")]
    if not searches:
        return None
    # (results written before the trials' steps were recorded name the factors only)
    trial_steps = sorted({f"{len(s['scores']) * s['steps']} trial steps" if "steps" in s else
                          f"trials at {len(s['scores'])} LR factors" for s in searches})
    return (f"; but with `lr_search` ({len(searches)} agent runs) the agent first trains {' or '.join(trial_steps)} "
            "from the initial weights, scored on validation batches: it is tuned too, on a short horizon, and "
            "those steps come on top of the run's own.")


def _agent_overrides(agent: Any) -> str:
    """The agent settings an evaluation changed from the agent's own, as the report's header names them."""
    settings = {"interval": agent.interval, "decision_steps": agent.decision_steps, "schedule": agent.schedule,
                "prior": agent.prior, "prior_above": agent.prior_above, "lr_search": agent.lr_search,
                "scale_bounds": agent.scale_bounds, "min_change": agent.min_change,
                "recover_on_spike": agent.recover_on_spike, "spike_factor": agent.spike_factor}
    return "".join(f", {key} `{value}`" for key, value in settings.items() if value is not None)
