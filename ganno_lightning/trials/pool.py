"""``JobPool``: run short scored jobs in worker processes, survive a worker that dies, resume from a log.

Lightning-free: a job is a plain dict, its result a JSON-able dict, and the job function a
module-level function (it is pickled into ``spawn``-ed workers).
"""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Optional, Union

from ganno_lightning.files import atomic_write_bytes

__all__ = ["JobFailure", "JobPool", "append_records", "finished_record", "read_log", "write_archive"]

Job = dict[str, Any]
Result = dict[str, Any]


@dataclass(frozen=True)
class JobFailure:
    """Why a job has no result of its own: ``status`` is ``"worker_died"`` (its worker process died on
    every attempt), ``"timeout"`` (it ran past ``timeout_s``) or ``"failed"`` (the job function raised)."""

    status: str
    reason: str


def finished_record(job: Job, done: Mapping[str, Result]) -> Optional[Result]:
    """The earlier result of ``job`` in ``done`` (by ``job["id"]``), if it may be reused.

    It may when it ran the same job (same ``key``) and did not fail (``status`` other than
    ``"failed"``); a diverged run is a result, a failed one is run again.

    Example::

        >>> finished_record({"id": "a", "key": "k1"}, {"a": {"id": "a", "key": "k1", "status": "ok"}})
        {'id': 'a', 'key': 'k1', 'status': 'ok'}
        >>> finished_record({"id": "a", "key": "k2"}, {"a": {"id": "a", "key": "k1", "status": "ok"}}) is None
        True
    """
    previous = done.get(job["id"])
    if previous is None or previous.get("key") != job["key"] or previous.get("status") == "failed":
        return None
    return previous


def read_log(path: Union[str, os.PathLike]) -> dict[str, Result]:
    """The results of a JSON-lines log written by :meth:`JobPool.run`, by ``id`` (the last one wins).

    A missing file is an empty log; a line cut short by an interruption is skipped. A name ending in
    ``.gz`` is read as a gzip-compressed log (an archive such as :func:`write_archive` writes).
    """
    done: dict[str, Result] = {}
    path = Path(path)
    if not path.is_file():
        return done
    text = _decompressed(path) if path.suffix == ".gz" else path.read_text()
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[record["id"]] = record
    return done


def _decompressed(path: Path) -> str:
    try:
        return gzip.decompress(path.read_bytes()).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as err:  # archives are written whole: damage is not an interruption
        raise ValueError(f"'{path}' is not a readable gzip-compressed log ({err}); restore it from version "
                         f"control or write it again with `write_archive`.") from err


def write_archive(path: Union[str, os.PathLike], records: Iterable[Result]) -> None:
    """Write ``records`` to ``path`` as one gzip-compressed JSON-lines log, atomically, in the order given.

    The bytes depend only on the records (no timestamp in the gzip header), so a rewritten archive of
    the same runs is the same file to version control. :func:`read_log` reads it back.

    Example::

        write_archive("benchmarks/results/baselines.jsonl.gz", [{"id": "a", "key": "k1", "status": "ok"}])
    """
    text = "".join(json.dumps(record) + "\n" for record in records)
    atomic_write_bytes(path, gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))


def append_records(path: Union[str, os.PathLike], records: Iterable[Result]) -> None:
    """Append ``records`` to a JSON-lines log, one line each (the log :func:`read_log` reads).

    A crash can leave a cut-short last line, which ``read_log`` skips; the next record then starts on
    a line of its own, so the two are never glued into one unreadable line.
    """
    text = "".join(json.dumps(record) + "\n" for record in records)
    Path(path).parent.mkdir(parents=True, exist_ok=True)  # a log in a folder not made yet (a first run)
    with open(path, "a+b") as f:  # appends always go to the end; reads may look at the last byte
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                text = "\n" + text
        f.write(text.encode())


def _worker_main(function: Callable[[Job], Result], conn: Connection) -> None:
    """A worker process: run each job it is sent, send its result back; ``None`` ends it."""
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the pool's process ended without closing the pool
            return
        if job is None:
            return
        conn.send(("started", None))  # the job's clock starts now, not while this process was importing
        try:
            conn.send(("result", function(job)))
        except Exception as err:  # the job function raised: a result of its own, not a dead worker
            conn.send(("error", f"{type(err).__name__}: {err}"[:500]))


#: Seconds a fresh worker process may take to import torch and Lightning before a job's clock runs.
_START_UP_S = 60.0


class _Worker:
    """One worker process and the job it is running (its index in the batch, its start time)."""

    def __init__(self, context: Any, function: Callable[[Job], Result]) -> None:
        self.conn, child = context.Pipe()
        # not a daemon: a job may start processes of its own (DataLoader workers); the pool ends it
        self.process = context.Process(target=_worker_main, args=(function, child))
        self.process.start()
        child.close()
        self.index: Optional[int] = None
        self.started = 0.0

    def send(self, index: int, job: Job) -> None:
        # Until the worker says it took the job, its clock starts at the latest after a start-up
        # allowance: a fresh worker first imports torch and Lightning.
        self.index, self.started = index, time.monotonic() + _START_UP_S
        self.conn.send(job)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


