"""``ganno-calibrate-lrs``: the best constant LR of each task cell, written to the zoo's table.

For each cell (see :meth:`ZooFamily.lr_cell`) that ``samples`` draws of a family's ranges reach,
its first task is trained at every LR of a grid with a constant schedule; a grid whose best point
sits at an edge is widened past it (:func:`ganno_lightning.tuning.grid.factors_past_the_edge`)
until it does not. The best LRs go to ``best_lrs.json`` (:mod:`.best_lr`), merged into the cells
already there, with the grid losses that chose them.

With ``schedule: cosine`` (any schedule of :mod:`ganno_lightning.lr_schedules`) the runs follow
that schedule from each grid LR instead, and the best peak LR joins the cell's entry as
``best_cosine_lr`` with its ``cosine_losses``, beside the best constant LR it leaves alone. Its
grid is ``grid_factors`` times the cell's best constant LR, so the constant LRs come first. A
privileged expert reads both to follow whichever schedule trains the cell better
(``algo.expert_schedule: calibrated``).

Example::

    ganno-calibrate-lrs configs/calibrate_lrs.yaml                        # the shipped table
    ganno-calibrate-lrs configs/calibrate_lrs.yaml "families=[resmlp]" "splits=[train]"
    ganno-calibrate-lrs configs/calibrate_lrs.yaml cells_file=runs/evaluate_confirm/missing_lr_cells.json
    ganno-calibrate-lrs configs/calibrate_lrs.yaml schedule=cosine "families=[transformer_seq,resmlp]" "splits=[train]"
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from ganno_lightning.config import ConfigCommandLine
from ganno_lightning.config import load_config as load_with_schema
from ganno_lightning.envs.tasks import FAMILIES, make_family
from ganno_lightning.envs.tasks.best_lr import (
    SPREAD,
    TABLE_PATH,
    clear_cache,
    load_table,
)
from ganno_lightning.envs.tasks.ranges import draw_seed
from ganno_lightning.files import atomic_write_text
from ganno_lightning.lr_schedules import SCHEDULES, with_schedule
from ganno_lightning.trials.curve import LearningCurve
from ganno_lightning.trials.pool import JobFailure, JobPool, read_log
from ganno_lightning.trials.trainer import quiet_run, short_run_trainer
from ganno_lightning.tuning.grid import factors_past_the_edge

__all__ = ["CalibrationConfig", "calibrate", "cells_of", "initial_loss", "load_config", "main", "run_grid_point"]


@dataclass
class CalibrationConfig:
    """What ``ganno-calibrate-lrs`` searches; see ``configs/calibrate_lrs.yaml``."""

    families: list[str] = field(default_factory=lambda: ["mlp_digits", "cnn_digits", "teacher_student", "sequence"])
    splits: list[str] = field(default_factory=lambda: ["train", "heldout"])
    samples: int = 200  # tasks drawn per family and split to find its cells (the first of each is run)
    task_seed: int = 0  # seeds those draws
    steps: int = 300  # optimizer steps per run (the zoo's budget)
    seeds: list[int] = field(default_factory=lambda: [0])  # weight seeds per grid point (losses averaged in log)
    grid: list[float] = field(default_factory=lambda: [10 ** (k / 2) for k in range(-8, 1)])  # 1e-4 .. 1
    limits: list[float] = field(default_factory=lambda: [1e-6, 10.0])  # the widened grid stays inside
    workers: int = 2
    out: str = str(TABLE_PATH)  # the table to write (merged into an existing one)
    log: str = "runs/calibrate_lrs/runs.jsonl"  # every run as it ends: a rerun resumes from it
    # JSON {cell: {family, split, hp, seed}}: calibrate exactly these cells instead of the sampled ones
    # (`ganno-evaluate` writes the cells a suite lacks to <out_dir>/missing_lr_cells.json)
    cells_file: Optional[str] = None
    # constant: each cell's best constant LR (best_lr). Another schedule (cosine): its best peak LR, written
    # beside it as best_<schedule>_lr; its grid is grid_factors times the cell's best constant LR
    schedule: str = "constant"
    grid_factors: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0])


def cells_of(config: CalibrationConfig) -> dict[str, dict[str, Any]]:
    """Cell -> the first sampled task of it: ``{family, split, hp, seed}`` (plain data for a job).

    With ``cells_file``, the cells and tasks listed there instead.
    """
    if config.cells_file is not None:
        return _read_cells_file(config.cells_file)
    found: dict[str, dict[str, Any]] = {}
    for name in config.families:
        family = make_family(name)
        for split in config.splits:
            generator = torch.Generator().manual_seed(config.task_seed)
            for _ in range(config.samples):
                hp = family.ranges(split).sample(generator)
                seed = draw_seed(generator)
                found.setdefault(family.lr_cell(hp), {"family": name, "split": split, "hp": hp, "seed": seed})
    return found


def _read_cells_file(path: str) -> dict[str, dict[str, Any]]:
    try:
        cells = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"`cells_file`: cannot read a JSON object of cells from '{path}': {err}.") from None
    for cell, task in cells.items() if isinstance(cells, dict) else [(None, cells)]:
        if not isinstance(task, dict) or {"family", "split", "hp", "seed"} - set(task) or task["family"] not in FAMILIES:
            raise ValueError(f"`cells_file` '{path}': cell {cell!r} must map to {{family, split, hp, seed}} with a zoo "
                             f"family, got {task!r}. `ganno-evaluate` writes such a file (missing_lr_cells.json).")
    return cells


def run_grid_point(job: dict[str, Any]) -> dict[str, Any]:
    """Train a cell's representative task from one LR under the job's schedule (constant unless given).

    Returns its final validation loss (inf: diverged).
    """
    start = time.perf_counter()
    family = make_family(job["family"])
    torch.manual_seed(job["weight_seed"])
    module = family.build({**job["hp"], "lr": job["lr"]}, job["seed"])
    if job.get("schedule", "constant") != "constant":
        with_schedule(module, job["schedule"], job["steps"])
    curve = LearningCurve("val_loss", check_finite=True, strict=False)
    with tempfile.TemporaryDirectory(prefix="ganno_calibrate_") as root, quiet_run(threads=1):
        trainer = short_run_trainer(job["steps"], job["steps"], root, [curve], accelerator="cpu")
        trainer.fit(module)
    last = curve.curve[-1][1] if curve.curve and not curve.diverged else math.inf
    return {"id": job["id"], "key": job["key"], "status": "ok", "loss": last if math.isfinite(last) else math.inf,
            "seconds": round(time.perf_counter() - start, 2)}


def initial_loss(task: dict[str, Any], weight_seed: int) -> float:
    """The validation loss of a cell's task before training, with the weights its runs start from.

    The scale that tells a learnable cell (its best loss well below this) from one no LR trains.
    """
    family = make_family(task["family"])
    torch.manual_seed(weight_seed)
    return family.build({**task["hp"], "lr": 1.0}, task["seed"]).validation_loss()  # the LR plays no part


def calibrate(config: CalibrationConfig, command: str = "calibrate()") -> dict[str, Any]:
    """Grid-search each cell's best LR under ``config.schedule``; widen a grid past an edge its best point sits on.

    Returns the table (``{"cells": {cell: {"best_lr", "losses", "family", "split", "task"}}, ...}``,
    under a schedule other than constant with ``best_<schedule>_lr`` and ``<schedule>_losses`` added
    to each cell), also written to ``config.out`` merged into the cells already there; ``command``
    joins the table's ``commands``, the record of how its cells were made.

    Raises:
        ValueError: Under a schedule other than constant, for a cell the table has no best constant LR of.
    """
    cells = cells_of(config)
    previous = load_table(config.out)
    grids = {cell: _grid(config, cell, previous) for cell in cells}
    results: dict[str, float] = {}
    Path(config.log).parent.mkdir(parents=True, exist_ok=True)
    done = read_log(config.log)
    with JobPool(run_grid_point, processes=config.workers if config.workers > 1 else 0) as pool:
        pending = list(cells)
        while pending:
            jobs = [_job(config, cell, cells[cell], lr, seed) for cell in pending for lr in grids[cell]
                    for seed in config.seeds if _job_id(config, cell, lr, seed) not in results]
            print(f"calibrating {len(pending)} cell(s): {len(jobs)} runs", file=sys.stderr, flush=True)
            for result in pool.run(jobs, _failed, log=config.log, done=done, on_result=_progress):
                results[result["id"]] = result["loss"]
            widened = []
            for cell in pending:
                losses = {lr: [results[_job_id(config, cell, lr, seed)] for seed in config.seeds]
                          for lr in grids[cell]}
                more = factors_past_the_edge(losses, limits=tuple(config.limits))
                if more:
                    grids[cell] = sorted({*grids[cell], *more})
                    widened.append(cell)
            pending = widened
    commands = [c for c in previous.get("commands", []) if c != command] + [command]  # what made its cells
    table = {"commands": commands, "steps": config.steps, "seeds": list(config.seeds), "spread": SPREAD,
             "cells": dict(previous.get("cells", {}))}
    for cell, task in cells.items():
        losses = {lr: _mean_log([results[_job_id(config, cell, lr, seed)] for seed in config.seeds])
                  for lr in grids[cell]}
        best = min(sorted(losses), key=losses.get)
        rounded = {f"{lr:.4g}": (float(f"{v:.4g}") if math.isfinite(v) else None) for lr, v in losses.items()}
        if config.schedule != "constant":
            table["cells"][cell] = {**table["cells"][cell], f"best_{config.schedule}_lr": float(f"{best:.4g}"),
                                    f"{config.schedule}_losses": rounded}
            continue
        table["cells"][cell] = {**table["cells"].get(cell, {}), "best_lr": float(f"{best:.4g}"),
                                "family": task["family"], "split": task["split"],
                                "initial_loss": float(f"{initial_loss(task, config.seeds[0]):.4g}"),
                                "task": {k: v for k, v in task["hp"].items() if k != "lr"}, "losses": rounded}
    table["cells"] = dict(sorted(table["cells"].items()))
    atomic_write_text(config.out, json.dumps(table, indent=1) + "\n")
    clear_cache()
    return table


def _grid(config: CalibrationConfig, cell: str, table: dict[str, Any]) -> list[float]:
    """A cell's starting grid: ``grid``, or under another schedule ``grid_factors`` times its best constant LR."""
    if config.schedule == "constant":
        return sorted(float(lr) for lr in config.grid)
    entry = table.get("cells", {}).get(cell)
    if entry is None or "best_lr" not in entry:
        raise ValueError(f"`schedule={config.schedule}`: the cell {cell!r} has no best constant LR in {config.out}; "
                         f"its grid is `grid_factors` times that LR. Calibrate the constant LRs first "
                         f"(the same command with `schedule=constant`).")
    return sorted(float(f"{entry['best_lr'] * f:.6g}") for f in config.grid_factors)


