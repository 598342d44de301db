"""Executing the plan: the worker pool, the resumable run log and reused baseline runs."""

import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from ganno_lightning.agents.evaluation.config import runs_log_path
from ganno_lightning.agents.evaluation.run import run_one
from ganno_lightning.trials.pool import JobFailure, JobPool, finished_record, read_log, write_archive


def execute(jobs: List[Dict[str, Any]], workers: int, log_path: Optional[Path] = None,
            done: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Dict[str, Any]]:
    """Run ``jobs`` (in ``workers`` processes, or in this one when 1); results by run id.

    Runs in ``done`` with the same key are reused. Each new result is appended to ``log_path`` as
    one JSON line as soon as it ends, so an interrupted evaluation resumes where it stopped.
    """
    done = done or {}
    reused = sum(finished_record(job, done) is not None for job in jobs)
    if reused:
        print(f"reusing {reused} finished runs from {log_path}", flush=True)
    start = time.perf_counter()

    def progress(result: Dict[str, Any], n: int, total: int) -> None:
        loss = result["final_val_loss"]
        print(f"[{n}/{total}] {result['id']}: {result['status']}, final val loss "
              f"{loss:.4g} ({result['seconds']:.1f} s, {time.perf_counter() - start:.0f} s elapsed)", flush=True)

    with JobPool(run_one, processes=workers if workers > 1 else 0, retries=1) as pool:
        results = pool.run(jobs, _failure, log=log_path, done=done, order=_longest_first, on_result=progress)
    return {job["id"]: result for job, result in zip(jobs, results)}


def _longest_first(job: Dict[str, Any]) -> tuple:
    # longer runs, then deeper models, then LSTMs and transformers, so that no slow run is left alone at the end
    return (-job["steps"], not job["task"]["deeper"], job["task"]["family"] not in ("sequence", "transformer_seq"))


def _failure(job: Dict[str, Any], why: JobFailure) -> Dict[str, Any]:
    return {"id": job["id"], "key": job["key"], "task": job["task"]["id"], "seed": job["seed"],
            "method": job["method"], "lr_factor": job["lr_factor"], "status": "failed", "reason": why.reason,
            "final_val_loss": math.inf, "final_val_acc": None, "curve": [], "steps_done": 0, "seconds": 0.0}


def copy_baselines(jobs: List[Dict[str, Any]], sources: List[str],
                    done: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Finished baseline runs of ``sources`` that ``jobs`` need and ``done`` lacks; added to ``done``.

    Only baselines are shared: an agent run's key includes its agent file's digest, and only runs
    whose key (task draw, seed, schedule, LR factor, steps, validation) matches are taken, and none
    trained by another torch version (logs from before runs recorded it are trusted). The key does
    not cover the code of the task zoo and schedules: reuse runs of the same code.
    """
    wanted = {job["id"]: job["key"] for job in jobs if job["agent"] is None and finished_record(job, done) is None}
    copied = []
    for source in sources:
        for run_key, run in read_log(runs_log_path(source)).items():
            same_torch = run.get("torch", torch.__version__) == torch.__version__
            if wanted.get(run_key) == run.get("key") and run.get("status") != "failed" and same_torch:
                done[run_key] = run
                copied.append(run)
                del wanted[run_key]
    return copied


def archive_baselines(path: str, jobs: List[Dict[str, Any]], runs: Dict[str, Dict[str, Any]]) -> Tuple[int, int]:
    """Add the finished baseline runs of ``jobs`` to the archive ``path`` (``baselines_to``), sorted by id.

    Runs already archived stay unless this evaluation has a run of the same id: an evaluation with
    fewer schedules or tasks adds to a suite's archive and never drops what another one put there.
    Returns how many runs this evaluation added and how many the archive holds.
    """
    finished = {job["id"]: record for job in jobs
                if job["agent"] is None and (record := finished_record(job, runs)) is not None}
    archived = {**read_log(path), **finished}
    write_archive(path, [archived[run_id] for run_id in sorted(archived)])  # sorted: a stable file
    return len(finished), len(archived)
