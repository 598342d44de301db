"""Executing the plan: the worker pool, the resumable run log and reused baseline runs."""

import concurrent.futures as cf
import json
import math
import multiprocessing
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from agents.evaluation.config import runs_log_path
from agents.evaluation.run import run_one


def execute(jobs: List[Dict[str, Any]], workers: int, log_path: Optional[Path] = None,
            done: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Dict[str, Any]]:
    """Run ``jobs`` (in ``workers`` processes, or in this one when 1); results by run id.

    Runs in ``done`` with the same key are reused. Each new result is appended to ``log_path`` as
    one JSON line as soon as it ends, so an interrupted evaluation resumes where it stopped.
    """
    results: Dict[str, Dict[str, Any]] = {}
    pending = []
    for job in jobs:
        previous = (done or {}).get(job["id"])
        if previous is not None and previous.get("key") == job["key"] and previous.get("status") != "failed":
            results[job["id"]] = previous
        else:
            pending.append(job)
    if results:
        print(f"reusing {len(results)} finished runs from {log_path}", flush=True)
    total, start = len(pending), time.perf_counter()

    def finish(result: Dict[str, Any]) -> None:
        results[result["id"]] = result
        if log_path is not None:
            with open(log_path, "a") as f:
                f.write(json.dumps(result) + "\n")
        n = len(results) - (len(jobs) - total)
        loss = result["final_val_loss"]
        print(f"[{n}/{total}] {result['id']}: {result['status']}, final val loss "
              f"{loss:.4g} ({result['seconds']:.1f} s, {time.perf_counter() - start:.0f} s elapsed)", flush=True)

    if workers <= 1:
        for job in pending:
            finish(run_one(job))
        return results
    # Longest first (deeper models, then LSTMs), so that no slow run is left alone at the end.
    pending.sort(key=lambda j: (j["task"]["deeper"], j["task"]["family"] == "sequence"), reverse=True)
    attempts: Counter = Counter()
    while pending:
        # spawn: forking after torch has started its threads can deadlock.
        pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        retry = []
        try:
            futures = {pool.submit(run_one, job): job for job in pending}
            for future in cf.as_completed(futures):
                job = futures[future]
                try:
                    finish(future.result())
                except Exception as err:  # the worker process died (killed, out of memory)
                    attempts[job["id"]] += 1
                    if attempts[job["id"]] > 1:
                        finish({**_failure(job), "reason": f"worker died twice: {type(err).__name__}: {err}"})
                    else:
                        retry.append(job)
        except BaseException:
            # Ctrl-C: drop the queued runs instead of waiting for all of them (finished ones are in
            # the log, and a rerun resumes from there).
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        pending = retry
    return results


def _failure(job: Dict[str, Any]) -> Dict[str, Any]:
    return {"id": job["id"], "key": job["key"], "task": job["task"]["id"], "seed": job["seed"],
            "method": job["method"], "lr_factor": job["lr_factor"], "status": "failed", "reason": "",
            "final_val_loss": math.inf, "final_val_acc": None, "curve": [], "steps_done": 0, "seconds": 0.0}




def copy_baselines(jobs: List[Dict[str, Any]], sources: List[str],
                    done: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Finished baseline runs of ``sources`` that ``jobs`` need and ``done`` lacks; added to ``done``.

    Only baselines are shared: an agent run's key includes its agent file's digest, and only runs
    whose key (task draw, seed, schedule, LR factor, steps, validation) matches are taken, and none
    trained by another torch version (logs from before runs recorded it are trusted). The key does
    not cover the code of the task zoo and schedules: reuse runs of the same code.
    """
    def missing(job: Dict[str, Any]) -> bool:
        previous = done.get(job["id"])
        return previous is None or previous.get("key") != job["key"] or previous.get("status") == "failed"

    wanted = {job["id"]: job["key"] for job in jobs if job["agent"] is None and missing(job)}
    copied = []
    for source in sources:
        for run_key, run in read_runs_log(runs_log_path(source)).items():
            same_torch = run.get("torch", torch.__version__) == torch.__version__
            if wanted.get(run_key) == run.get("key") and run.get("status") != "failed" and same_torch:
                done[run_key] = run
                copied.append(run)
                del wanted[run_key]
    return copied


def read_runs_log(path: Path) -> Dict[str, Dict[str, Any]]:
    done: Dict[str, Dict[str, Any]] = {}
    if not path.is_file():
        return done
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by an interruption
        done[record["id"]] = record
    return done