def _job_id(config: CalibrationConfig, cell: str, lr: float, seed: int) -> str:
    # constant runs keep the ids (and keys) of the logs written before schedules existed
    suffix = "" if config.schedule == "constant" else f"|schedule={config.schedule}"
    return f"{cell}|lr={lr:.6g}|seed={seed}{suffix}"


def _job(config: CalibrationConfig, cell: str, task: dict[str, Any], lr: float, seed: int) -> dict[str, Any]:
    job_id = _job_id(config, cell, lr, seed)
    return {**task, "lr": float(lr), "weight_seed": int(seed), "steps": int(config.steps), "id": job_id,
            "schedule": config.schedule, "key": f"{job_id}|steps={config.steps}|torch={torch.__version__}"}


def _failed(job: dict[str, Any], why: JobFailure) -> dict[str, Any]:
    return {"id": job["id"], "key": job["key"], "status": why.status, "loss": math.inf, "reason": why.reason}


def _progress(result: dict[str, Any], done: int, total: int) -> None:
    print(f"[{done}/{total}] {result['id']}: loss {result['loss']:.4g}", file=sys.stderr, flush=True)


def _mean_log(losses: Sequence[float]) -> float:
    return math.inf if any(not math.isfinite(v) for v in losses) else math.exp(
        sum(math.log(max(v, 1e-12)) for v in losses) / len(losses))


