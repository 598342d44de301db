"""JobPool: in-process and worker-process runs, a killed worker, a job too slow, the JSON-lines log."""

import json
import os
import signal
import time
from pathlib import Path

import pytest

from ganno_lightning.trials.pool import JobFailure, JobPool, finished_record, read_log, write_archive


# Job functions live at module level: spawned workers import this module to find them.
def square(job):
    if job.get("marker"):  # the first attempt kills its own worker, as SIGKILL or out-of-memory would
        marker = Path(job["marker"])
        if job.get("always") or not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
    if job.get("sleep"):
        time.sleep(job["sleep"])
    if job.get("raise"):
        raise RuntimeError("broken job")
    return {"id": job["id"], "key": job["key"], "status": "ok", "value": job["x"] ** 2, "pid": os.getpid()}


def failure(job, why: JobFailure):
    return {"id": job["id"], "key": job["key"], "status": why.status, "reason": why.reason}


def jobs(n, **extra):
    return [{"id": f"j{i}", "key": f"k{i}", "x": i, **extra} for i in range(n)]


def test_in_process_runs_every_job_here_in_order():
    seen = []
    with JobPool(square, processes=0) as pool:
        results = pool.run(jobs(4), failure, order=lambda job: -job["x"],  # order is for workers only
                           on_result=lambda result, n, total: seen.append((result["id"], n, total)))
    assert [r["value"] for r in results] == [0, 1, 4, 9]
    assert {r["pid"] for r in results} == {os.getpid()}
    assert seen == [("j0", 1, 4), ("j1", 2, 4), ("j2", 3, 4), ("j3", 4, 4)]


def test_a_job_that_raises_is_recorded_failed_in_process():
    with JobPool(square) as pool:
        results = pool.run([*jobs(1), {"id": "bad", "key": "k", "x": 1, "raise": True}], failure)
    assert results[0]["status"] == "ok"
    assert results[1] == {"id": "bad", "key": "k", "status": "failed", "reason": "RuntimeError: broken job"}


def test_worker_processes_give_the_results_in_job_order_and_persist_across_batches():
    with JobPool(square, processes=2) as pool:
        first = pool.run(jobs(5), failure)
        second = pool.run(jobs(3), failure)
    assert [r["value"] for r in first] == [0, 1, 4, 9, 16] and [r["value"] for r in second] == [0, 1, 4]
    pids = {r["pid"] for r in first + second}
    assert os.getpid() not in pids and len(pids) <= 2  # the same two workers served both batches


def test_a_killed_worker_is_retried_once_then_recorded(tmp_path):
    marker = tmp_path / "killed"
    # the victim dies while another worker runs a slower job: only the victim's job is run again
    batch = [{"id": "slow", "key": "ks", "x": 2, "sleep": 3}, {"id": "victim", "key": "kv", "x": 3, "marker": str(marker)}]
    with JobPool(square, processes=2, retries=1) as pool:
        with pytest.warns(UserWarning, match=r"a worker process died .* running job victim; running it again") as record:
            results = pool.run(batch, failure)
    assert marker.exists()
    assert [r["status"] for r in results] == ["ok", "ok"] and [r["value"] for r in results] == [4, 9]
    assert len([w for w in record if "worker process died" in str(w.message)]) == 1

    always = [{"id": "doomed", "key": "kd", "x": 3, "marker": str(marker), "always": True}, *jobs(1)]
    with JobPool(square, processes=1, retries=1) as pool:
        with pytest.warns(UserWarning, match="worker process died"):
            results = pool.run(always, failure)
    assert results[0]["status"] == "worker_died" and "died 2 time(s)" in results[0]["reason"]
    assert results[1]["status"] == "ok"  # a fresh worker took the next job


def test_a_job_past_the_timeout_is_killed_and_recorded():
    with JobPool(square, processes=1, timeout_s=2.0) as pool:
        results = pool.run([{"id": "slow", "key": "k", "x": 1, "sleep": 60}, *jobs(1)], failure)
    assert results[0] == {"id": "slow", "key": "k", "status": "timeout", "reason": "no result within 2s"}
    assert results[1]["status"] == "ok"


def test_log_then_resume_skips_finished_jobs_with_the_same_key(tmp_path):
    log = tmp_path / "runs.jsonl"
    with JobPool(square) as pool:
        pool.run(jobs(3), failure, log=log)
    assert [json.loads(line)["id"] for line in log.read_text().splitlines()] == ["j0", "j1", "j2"]
    with log.open("a") as f:
        f.write('{"id": "j9", "ke')  # a line cut short by an interruption
    done = read_log(log)
    assert set(done) == {"j0", "j1", "j2"}
    done["j1"] = {**done["j1"], "status": "failed"}  # a failed run is run again
    rerun = [*jobs(3)]
    rerun[2] = {**rerun[2], "key": "changed"}  # so is a job whose key changed
    ran = []
    with JobPool(square) as pool:
        results = pool.run([*rerun, *jobs(4)[3:]], failure, log=log, done=done,
                           on_result=lambda result, n, total: ran.append((result["id"], n, total)))
    assert ran == [("j1", 1, 3), ("j2", 2, 3), ("j3", 3, 3)]
    assert results[0] is done["j0"] and [r["value"] for r in results] == [0, 1, 4, 9]
    assert len(read_log(log)) == 4 and read_log(log)["j2"]["key"] == "changed"


