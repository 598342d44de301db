"""Analysis: per-seed comparisons, the summary and the headline targets."""

import math
import statistics
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig

from ganno_lightning.agents.evaluation.paired_stats import HARM_MARGIN, compare_paired
from ganno_lightning.agents.evaluation.plan import (
    conditions_of,
    grid_key,
    noise_method,
    peer_method,
    run_id,
    task_specs,
)
from ganno_lightning.agents.evaluation.run import task_best_lr
from ganno_lightning.agents.peers import PEERS


def steps_to_target(curve, target: Optional[float]) -> Optional[int]:
    """The step of the first validation check whose loss is at most ``target``; ``None`` if never.

    Args:
        curve: ``[(step, val_loss), ...]`` in step order.
        target: The target loss; ``None`` or non-finite (the reference diverged) gives ``None``.

    Example::

        >>> steps_to_target([(25, 2.0), (50, 1.2), (75, 0.9), (100, 1.1)], 1.0)
        75
        >>> steps_to_target([(25, 2.0), (50, 1.5)], 1.0) is None
        True
    """
    if target is None or not math.isfinite(target):
        return None
    for step, loss in curve:
        if loss is not None and math.isfinite(loss) and loss <= target:
            return int(step)
    return None


def method_names(schedules, peers=()) -> List[str]:
    """Row names of the report: ``agent``, ``<schedule>@init`` ..., ``<schedule>@tuned`` ..., ``peer:<name>`` ...

    Example::

        >>> method_names(["constant"], ["prodigy"])
        ['agent', 'constant@init', 'constant@tuned', 'peer:prodigy']
    """
    return ["agent", *[f"{s}@init" for s in schedules], *[f"{s}@tuned" for s in schedules],
            *[peer_method(p) for p in peers]]


#: The cosine at the LR a sweep on the task's *other* seeds picks (:func:`swept_factor`): what a user who
#: ran the LR grid on a few seeds would then train with. Unlike ``cosine@tuned``, chosen without the loss it
#: is scored on, so its shares on the targets say what a real LR sweep reaches.
SWEPT_COSINE = "cosine@swept"


def swept_factor(losses: Dict[float, List[float]], held: int) -> float:
    """The grid factor an LR sweep on every seed but the ``held``-th picks.

    Fewest non-finite losses on those seeds first, then the lowest mean log loss over their finite
    ones; ties go to the first factor.

    Args:
        losses: per grid factor, the final validation loss of each seed (same seed order for every factor).
        held: the index of the seed left out (the one the pick is scored on).

    Example::

        >>> swept_factor({1.0: [2.0, 1.0, 1.0], 3.0: [0.5, 2.0, 2.0]}, held=0)  # the others favour 1.0
        1.0
        >>> swept_factor({1.0: [2.0, 1.0, float("inf")], 3.0: [0.5, 2.0, 2.0]}, held=0)  # 1.0 diverged once
        3.0
    """
    def score(factor: float) -> tuple:
        others = [v for i, v in enumerate(losses[factor]) if i != held]
        finite = [math.log(v) for v in others if math.isfinite(v) and v > 0]
        return len(others) - len(finite), statistics.fmean(finite) if finite else math.inf

    return min(losses, key=score)


