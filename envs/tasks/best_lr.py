"""Each zoo task's best constant learning rate, and the draw of a user's LR around it.

Users start from LRs that are sometimes right, sometimes 10x too high, sometimes 10x too low. A
zoo that draws LRs from fixed ranges instead starts most tasks far below their optimum (the best
LR of a grid x0.1-x10 sat at its x10 edge on 11 of 16 train-range tasks), so any policy that raises
LRs looks good. With ``lr_sampling: around_best`` a family draws a task's LR log-uniformly from
0.1x to 10x of the best constant LR of the task's *cell* (family, optimizer, depth and the
family's layer-changing choices), read from a table shipped beside this module
(``best_lrs.json``) that ``ganno-calibrate-lrs`` writes: per cell, a constant-LR grid search on a
representative task, widened past any edge its best point sits on.

Width, batch size and the family's other knobs are not part of a cell, so a task's best LR may
differ from its cell's by a factor: the 0.1x-10x draw covers that, and the table records the grid
losses so the spread can be checked.

Example::

    from ganno_lightning.envs.tasks import make_family

    family = make_family("mlp_digits", lr_sampling="around_best")
    task = family.sample(torch.Generator().manual_seed(0))
    task.info["lr"] / task.info["best_lr"]            # between 0.1 and 10
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ganno_lightning.config import ConfigCommandLine
from ganno_lightning.config import load_config as load_with_schema
from ganno_lightning.files import atomic_write_text
from ganno_lightning.trials.pool import JobFailure, JobPool, read_log
from ganno_lightning.tuning.grid import factors_past_the_edge

__all__ = ["LR_SAMPLINGS", "TABLE_PATH", "CalibrationConfig", "best_lr", "calibrate", "main"]

#: How a family draws a task's initial LR: from its ``lr`` range, or around its cell's best LR.
LR_SAMPLINGS = ("ranges", "around_best")
#: The calibrated table that ships with the package.
TABLE_PATH = Path(__file__).with_name("best_lrs.json")
#: ``around_best`` draws the LR from ``best / SPREAD`` to ``best * SPREAD``, log-uniformly.
SPREAD = 10.0


@functools.lru_cache(maxsize=4)
def _table(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text()) if Path(path).is_file() else {"cells": {}}


def best_lr(cell: str, path: str | Path = TABLE_PATH) -> float:
    """The calibrated best constant LR of ``cell`` (see :meth:`ZooFamily.lr_cell`).

    Raises:
        ValueError: If the table has no entry for the cell, naming it and the command that adds it.
    """
    entry = _table(str(path))["cells"].get(cell)
    if entry is None:
        raise ValueError(
            f"No calibrated best LR for the task cell {cell!r} in {path}. Add it with "
            f"`ganno-calibrate-lrs configs/calibrate_lrs.yaml` (with this family and split), or draw LRs "
            f"from the family's ranges (`lr_sampling: ranges`)."
        )
    return float(entry["best_lr"])


def around(best: float, generator: torch.Generator) -> float:
    """A log-uniform draw from ``best / SPREAD`` to ``best * SPREAD``.

    Example::

        >>> lr = around(1e-2, torch.Generator().manual_seed(0))
        >>> 1e-3 <= lr <= 1e-1
        True
    """
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    return best * SPREAD ** (2.0 * u - 1.0)


# --- Calibration ---------------------------------------------------------------------------------


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


def cells_of(config: CalibrationConfig) -> dict[str, dict[str, Any]]:
    """Cell -> the first sampled task of it: ``{family, split, hp, seed}`` (plain data for a job)."""
    from ganno_lightning.envs.tasks import make_family
    from ganno_lightning.envs.tasks.ranges import draw_seed

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


def run_constant_lr(job: dict[str, Any]) -> dict[str, Any]:
    """Train a cell's representative task at one constant LR; its final validation loss (inf: diverged)."""
    from ganno_lightning.envs.tasks import make_family
    from ganno_lightning.trials.curve import LearningCurve
    from ganno_lightning.trials.trainer import short_run_trainer

    torch.set_num_threads(1)  # tiny models: fastest single-threaded, and workers share the cores
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # start-up tips, once per run, are noise
    start = time.perf_counter()
    family = make_family(job["family"])
    torch.manual_seed(job["weight_seed"])
    module = family.build({**job["hp"], "lr": job["lr"]}, job["seed"])
    curve = LearningCurve("val_loss", check_finite=True, strict=False)
    with tempfile.TemporaryDirectory(prefix="ganno_calibrate_") as root:
        trainer = short_run_trainer(job["steps"], job["steps"], root, [curve], accelerator="cpu")
        trainer.fit(module)
    last = curve.curve[-1][1] if curve.curve and not curve.diverged else math.inf
    return {"id": job["id"], "key": job["key"], "status": "ok", "loss": last if math.isfinite(last) else math.inf,
            "seconds": round(time.perf_counter() - start, 2)}


