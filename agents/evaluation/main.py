"""Entry points: the whole evaluation and its command line."""

import dataclasses
import importlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from ganno_lightning.agents.evaluation.analysis import (
    compare,
    headline_targets,
    noise_floor,
    paired,
    paired_by_family,
    run_targets,
    summarise,
    yardsticks,
)
from ganno_lightning.agents.evaluation.config import (
    RUNS_FILE,
    EvaluateConfig,
    load_config,
    plain_value,
)
from ganno_lightning.agents.evaluation.execute import archive_baselines, copy_baselines, execute
from ganno_lightning.agents.evaluation.plan import (
    agent_path,
    check_only_tasks,
    conditions_of,
    plan_runs,
    selected,
    task_specs,
    tuning_grids,
)
from ganno_lightning.agents.evaluation.report import (
    plot_loss_curves,
    plot_paired,
    plot_schedules,
    summary_table,
    targets_table,
    write_report,
)
from ganno_lightning.agents.evaluation.run import missing_lr_cells
from ganno_lightning.config import ConfigCommandLine
from ganno_lightning.files import atomic_write_text, check_writable_dir
from ganno_lightning.layerwise.agent import GANNOAgent
from ganno_lightning.layerwise.decisions import resolve_decision_steps
from ganno_lightning.layerwise.features import check_lr_probe_decisions
from ganno_lightning.trials.pool import append_records, read_log


def evaluate(cfg: DictConfig) -> Dict[str, Any]:
    """Run the whole evaluation described by a validated config; write every output file.

    Returns:
        The content of ``results.json``, plus ``report`` (the Markdown text).

    Example::

        cfg = load_config("configs/evaluate_smoke.yaml", ["agent.path=agent.pt", "out_dir=runs/eval"])
        results = evaluate(cfg)
        print(results["targets"])
    """
    start = time.perf_counter()
    out_dir = check_before_runs(cfg)
    jobs = [job for job in plan_runs(cfg) if selected(cfg, job)]
    log_path = out_dir / RUNS_FILE
    done = read_log(log_path) if cfg.resume else {}
    if not cfg.resume and log_path.exists():
        log_path.unlink()
    _copy_baselines(cfg, jobs, done, log_path)
    print(f"evaluating {len(jobs)} runs ({len(conditions_of(cfg))} conditions) in {cfg.workers} process(es)",
          flush=True)
    runs = execute(jobs, cfg.workers, log_path, done)
    grids, more = tuning_grids(cfg, runs)
    while more:  # a tuned baseline whose best LR sits at the grid's edge is not tuned: widen its grid
        print(f"widening {len({(j['task']['id'], j['method']) for j in more})} tuning grid(s) whose best LR sits "
              f"at an edge: {len(more)} more runs", flush=True)
        _copy_baselines(cfg, more, done, log_path)  # an earlier evaluation widened the same grids
        runs.update(execute(more, cfg.workers, log_path, done))
        jobs += more
        grids, more = tuning_grids(cfg, runs, grids)
        more = [job for job in more if selected(cfg, job)]
    if cfg.baselines_to is not None:
        archived, total = archive_baselines(cfg.baselines_to, jobs, runs)
        print(f"archived {archived} finished baseline runs in {cfg.baselines_to} ({total} in all)", flush=True)
    if cfg.only_tasks:  # a share: its runs are in the log, the report needs every task's
        print(f"ran the {len(jobs)} runs of the tasks matching {list(cfg.only_tasks)} into {log_path}; append the "
              f"other shares' {RUNS_FILE} to it and rerun without only_tasks to report", flush=True)
        return {"runs": [runs[job["id"]] for job in jobs], "partial": True}
    comparisons = compare(cfg, runs, grids)
    summary = summarise(cfg, comparisons)
    pairs = paired(cfg, comparisons)
    families = paired_by_family(cfg, comparisons)
    targets = headline_targets(cfg, summary)
    plots: Dict[str, List[Path]] = {}
    for condition in conditions_of(cfg):
        tasks = comparisons[condition.name]
        curves = plot_loss_curves(cfg, condition, tasks, runs, out_dir / f"loss_curves_{condition.name}.png")
        paired_plot = plot_paired(pairs[condition.name], f"{condition.name}: per task, over {len(cfg.seeds)} seeds",
                                  out_dir / f"paired_{condition.name}.png")
        plots[condition.name] = [curves, paired_plot, *plot_schedules(cfg, condition, tasks, runs, out_dir)]
    seconds = time.perf_counter() - start
    report = write_report(cfg, out_dir / "report.md", comparisons, summary, targets, runs, plots, seconds, pairs,
                          grids, families)
    results = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "conditions": [dataclasses.asdict(c) for c in conditions_of(cfg)],
        "targets": targets,
        "run_targets": run_targets(cfg, comparisons),
        "noise_floor": noise_floor(cfg, comparisons),
        "yardsticks": yardsticks(cfg, comparisons),
        "summary": summary,
        "paired": pairs,
        "paired_by_family": families,
        "tuning_grids": grids,
        "comparisons": comparisons,
        "runs": [runs[job["id"]] for job in jobs],
        "seconds": seconds,
    }
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=1))
    if cfg.wandb.enabled and cfg.wandb.mode != "disabled":
        _log_wandb(cfg, summary, targets, plots, out_dir)
    return {**results, "report": report}