def compare(cfg: DictConfig, runs: Dict[str, Dict[str, Any]],
            grids: Optional[Dict[str, List[float]]] = None) -> Dict[str, Any]:
    """Per condition, task and seed: every method's final val loss, accuracy and steps to target.

    ``<schedule>@tuned`` is, per task and seed, the grid factor with the lowest final val loss
    (the first one on ties); ``cosine@swept`` (:data:`SWEPT_COSINE`; with the cosine schedule and two or
    more seeds) the cosine at the grid factor the task's other seeds favour; ``constant@init_x<n>`` is the
    constant LR at ``n`` (one of ``noise_factors``) times the condition's LR; ``peer:<name>`` is the peer's
    run from the condition's LR, or its one run when it is LR-free; the target is ``target.factor`` times
    the reference's final val loss.
    """
    grid = [float(f) for f in cfg.lr_grid]
    out: Dict[str, Any] = {}
    for condition in conditions_of(cfg):
        per_task: Dict[str, Any] = {}
        for spec in task_specs(cfg, condition.deeper):
            per_seed = {}

            def grid_of(schedule: str) -> List[float]:
                return (grids or {}).get(grid_key(spec["id"], schedule), grid)

            swept: Dict[int, Dict[str, Any]] = {}
            if "cosine" in cfg.schedules and len(cfg.seeds) > 1:
                by_factor = {f: [runs[run_id(spec["id"], seed, "cosine", f)] for seed in cfg.seeds]
                             for f in grid_of("cosine")}
                losses = {f: [r["final_val_loss"] for r in rs] for f, rs in by_factor.items()}
                swept = {seed: by_factor[swept_factor(losses, i)][i] for i, seed in enumerate(cfg.seeds)}
            for seed in cfg.seeds:
                def get(method: str, factor: float) -> Dict[str, Any]:
                    return runs[run_id(spec["id"], seed, method, factor)]

                chosen = {"agent": get("agent", condition.factor)}
                for s in cfg.schedules:
                    chosen[f"{s}@init"] = get(s, condition.factor)
                for s in cfg.schedules:
                    candidates = [get(s, f) for f in grid_of(s)]
                    chosen[f"{s}@tuned"] = min(candidates, key=lambda r: r["final_val_loss"])
                if swept:
                    chosen[SWEPT_COSINE] = swept[seed]
                for n in cfg.get("noise_factors", []):
                    chosen[noise_method(n)] = get("constant", condition.factor * n)
                for p in cfg.peers:
                    chosen[peer_method(p)] = get(peer_method(p), condition.factor if PEERS[p].uses_lr else 1.0)
                reference = chosen["constant@init" if cfg.target.reference == "constant" else "cosine@tuned"]
                target = reference["final_val_loss"] * cfg.target.factor
                target = target if math.isfinite(target) else None
                per_seed[str(seed)] = {
                    "target": target,
                    "methods": {
                        name: {
                            "run": r["id"],
                            "lr_factor": r["lr_factor"],
                            "final_val_loss": r["final_val_loss"],
                            "final_val_acc": r.get("final_val_acc"),
                            "status": r["status"],
                            "steps_to_target": steps_to_target(r["curve"], target),
                        }
                        for name, r in chosen.items()
                    },
                }
            first = runs[run_id(spec["id"], cfg.seeds[0], "agent", condition.factor)]
            per_task[spec["id"]] = {"name": first.get("task_name", spec["id"]), "num_layers": first.get("num_layers"),
                                    "base_lr": first.get("base_lr"), "initial_val_loss": first.get("initial_val_loss"),
                                    "best_lr": task_best_lr(spec), "steps": spec.get("steps", cfg.steps),
                                    "seeds": per_seed}
        out[condition.name] = per_task
    return out


#: A task is learned when some method's final val loss (mean over seeds) ends below this share of its initial loss.
LEARNED_SHARE = 0.8


def unlearned_tasks(comparisons: Dict[str, Any]) -> Dict[str, List[str]]:
    """Per condition, the tasks on which no method, tuned or not, got below ``LEARNED_SHARE`` x the initial loss.

    A suite should have none: a task every method leaves at its initial loss measures nothing.
    """
    out = {}
    for condition, tasks in comparisons.items():
        out[condition] = [
            task_id for task_id, task in tasks.items()
            if task["initial_val_loss"] and min(task_value(task, m) for m in next(iter(task["seeds"].values()))["methods"])
            >= LEARNED_SHARE * task["initial_val_loss"]
        ]
    return out


def task_value(task: Dict[str, Any], method: str, key: str = "final_val_loss") -> Optional[float]:
    """Mean over seeds; a diverged seed makes the task's loss ``inf`` (a loss for the method)."""
    values = [seed["methods"][method][key] for seed in task["seeds"].values()]
    if key == "final_val_loss":
        return math.inf if any(not math.isfinite(v) for v in values) else statistics.fmean(values)
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def agent_wins(agent: float, other: float, margin: float = 0.0, strict: bool = False) -> bool:
    # A diverged agent wins nothing; a diverged baseline loses to any finite agent.
    if not math.isfinite(agent):
        return False
    if not math.isfinite(other):
        return True
    return agent < other if strict else agent <= (1.0 + margin) * other