def calibrate(config: CalibrationConfig) -> dict[str, Any]:
    """Grid-search each cell's best constant LR; widen a grid past an edge its best point sits on.

    Returns the table (``{"cells": {cell: {"best_lr", "losses", "family", "split", "task"}}, ...}``),
    also written to ``config.out`` merged into the cells already there.
    """
    cells = cells_of(config)
    grids = {cell: sorted(float(lr) for lr in config.grid) for cell in cells}
    results: dict[str, float] = {}
    Path(config.log).parent.mkdir(parents=True, exist_ok=True)
    done = read_log(config.log)
    with JobPool(run_constant_lr, processes=config.workers if config.workers > 1 else 0) as pool:
        pending = list(cells)
        while pending:
            jobs = [_job(config, cell, cells[cell], lr, seed) for cell in pending for lr in grids[cell]
                    for seed in config.seeds if _job_id(cell, lr, seed) not in results]
            print(f"calibrating {len(pending)} cell(s): {len(jobs)} runs", file=sys.stderr, flush=True)
            for result in pool.run(jobs, _failed, log=config.log, done=done, on_result=_progress):
                results[result["id"]] = result["loss"]
            widened = []
            for cell in pending:
                losses = {lr: [results[_job_id(cell, lr, seed)] for seed in config.seeds] for lr in grids[cell]}
                more = factors_past_the_edge(losses, limits=tuple(config.limits))
                if more:
                    grids[cell] = sorted({*grids[cell], *more})
                    widened.append(cell)
            pending = widened
    table = {"command": "ganno-calibrate-lrs configs/calibrate_lrs.yaml", "steps": config.steps,
             "seeds": list(config.seeds), "spread": SPREAD, "cells": dict(_table(config.out).get("cells", {}))}
    for cell, task in cells.items():
        losses = {lr: _mean_log([results[_job_id(cell, lr, seed)] for seed in config.seeds]) for lr in grids[cell]}
        best = min(sorted(losses), key=losses.get)
        table["cells"][cell] = {"best_lr": float(f"{best:.4g}"), "family": task["family"], "split": task["split"],
                                "task": {k: v for k, v in task["hp"].items() if k != "lr"},
                                "losses": {f"{lr:.4g}": (round(v, 4) if math.isfinite(v) else None)
                                           for lr, v in losses.items()}}
    table["cells"] = dict(sorted(table["cells"].items()))
    atomic_write_text(config.out, json.dumps(table, indent=1) + "\n")
    _table.cache_clear()
    return table


def _job_id(cell: str, lr: float, seed: int) -> str:
    return f"{cell}|lr={lr:.6g}|seed={seed}"


def _job(config: CalibrationConfig, cell: str, task: dict[str, Any], lr: float, seed: int) -> dict[str, Any]:
    job_id = _job_id(cell, lr, seed)
    return {**task, "lr": float(lr), "weight_seed": int(seed), "steps": int(config.steps), "id": job_id,
            "key": f"{job_id}|steps={config.steps}|torch={torch.__version__}"}


def _failed(job: dict[str, Any], why: JobFailure) -> dict[str, Any]:
    return {"id": job["id"], "key": job["key"], "status": why.status, "loss": math.inf, "reason": why.reason}


def _progress(result: dict[str, Any], done: int, total: int) -> None:
    print(f"[{done}/{total}] {result['id']}: loss {result['loss']:.4g}", file=sys.stderr, flush=True)


def _mean_log(losses: Sequence[float]) -> float:
    return math.inf if any(not math.isfinite(v) for v in losses) else math.exp(
        sum(math.log(max(v, 1e-12)) for v in losses) / len(losses))


def load_config(source: Any, overrides: Sequence[str] = ()) -> CalibrationConfig:
    """``configs/calibrate_lrs.yaml`` plus ``key=value`` overrides, checked."""
    from ganno_lightning.envs.tasks import FAMILIES

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
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """``ganno-calibrate-lrs CONFIG.yaml [key=value ...]``: write the best-LR table."""
    cli = ConfigCommandLine("ganno-calibrate-lrs", __doc__, CalibrationConfig, see="configs/calibrate_lrs.yaml")
    config = cli.load(load_config, cli.parse_args(argv))
    table = calibrate(config)
    print(f"best LRs of {len(table['cells'])} cell(s) written to {config.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