def check_before_runs(cfg: DictConfig) -> Path:
    """Everything that would fail every run, checked before the first: ``out_dir``, the agent and the tasks.

    Returns:
        ``out_dir``, created if needed, as an absolute path.

    Raises:
        PermissionError: ``out_dir`` cannot be created or written (naming it and the path).
        FileNotFoundError: ``agent.path`` names no file.
        ValueError: the agent cannot act at ``agent.decision_steps``, ``only_tasks`` matches no task, or
            an ``around_best`` cell has no calibrated LR (see :func:`check_lr_cells`).
    """
    out_dir = check_writable_dir(cfg.out_dir, "out_dir")
    agent_file = agent_path(cfg.agent.path)
    if cfg.agent.path != "default" and not agent_file.is_file():
        raise FileNotFoundError(f"`agent.path`: agent file not found: '{agent_file}'. Pass the path of a file written "
                                "by ganno-train (or GANNOAgent.save), or agent.path=default for the shipped agent.")
    agent = GANNOAgent.from_source(cfg.agent.path)  # an unreadable or incompatible agent fails here, not in every run
    if cfg.agent.decision_steps is not None:  # as must an agent whose LR probe features these steps never measure
        steps = resolve_decision_steps(plain_value(cfg.agent.decision_steps), agent.interval, "agent.decision_steps")
        check_lr_probe_decisions(agent.feature_names, steps, "agent.decision_steps")
    check_only_tasks(cfg)
    check_lr_cells(cfg)
    return out_dir


def check_lr_cells(cfg: DictConfig) -> None:
    """Fail before any run when an ``around_best`` task's cell has no calibrated best LR.

    Raises:
        ValueError: naming the cells' count and the command that calibrates them, whose
            ``cells_file`` (``<out_dir>/missing_lr_cells.json``) this writes.
    """
    missing = {}
    for deeper in sorted({c.deeper for c in conditions_of(cfg)}):
        missing.update(missing_lr_cells(task_specs(cfg, deeper)))
    if missing:
        path = Path(cfg.out_dir) / "missing_lr_cells.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(missing, indent=1, sort_keys=True) + "\n")
        raise ValueError(
            f"`suite`: {len(missing)} task cell(s) drawn with lr_sampling=around_best have no calibrated best LR "
            f"(e.g. `{next(iter(missing))}`). Calibrate them first: ganno-calibrate-lrs configs/calibrate_lrs.yaml "
            f"cells_file={path} (or use lr_sampling=ranges)."
        )


def _log_wandb(cfg: DictConfig, summary, targets, plots, out_dir: Path) -> None:
    import wandb

    run = wandb.init(project=cfg.wandb.project, name=cfg.wandb.name, mode=cfg.wandb.mode, dir=str(out_dir),
                     config=OmegaConf.to_container(cfg, resolve=True), job_type="evaluate")
    try:
        columns = ["condition", "method", *[k for k in next(iter(next(iter(summary.values())).values()))]]
        table = wandb.Table(columns=columns)
        for condition, rows in summary.items():
            for method, row in rows.items():
                table.add_data(condition, method, *[_json_safe(v) for v in row.values()])
        run.log({"evaluate/summary": table,
                 "evaluate/targets": wandb.Table(columns=list(targets[0]), data=[list(t.values()) for t in targets])
                 if targets else None})
        for condition, paths in plots.items():
            run.log({f"evaluate/{condition}/{p.stem}": wandb.Image(str(p)) for p in paths})
        for t in targets:
            run.summary[f"targets/{t['condition']}/{t['comparison']}"] = t["percent"]
    finally:
        run.finish()


def _json_safe(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def main(argv: Optional[List[str]] = None) -> int:
    """``ganno-evaluate CONFIG.yaml [key=value ...]``; prints the summary tables.

    Returns:
        0, or 1 if any run failed with an error (divergence is a result, not a failure). A bad
        config exits with one line and status 2.
    """
    cli = ConfigCommandLine("ganno-evaluate", importlib.import_module(__package__).__doc__,
                            EvaluateConfig, see="configs/evaluate.yaml")
    cfg = cli.load(load_config, cli.parse_args(argv))
    try:
        check_before_runs(cfg)
    except (ValueError, OSError) as err:
        cli.error(str(err))
    results = evaluate(cfg)
    if results.get("partial"):
        return 1 if any(r["status"] == "failed" for r in results["runs"]) else 0
    print()
    print(targets_table(results["targets"]))
    for condition, rows in results["summary"].items():
        print(f"\n{condition}\n{summary_table(cfg, rows)}")
    print(f"\nreport: {Path(cfg.out_dir) / 'report.md'}; every run: {Path(cfg.out_dir) / 'results.json'}")
    failed = sum(r["status"] == "failed" for r in results["runs"])
    if failed:
        print(f"{failed} run(s) failed with an error; see `reason` in results.json.", file=sys.stderr)
    return 1 if failed else 0


def _copy_baselines(cfg: DictConfig, jobs: List[Dict[str, Any]], done: Dict[str, Dict[str, Any]],
                    log_path: Path) -> None:
    """Take the finished baseline runs ``jobs`` need from ``cfg.baselines_from`` into ``done`` and the log."""
    copied = copy_baselines(jobs, cfg.baselines_from, done)
    if copied:
        append_records(log_path, copied)  # this out_dir stays self-contained: its log holds every run it reports
        print(f"copied {len(copied)} finished baseline runs from {', '.join(cfg.baselines_from)}", flush=True)