def summarise(cfg: DictConfig, comparisons: Dict[str, Any]) -> Dict[str, Any]:
    """Per condition and method: the summary-table metrics (see the report's legend)."""
    summary: Dict[str, Any] = {}
    for condition, tasks in comparisons.items():
        rows = {}
        n_tasks = len(tasks)
        for method in method_names(cfg.schedules, cfg.peers):
            losses = [task_value(t, method) for t in tasks.values()]
            agent = [task_value(t, "agent") for t in tasks.values()]
            cosine = [task_value(t, "cosine@tuned") for t in tasks.values()]
            accs = [a for a in (task_value(t, method, "final_val_acc") for t in tasks.values()) if a is not None]
            seeds = [s["methods"][method] for t in tasks.values() for s in t["seeds"].values()]
            targets = [s["target"] for t in tasks.values() for s in t["seeds"].values()]
            reached = [m["steps_to_target"] for m in seeds if m["steps_to_target"] is not None]
            ratios = [_ratio(a, c) for a, c in zip(losses, cosine)]
            finite = [x for x in losses if math.isfinite(x)]
            rows[method] = {
                "tasks": n_tasks,
                "mean_final_val_loss": statistics.fmean(finite) if finite else None,
                "finite_tasks": len(finite),
                "mean_final_val_acc": statistics.fmean(accs) if accs else None,
                "median_ratio_to_tuned_cosine": statistics.median(ratios) if ratios else None,
                "diverged_runs": sum(m["status"] == "diverged" for m in seeds),
                "failed_runs": sum(m["status"] == "failed" for m in seeds),
                "runs": len(seeds),
                "reached_target": len(reached),
                "runs_with_target": sum(t is not None for t in targets),
                "median_steps_to_target": statistics.median(reached) if reached else None,
                "agent_better": sum(agent_wins(a, m, strict=True) for a, m in zip(agent, losses)),
                "agent_not_worse": sum(agent_wins(a, m) for a, m in zip(agent, losses)),
                "agent_within": sum(agent_wins(a, m, margin=cfg.within) for a, m in zip(agent, losses)),
            }
        summary[condition] = rows
    return summary


def _ratio(value: float, reference: float) -> float:
    if not math.isfinite(value):
        return math.inf
    if not math.isfinite(reference):
        return 0.0  # finite against a diverged reference: as good as it gets
    return value / reference if reference > 0 else math.inf


