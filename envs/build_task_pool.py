"""``ganno-build-task-pool``: meta-training tasks with their own tuned constant LRs (:mod:`.task_pool`).

Each task is the run that ``make_env(recipe, seed)`` draws first, for ``tasks`` seeds from
``first_seed``. It is replayed at the constant LR ``grid`` x its drawn LR (same weights and batches
every time), and a grid whose best point sits at an edge is widened past it
(:func:`ganno_lightning.tuning.grid.factors_past_the_edge`) until it does not, within ``limits``.
The best grid LR and its final validation loss are the task's entry. Every replay is logged as it
ends, so a rerun resumes; the pool file is written whole, atomically, at the end.

Example::

    ganno-build-task-pool configs/task_pool.yaml
    ganno-build-task-pool configs/task_pool.yaml tasks=100 first_seed=10000 out=runs/pools/check.json
    ganno-build-task-pool configs/task_pool.yaml horizon=1200 tasks=96 out=configs/task_pools/calibrated_train_1200.json
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from ganno_lightning.config import ConfigCommandLine, read_mapping
from ganno_lightning.config import load_config as load_with_schema
from ganno_lightning.envs.config import env_config, family_from_config
from ganno_lightning.envs.inner_run import TaskError, sample_task
from ganno_lightning.envs.replay import at_lr_factor, constant_policy, replay, replay_config
from ganno_lightning.envs.task_pool import MATCHED_ENV_KEYS
from ganno_lightning.files import atomic_write_text
from ganno_lightning.trials.pool import JobFailure, JobPool, read_log
from ganno_lightning.tuning.grid import best_factor, factors_past_the_edge

__all__ = ["TaskPoolConfig", "build", "load_config", "main", "replay_at_factor"]


@dataclass
class TaskPoolConfig:
    """What ``ganno-build-task-pool`` replays; see ``configs/task_pool.yaml``."""

    recipe: str = "configs/experiments/ganno_imitation_task_pool_candidate.yaml"  # its env and family sections
    horizon: Optional[int] = None  # optimizer steps per run; null: the recipe's env.horizon (set: its long runs' pool)
    tasks: int = 600
    first_seed: int = 0
    grid: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0, 3.0, 10.0])  # x each task's drawn LR
    limits: list[float] = field(default_factory=lambda: [1e-3, 1e3])  # the widened grid stays inside
    workers: int = 2
    out: str = "configs/task_pools/calibrated_train.json"
    log: str = "runs/task_pool/replays.jsonl"  # every replay as it ends: a rerun resumes from it


def replay_sections(recipe: str, horizon: int | None = None) -> dict[str, Any]:
    """The recipe's ``env`` and ``family`` sections as its pool replays them: constant LR, no pool of its own,
    runs of ``horizon`` steps (``None``: the recipe's ``env.horizon``)."""
    loaded = OmegaConf.to_container(OmegaConf.create(read_mapping(recipe)), resolve=True)
    if "env" not in loaded or "family" not in loaded:
        raise ValueError(f"it must have `env` and `family` sections (a meta-training recipe or an "
                         f"env file), got sections {sorted(loaded)}.")
    length = {} if horizon is None else {"horizon": horizon}
    config = replay_config({"env": {**loaded["env"], "prior": "none", **length}, "family": loaded["family"]})
    at_lr_factor(config, 1.0)  # a recipe whose runs cannot be replayed at LR factors fails here
    env_config(config)  # so does a bad env section
    return config


def replay_at_factor(job: dict[str, Any]) -> dict[str, Any]:
    """Replay one task at ``factor`` x its drawn LR under a constant LR: its final validation loss (inf: diverged)."""
    torch.set_num_threads(1)  # small networks: one thread each, as many jobs as cores
    config = at_lr_factor(job["config"], job["factor"])
    keep = constant_policy(env_config(config).action_multipliers)
    try:
        run = replay(config, job["seed"], keep)
    except TaskError as err:  # every task the env drew diverged in its first interval: a diverged run, not a failure
        return {"id": job["id"], "key": job["key"], "status": "ok", "loss": math.inf, "reason": str(err)[:300]}
    return {"id": job["id"], "key": job["key"], "status": "ok", "task": run.task, "task_lr": run.task_lr,
            "loss": run.final_val_loss}


def build(config: TaskPoolConfig, command: str = "build()") -> dict[str, Any]:
    """Replay every task's grid (widened past its edges), and write the pool to ``config.out``.

    Returns:
        The pool: ``{"command", "recipe", "family", "env", "grid", "tasks": [{seed, task, best_lr, best_loss,
        best_factor, task_lr, losses}], "dropped"}``; a task that no grid LR trained to a finite loss is dropped.
    """
    sections = replay_sections(config.recipe, config.horizon)
    digest = hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()[:16]
    seeds = range(config.first_seed, config.first_seed + config.tasks)
    names = {seed: drawn_task(sections, seed) for seed in seeds}
    grids = {seed: sorted(float(f) for f in config.grid) for seed in seeds}
    results: dict[tuple[int, float], dict[str, Any]] = {}
    done = read_log(config.log)
    with JobPool(replay_at_factor, processes=config.workers if config.workers > 1 else 0) as pool:
        pending = list(seeds)
        while pending:
            jobs = [_job(sections, digest, seed, f) for seed in pending for f in grids[seed] if (seed, f) not in results]
            print(f"replaying {len(pending)} task(s): {len(jobs)} runs", file=sys.stderr, flush=True)
            for job, result in zip(jobs, pool.run(jobs, _failed, log=config.log, done=done, on_result=_progress)):
                results[job["seed"], job["factor"]] = result
            widened = []
            for seed in pending:
                more = factors_past_the_edge({f: [_loss(results, seed, f, names[seed])] for f in grids[seed]},
                                             limits=tuple(config.limits))
                if more:
                    grids[seed] = sorted({*grids[seed], *more})
                    widened.append(seed)
            pending = widened
    env = env_config(sections)
    tasks, dropped = [], []
    for seed in seeds:
        losses = {f: _loss(results, seed, f, names[seed]) for f in grids[seed]}
        factor = best_factor({f: [v] for f, v in losses.items()}, 0)
        if not math.isfinite(losses[factor]):
            dropped.append(seed)
            continue
        drawn = results[seed, factor]
        tasks.append({"seed": seed, "task": names[seed], "task_lr": drawn["task_lr"], "best_factor": factor,
                      "best_lr": float(f"{factor * drawn['task_lr']:.6g}"), "best_loss": losses[factor],
                      "losses": {f"{f:g}": (v if math.isfinite(v) else None) for f, v in losses.items()}})
    pool = {"command": command, "recipe": config.recipe, "family": sections["family"],
            "env": {key: getattr(env, key) for key in MATCHED_ENV_KEYS}, "grid": sorted(config.grid),
            "limits": list(config.limits), "tasks": tasks, "dropped": dropped}
    atomic_write_text(config.out, json.dumps(pool, indent=None, separators=(",", ":")) + "\n")
    return pool


def _loss(results: dict[tuple[int, float], dict[str, Any]], seed: int, factor: float, task: str) -> float:
    """A replay's final loss, inf where it ran another task than ``task``: an env whose first interval diverged
    at this factor draws another task (``max_reset_attempts``), so its run says only that this factor diverged."""
    result = results[seed, factor]
    return result["loss"] if result.get("task") == task else math.inf


def drawn_task(sections: dict[str, Any], seed: int) -> str:
    """The name of the task ``make_env(sections, seed)`` draws first (before any run)."""
    task, _ = sample_task(family_from_config(sections), torch.Generator().manual_seed(seed),
                          env_config(sections).split, "cpu")
    return task.name


def _job(sections: dict[str, Any], digest: str, seed: int, factor: float) -> dict[str, Any]:
    job_id = f"seed={seed}|x{factor:.6g}"
    return {"id": job_id, "key": f"{job_id}|recipe={digest}|torch={torch.__version__}", "config": sections,
            "seed": seed, "factor": factor}


def _failed(job: dict[str, Any], why: JobFailure) -> dict[str, Any]:
    return {"id": job["id"], "key": job["key"], "status": why.status, "loss": math.inf, "reason": why.reason}


def _progress(result: dict[str, Any], done: int, total: int) -> None:
    if done % 50 == 0 or done == total:
        print(f"[{done}/{total}] {result['id']}: loss {result['loss']:.4g}", file=sys.stderr, flush=True)


def load_config(source: Any, overrides: Sequence[str] = ()) -> TaskPoolConfig:
    """``configs/task_pool.yaml`` plus ``key=value`` overrides, checked (the recipe too)."""
    config = OmegaConf.to_object(load_with_schema(TaskPoolConfig, source, overrides, see="configs/task_pool.yaml"))
    for key in ("tasks", "workers"):
        if getattr(config, key) < 1:
            raise ValueError(f"`{key}` must be a positive int, got {getattr(config, key)!r}.")
    if len(config.grid) < 2 or any(f <= 0 for f in config.grid) or 1.0 not in config.grid:
        raise ValueError(f"`grid` must hold at least two positive factors of each task's drawn LR, 1 among them, got "
                         f"{config.grid}.")
    low, high = (list(config.limits) + [None, None])[:2]
    if len(config.limits) != 2 or not (0 < low <= min(config.grid) and max(config.grid) <= high):
        raise ValueError(f"`limits` must be [low, high] around the grid {sorted(config.grid)}, got {config.limits}.")
    try:
        replay_sections(config.recipe)
    except ValueError as err:
        raise ValueError(f"`recipe` '{config.recipe}': {err}") from None
    if config.horizon is not None:
        try:
            replay_sections(config.recipe, config.horizon)
        except ValueError as err:
            raise ValueError(f"`horizon` ({config.horizon}) does not fit the recipe '{config.recipe}': {err} Give a "
                             f"multiple of its env.interval, or null for its own env.horizon.") from None
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """``ganno-build-task-pool CONFIG.yaml [key=value ...]``: write a task pool."""
    cli = ConfigCommandLine("ganno-build-task-pool", __doc__, TaskPoolConfig, see="configs/task_pool.yaml")
    config = cli.load(load_config, cli.parse_args(argv))
    pool = build(config, command=" ".join(["ganno-build-task-pool", *(argv if argv is not None else sys.argv[1:])]))
    print(f"{len(pool['tasks'])} task(s) written to {config.out} ({len(pool['dropped'])} dropped: no LR trained them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