def load_config(source: Any, overrides: Sequence[str] = ()) -> CalibrationConfig:
    """``configs/calibrate_lrs.yaml`` plus ``key=value`` overrides, checked."""
    config = OmegaConf.to_object(load_with_schema(CalibrationConfig, source, overrides, see="configs/calibrate_lrs.yaml"))
    unknown = [f for f in config.families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"`families` has unknown families {unknown}; known: {sorted(FAMILIES)}.")
    if any(s not in ("train", "heldout") for s in config.splits):
        raise ValueError(f"`splits` must list 'train' and/or 'heldout', got {config.splits}.")
    for key in ("samples", "steps", "workers"):
        if getattr(config, key) < 1:
            raise ValueError(f"`{key}` must be a positive int, got {getattr(config, key)!r}.")
    if len(config.grid) < 2 or any(lr <= 0 for lr in config.grid):
        raise ValueError(f"`grid` must hold at least two positive LRs, got {config.grid}.")
    if config.schedule not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {list(SCHEDULES)}, got {config.schedule!r}.")
    if len(config.grid_factors) < 2 or any(f <= 0 for f in config.grid_factors):
        raise ValueError(f"`grid_factors` must hold at least two positive factors, got {config.grid_factors}.")
    if config.cells_file is not None:
        _read_cells_file(config.cells_file)  # a bad file fails before any run
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """``ganno-calibrate-lrs CONFIG.yaml [key=value ...]``: write the best-LR table."""
    cli = ConfigCommandLine("ganno-calibrate-lrs", __doc__, CalibrationConfig, see="configs/calibrate_lrs.yaml")
    config = cli.load(load_config, cli.parse_args(argv))
    table = calibrate(config, command=" ".join(["ganno-calibrate-lrs", *(argv if argv is not None else sys.argv[1:])]))
    print(f"best LRs of {len(table['cells'])} cell(s) written to {config.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