def test_a_record_after_a_cut_short_line_starts_a_line_of_its_own(tmp_path):
    log = tmp_path / "runs.jsonl"
    log.write_text('{"id": "a", "key": "k", "status": "ok"}\n{"id": "b", "ke')  # killed mid-write
    JobPool(square).run([{"id": "c", "key": "k", "x": 3}], failure, log=log)
    assert sorted(read_log(log)) == ["a", "c"]


def test_an_archive_reads_back_as_its_log_is_the_same_bytes_when_rewritten_and_damage_is_named(tmp_path):
    records = [{"id": "a", "key": "k", "status": "ok", "curve": [[25, 0.5]]}, {"id": "b", "key": "k", "status": "ok"}]
    archive = tmp_path / "results" / "baselines.jsonl.gz"
    write_archive(archive, records)
    first = archive.read_bytes()
    assert read_log(archive) == {"a": records[0], "b": records[1]}
    write_archive(archive, records)
    assert archive.read_bytes() == first  # no timestamp: rewriting the same runs changes nothing to commit
    assert list(archive.parent.iterdir()) == [archive]  # written atomically: no temporary file left
    archive.write_bytes(first[: len(first) // 2])  # cut short by hand: an archive is never appended to
    with pytest.raises(ValueError, match=r"baselines\.jsonl\.gz' is not a readable gzip-compressed log"):
        read_log(archive)


def test_the_timeout_counts_from_when_the_worker_takes_the_job_not_from_its_start_up(tmp_path, monkeypatch):
    # a fresh worker imports the job's module first (torch and Lightning, in real use): slow here
    (tmp_path / "slow_to_import.py").write_text(
        "import time\ntime.sleep(2.0)\n\ndef double(job):\n    return {'id': job['id'], 'status': 'ok'}\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit sys.path
    from slow_to_import import double

    with JobPool(double, processes=1, timeout_s=1.0) as pool:
        results = pool.run([{"id": "quick", "key": "k"}], failure)
    assert results[0]["status"] == "ok"


def test_finished_record_rule():
    done = {"a": {"key": "k", "status": "diverged"}, "b": {"key": "k", "status": "failed"}}
    assert finished_record({"id": "a", "key": "k"}, done) is done["a"]  # a diverged run is a result
    assert finished_record({"id": "b", "key": "k"}, done) is None
    assert finished_record({"id": "a", "key": "other"}, done) is None
    assert finished_record({"id": "c", "key": "k"}, done) is None


def test_interrupt_kills_the_workers_and_drops_the_queue(monkeypatch):
    pool = JobPool(square, processes=1)

    def interrupt(result, n, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pool.run(jobs(5), failure, on_result=interrupt)
    assert pool._workers == []  # nothing left running; the next batch starts fresh workers
    assert [r["value"] for r in pool.run(jobs(2), failure)] == [0, 1]
    pool.close()


@pytest.mark.parametrize("kwargs, match", [
    (dict(processes=-1), r"`processes` must be an int >= 0 \(0 runs jobs in this process\), got -1"),
    (dict(processes=1.5), r"`processes` must be an int >= 0"),
    (dict(retries=-1), r"`retries` must be an int >= 0, got -1"),
    (dict(timeout_s=0), r"`timeout_s` must be a positive number of seconds or None, got 0"),
    (dict(function="square"), r"`function` must be a module-level function"),
])
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        JobPool(**{"function": square, **kwargs})


def test_docstring_examples():
    import doctest

    from ganno_lightning.trials import pool as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def _asker(total, results_seen, asked_at):
    """A `more` that hands out `total` jobs, noting how many results had arrived at each ask."""
    queue = jobs(total)

    def more():
        asked_at.append(len(results_seen))
        return queue.pop(0) if queue else None

    return more


def test_more_is_asked_for_a_job_whenever_a_worker_is_free():
    seen, asked_at = [], []
    with JobPool(square) as pool:  # in process: one job at a time, asked after each result
        results = pool.run([], failure, more=_asker(3, seen, asked_at), on_result=lambda r, n, t: seen.append(r))
    assert [r["value"] for r in results] == [0, 1, 4] and asked_at == [0, 1, 2, 3]
    seen, asked_at = [], []
    with JobPool(square, processes=2) as pool:
        results = pool.run(jobs(1), failure, more=_asker(4, seen, asked_at), on_result=lambda r, n, t: seen.append(r))
    assert [r["value"] for r in results] == [0, 0, 1, 4, 9]  # the given job first, then those asked for, in order
    assert asked_at[0] == 0  # the second worker was free before any result: asked at once
    assert asked_at[-1] == 5 and len(asked_at) >= 5  # asked again after the last result, and told none