def headline_targets(cfg: DictConfig, summary: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The project's targets, measured: (a) from the user's LR, (b) from a 10x wrong LR, (c) deeper nets."""
    out = []

    def add(label: str, condition: str, method: str, key: str, comparison: str) -> None:
        row = summary[condition][method]
        count, n = row[key], row["tasks"]
        out.append({"target": label, "condition": condition, "comparison": comparison, "count": count, "tasks": n,
                    "percent": 100.0 * count / n if n else None})

    within = f"{cfg.within * 100:g}%"
    for condition in conditions_of(cfg):
        if condition.deeper:
            add("(c) deeper nets", condition.name, "constant@init", "agent_better", "agent < constant LR")
        elif condition.factor == 1.0:
            add("(a) user's LR", condition.name, "constant@init", "agent_better", "agent < constant LR")
            add("(a) user's LR", condition.name, "cosine@tuned", "agent_not_worse", "agent <= tuned cosine")
        else:
            add(f"(b) LR x{condition.factor:g}", condition.name, "cosine@tuned", "agent_within",
                f"agent within {within} of tuned cosine")
    return out


#: Where a start counts as too high (too low): at least this factor above (below) the task's best LR.
FAR_FROM_BEST = 3.0


def run_targets(cfg: DictConfig, comparisons: Dict[str, Any], method: str = "agent") -> List[Dict[str, Any]]:
    """Issue #18's targets, over task x seed runs: the share of runs where each holds, per condition.

    Runs are split by where their initial LR starts relative to the task's calibrated best
    (``around_best`` suites): too high (at least ``FAR_FROM_BEST`` x above it), too low, near it
    (where a constant LR is already good, so harm shows most), and by length (runs at least 3x the
    config's ``steps``). Rows whose runs are absent are left out.

    ``method`` scores another method on the agent's targets instead (``"cosine@tuned"``: how far a
    schedule tuned per task and seed on the very loss it is scored on gets, a yardstick for the goals).

    With ``noise_factors``, a row of harm beyond the noise: runs where the method is more than 2%
    worse than the constant LR at every one of x1 and the noise factors of the run's LR.
    """
    noise = list(cfg.get("noise_factors", []))  # absent from results written before it existed
    nearby = ["constant@init", *(noise_method(n) for n in noise)]
    out = []
    for condition, tasks in comparisons.items():
        runs = []
        for task in tasks.values():
            start = (task["base_lr"] * next(iter(task["seeds"].values()))["methods"]["agent"]["lr_factor"]
                     / task["best_lr"]) if task.get("best_lr") and task.get("base_lr") else None
            for seed in task["seeds"].values():
                runs.append((start, task["steps"], {m: r["final_val_loss"] for m, r in seed["methods"].items()}))

        def add(label: str, goal: str, chosen, holds) -> None:
            chosen = [r for r in runs if chosen(r)]
            if chosen:
                count = sum(bool(holds(r[2])) for r in chosen)
                out.append({"condition": condition, "target": label, "goal": goal, "count": count,
                            "runs": len(chosen), "percent": 100.0 * count / len(chosen)})

        every = lambda r: True  # noqa: E731
        harmed = lambda m: m[method] > (1 + HARM_MARGIN) * m["constant@init"]  # noqa: E731
        add("agent < constant LR", ">= 90%", every, lambda m: m[method] < m["constant@init"])
        add(f"agent > {1 + HARM_MARGIN:g}x constant LR (harm)", "<= 5%", every, harmed)
        add("agent <= 1.02x tuned cosine", ">= 70%", every, lambda m: m[method] <= 1.02 * m["cosine@tuned"])
        add(f"start >= {FAR_FROM_BEST:g}x the best LR: agent <= 1.05x tuned cosine", ">= 70%",
            lambda r: r[0] is not None and r[0] >= FAR_FROM_BEST, lambda m: m[method] <= 1.05 * m["cosine@tuned"])
        add(f"start <= 1/{FAR_FROM_BEST:g} of the best LR: agent <= 1.05x tuned cosine", ">= 70%",
            lambda r: r[0] is not None and r[0] <= 1 / FAR_FROM_BEST, lambda m: m[method] <= 1.05 * m["cosine@tuned"])
        add(f"start within {FAR_FROM_BEST:g}x of the best LR: agent > {1 + HARM_MARGIN:g}x constant LR (harm)", "<= 5%",
            lambda r: r[0] is not None and 1 / FAR_FROM_BEST < r[0] < FAR_FROM_BEST, harmed)
        if noise and method not in nearby:  # a nudged constant LR is not scored against itself
            add(f"agent > {1 + HARM_MARGIN:g}x the constant LR at each of x{', x'.join(f'{n:g}' for n in [1, *noise])} "
                "(harm beyond noise)", "diagnostic", every,
                lambda m: m[method] > (1 + HARM_MARGIN) * max(m[k] for k in nearby))
        add("agent diverged where the constant LR did not", "0 runs", every,
            lambda m: not math.isfinite(m[method]) and math.isfinite(m["constant@init"]))
        for peer in ("schedulefree_adamw", "prodigy_cosine"):
            if f"peer:{peer}" in runs[0][2]:
                add(f"agent < {peer}", ">= 70%", every, lambda m, p=peer: m[method] < m[f"peer:{p}"])
        add(f"runs of >= {3 * cfg.steps} steps: agent < constant LR", ">= 90%",
            lambda r: r[1] >= 3 * cfg.steps, lambda m: m[method] < m["constant@init"])
    return out


def noise_floor(cfg: DictConfig, comparisons: Dict[str, Any]) -> Dict[str, List[Dict[str, Any]]]:
    """The agent's targets scored for the constant LR at each of ``noise_factors`` x its LR, by method name.

    A 3% change of a constant LR is no decision anyone would defend or blame, so the shares it
    "harms" or "beats" are what chance alone scores on these runs: the floor under the agent's.
    """
    return {noise_method(n): run_targets(cfg, comparisons, noise_method(n)) for n in cfg.get("noise_factors", [])}


#: A pair of losses both below this share of the task's initial validation loss is a tie.
LOSS_FLOOR = 1e-3


def paired(cfg: DictConfig, comparisons: Dict[str, Any]) -> Dict[str, Any]:
    """Per condition and method: the agent against the method over every task x seed pair.

    See :mod:`ganno_lightning.agents.evaluation.paired_stats`: geometric-mean loss ratio agent/method
    with a 95% cluster-bootstrap interval, win/tie/loss counts (ties within 0.5%, or both below
    ``LOSS_FLOOR`` x the task's initial loss) and harm (the agent more than 2% worse).
    """
    out: Dict[str, Any] = {}
    for condition, tasks in comparisons.items():
        methods = [m for m in method_names(cfg.schedules, cfg.peers) if m != "agent"]
        methods += [SWEPT_COSINE] if has_method(tasks, SWEPT_COSINE) else []
        out[condition] = {method: _paired(cfg, tasks, method) for method in methods}
    return out


def has_method(tasks: Dict[str, Any], method: str) -> bool:
    """Whether a condition's comparisons (``{task_id: task}``) score ``method`` on every task and seed."""
    return all(method in seed["methods"] for task in tasks.values() for seed in task["seeds"].values())


def yardsticks(cfg: DictConfig, comparisons: Dict[str, Any]) -> Dict[str, List[Dict[str, Any]]]:
    """The agent's targets scored for the tuned cosines in its place, by method name.

    ``cosine@tuned`` picks its LR by the loss it is scored on (an oracle: no other LR of its grid ends
    lower on that seed); ``cosine@swept`` by the task's other seeds, as a real LR sweep would: its
    shares are what tuning the LR reaches on these runs.
    """
    out = {}
    for method in ("cosine@tuned", SWEPT_COSINE):
        if all(has_method(tasks, method) for tasks in comparisons.values()):
            out[method] = run_targets(cfg, comparisons, method)
    return out


#: The methods :func:`paired_by_family` compares the agent with: what a user would otherwise run, and
#: the yardstick of the targets.
FAMILY_METHODS = ("constant@init", "cosine@tuned")


def paired_by_family(cfg: DictConfig, comparisons: Dict[str, Any]) -> Dict[str, Any]:
    """:func:`paired` within each task family, against :data:`FAMILY_METHODS`.

    Returns ``{condition: {family: {method: row}}}``: where a pooled ratio hides one family the
    agent harms (the tuned cosine, say, trains LSTMs to twice the tuned constant LR's loss).
    """
    out: Dict[str, Any] = {}
    for condition, tasks in comparisons.items():
        families: Dict[str, Dict[str, Any]] = {}
        for task_id, task in tasks.items():
            families.setdefault(task_family(task_id), {})[task_id] = task
        methods = [m for m in FAMILY_METHODS if m in method_names(cfg.schedules, cfg.peers)]
        out[condition] = {family: {method: _paired(cfg, members, method) for method in methods}
                          for family, members in families.items()}
    return out


def task_family(task_id: str) -> str:
    """The family a suite's task id names (``resmlp#3@900steps`` -> ``resmlp``)."""
    return task_id.split("#", 1)[0]


def _paired(cfg: DictConfig, tasks: Dict[str, Any], method: str) -> Dict[str, Any]:
    floors = {task_id: LOSS_FLOOR * task["initial_val_loss"] for task_id, task in tasks.items()
              if task.get("initial_val_loss")}
    pairs = {task_id: [(seed["methods"]["agent"]["final_val_loss"], seed["methods"][method]["final_val_loss"])
                       for seed in task["seeds"].values()]
             for task_id, task in tasks.items()}
    return compare_paired(pairs, floors=floors, seed=int(cfg.task_seed)).as_dict()