class JobPool:
    """Run a job function over job dicts, in ``processes`` worker processes or in this one.

    Worker processes are ``spawn``-ed (forking after torch has started its threads can deadlock) and
    live as long as the pool, so that one pays their start-up (importing torch and Lightning) once
    for all the batches it runs. Each worker runs one job at a time, so the pool knows which job a
    dead worker was running: that job alone is run again, up to ``retries`` times, on a fresh
    worker, then recorded as failed with status ``"worker_died"``. A job running longer than
    ``timeout_s`` has its worker killed and is recorded with status ``"timeout"`` (not retried). A
    job function that raises gives status ``"failed"``. An interrupt (Ctrl-C) kills the workers and
    drops the queued jobs; with a log, a rerun resumes after the jobs that ended.

    Args:
        function: A module-level function ``job -> result`` (picklable); it should catch its own
            errors and return them as a result.
        processes: Worker processes; ``0`` runs every job in this process, in order.
        retries: Times a job whose worker process died is run again.
        timeout_s: Wall-clock limit of one job in a worker process; ``None``: none.

    Raises:
        ValueError: an argument is out of range.

    Example::

        from ganno_lightning.trials.pool import JobPool, read_log

        with JobPool(train_one, processes=4) as pool:  # train_one(job: dict) -> dict, module level
            results = pool.run(jobs, failure=lambda job, why: {"id": job["id"], "status": why.status},
                               log="runs.jsonl", done=read_log("runs.jsonl"))
    """

    def __init__(self, function: Callable[[Job], Result], processes: int = 0, retries: int = 1,
                 timeout_s: Optional[float] = None) -> None:
        if not callable(function):
            raise ValueError(f"`function` must be a module-level function job -> result, got {function!r}.")
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 0:
            raise ValueError(f"`processes` must be an int >= 0 (0 runs jobs in this process), got {processes!r}.")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"`retries` must be an int >= 0, got {retries!r}.")
        if timeout_s is not None and not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise ValueError(f"`timeout_s` must be a positive number of seconds or None, got {timeout_s!r}.")
        self.function = function
        self.processes = processes
        self.retries = retries
        self.timeout_s = None if timeout_s is None else float(timeout_s)
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []

    def __enter__(self) -> "JobPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes (each finishes nothing new: the pool only closes between batches)."""
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except OSError:
                pass  # it already died
        for worker in self._workers:
            worker.process.join(timeout=10)
            worker.kill()
        self._workers = []

    def _terminate(self) -> None:
        for worker in self._workers:
            worker.kill()
        self._workers = []

    # ------------------------------------------------------------------------------------------
    def run(
        self,
        jobs: Sequence[Job],
        failure: Callable[[Job, JobFailure], Result],
        log: Union[str, os.PathLike, None] = None,
        done: Optional[Mapping[str, Result]] = None,
        order: Optional[Callable[[Job], Any]] = None,
        on_result: Optional[Callable[[Result, int, int], None]] = None,
        more: Optional[Callable[[], Optional[Job]]] = None,
    ) -> list[Result]:
        """Run ``jobs``; their results in the order of ``jobs``.

        Args:
            jobs: Job dicts; with ``log`` or ``done``, each has a unique ``"id"`` and a ``"key"``
                naming everything its result depends on.
            failure: Builds the result of a job that has none of its own, from the job and why.
            log: A JSON-lines file; each new result is appended as soon as its job ends.
            done: Earlier results by id (:func:`read_log`); a job's is reused when
                :func:`finished_record` allows, and the job is not run.
            order: Sort key of the queue for worker processes (e.g. longest first, so that no slow
                job is left alone at the end); in-process runs keep the order of ``jobs``.
            on_result: Called here as each new result arrives, with the number of new results so far
                and the number of jobs to run (progress lines).
            more: Asked, here, for one more job whenever a worker is free and no job is queued
                (in-process: after each job); ``None`` means none for now. It is asked again after
                every result and the run ends when it has none and no job is running, so an
                adaptive search (BOIL) can choose each job knowing every result and every job
                still running. Its jobs' results follow those of ``jobs`` in the order asked.
        """
        jobs = list(jobs)  # `more` appends to it
        results: dict[int, Result] = {}
        pending = []
        for index, job in enumerate(jobs):
            previous = finished_record(job, done) if done else None
            if previous is not None:
                results[index] = previous
            else:
                pending.append(index)
        reused = len(jobs) - len(pending)
        log_path = None if log is None else Path(log)

        def finish(index: int, result: Result) -> None:
            results[index] = result
            if log_path is not None:
                append_records(log_path, [result])
            if on_result is not None:
                on_result(result, len(results) - reused, len(jobs) - reused)

        def ask() -> Optional[int]:
            job = None if more is None else more()
            if job is None:
                return None
            jobs.append(job)
            return len(jobs) - 1

        if self.processes == 0:
            queue = iter(pending)
            while (index := next(queue, None)) is not None or (index := ask()) is not None:
                try:
                    result = self.function(jobs[index])
                except Exception as err:  # one broken job must not stop the others
                    result = failure(jobs[index], JobFailure("failed", f"{type(err).__name__}: {err}"[:500]))
                finish(index, result)
        else:
            if order is not None:
                pending.sort(key=lambda i: order(jobs[i]))
            try:
                self._run_in_workers(jobs, pending, failure, finish, ask)
            except BaseException:
                self._terminate()  # Ctrl-C: drop the queued jobs instead of waiting for them
                raise
        return [results[index] for index in range(len(jobs))]

    def _run_in_workers(self, jobs: Sequence[Job], queue: list[int], failure: Callable[[Job, JobFailure], Result],
                        finish: Callable[[int, Result], None], ask: Callable[[], Optional[int]]) -> None:
        queue = list(queue)
        deaths: dict[int, int] = {}
        while True:
            # hand queued jobs to idle workers, starting (or replacing) workers as needed
            for worker in [w for w in self._workers if w.index is None and not w.process.is_alive()]:
                worker.kill()  # died between jobs: no job of its own to retry
                self._workers.remove(worker)
            while True:
                if not queue and self._has_room():
                    asked = ask()  # a free worker and nothing queued: one more job, if any
                    if asked is not None:
                        queue.append(asked)
                if not queue:
                    break
                idle = next((w for w in self._workers if w.index is None), None)
                if idle is None and len(self._workers) < self.processes:
                    idle = _Worker(self._context, self.function)
                    self._workers.append(idle)
                if idle is None:
                    break
                index = queue.pop(0)
                try:
                    idle.send(index, jobs[index])
                except OSError:  # it died just now (or could not start): as if while running the job
                    self._worker_died(idle, jobs, queue, deaths, failure, finish)
            busy = [w for w in self._workers if w.index is not None]
            if not busy:
                if queue:
                    continue  # every job handed out ended at once (its worker could not take it)
                break
            wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=self._wait_s(busy))
            now = time.monotonic()
            for worker in busy:
                index = worker.index
                if worker.conn.poll():
                    try:
                        kind, payload = worker.conn.recv()
                    except (EOFError, OSError):  # died while sending
                        kind, payload = "died", None
                    if kind == "started":
                        worker.started = now
                        continue
                    if kind != "died":
                        worker.index = None
                        if kind == "result":
                            finish(index, payload)
                        else:
                            finish(index, failure(jobs[index], JobFailure("failed", payload)))
                        continue
                elif worker.process.is_alive():
                    if self.timeout_s is not None and now - worker.started > self.timeout_s:
                        worker.kill()
                        self._workers.remove(worker)
                        reason = f"no result within {self.timeout_s:g}s"
                        finish(index, failure(jobs[index], JobFailure("timeout", reason)))
                    continue
                # the worker process died (killed, out of memory, os._exit) while running this job
                self._worker_died(worker, jobs, queue, deaths, failure, finish)

    def _has_room(self) -> bool:
        return len(self._workers) < self.processes or any(w.index is None for w in self._workers)

    def _worker_died(self, worker: _Worker, jobs: Sequence[Job], queue: list[int], deaths: dict[int, int],
                     failure: Callable[[Job, JobFailure], Result], finish: Callable[[int, Result], None]) -> None:
        """Replace a dead worker; run its job again (first in line) or, past ``retries``, record it."""
        index = worker.index
        worker.kill()
        self._workers.remove(worker)
        deaths[index] = deaths.get(index, 0) + 1
        code = worker.process.exitcode
        if deaths[index] > self.retries:
            reason = f"its worker process died {deaths[index]} time(s) (last exit code {code})"
            finish(index, failure(jobs[index], JobFailure("worker_died", reason)))
        else:
            warnings.warn(
                f"a worker process died (exit code {code}) running job {_name(jobs[index], index)}; "
                f"running it again ({deaths[index]} of {self.retries} retries).",
                stacklevel=5,
            )
            queue.insert(0, index)

    def _wait_s(self, busy: Iterable[_Worker]) -> Optional[float]:
        if self.timeout_s is None:
            return None
        now = time.monotonic()
        return max(0.0, min((w.started + self.timeout_s - now for w in busy), default=self.timeout_s))


def _name(job: Job, index: int) -> str:
    return str(job.get("id", f"#{index}"))
