"""The SQLite store under concurrent processes, and a checkpoint writer killed mid-write."""

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ganno_lightning.files import atomic_write_bytes, remove_stale_tmp
from ganno_lightning.pbt.core import LineageEvent
from ganno_lightning.pbt.store import PopulationStore

REPO = Path(__file__).resolve().parents[2]


def test_report_snapshot_history_and_lineage(tmp_path):
    store = PopulationStore(tmp_path / "pop")
    store.init_population({"mode": "min", "space": {"lr": {"low": 0.1, "high": 1.0}}})
    assert store.register(0, {"lr": 0.5}).hyperparameters == {"lr": 0.5}
    assert store.register(0, {"lr": 0.9}).hyperparameters == {"lr": 0.5}  # re-register keeps the stored values
    store.register(1, {"lr": 0.2})
    store.report(0, step=10, score=0.3, hyperparameters={"lr": 0.5}, checkpoint="a.ckpt")
    store.report(1, step=10, score=float("nan"), hyperparameters={"lr": 0.2}, checkpoint="b.ckpt")
    members = store.members()
    assert members[0].score == 0.3 and members[0].checkpoint == "a.ckpt" and members[0].step == 10
    assert members[1].score is None  # NaN is stored as NULL: the callback maps divergence to inf first
    event = LineageEvent(1, 10, 0, 10, 0.9, 0.3, {"lr": 0.2}, {"lr": 0.6})
    store.record_exploit(event)
    assert store.members()[1].hyperparameters == {"lr": 0.6}
    assert [e.donor for e in store.lineage()] == [0]
    assert [(h["member"], h["step"]) for h in store.history()] == [(0, 10), (1, 10)]
    with pytest.raises(KeyError, match="Member 5 is not registered"):
        store.report(5, 1, 0.1, {"lr": 0.5}, None)


def test_resume_with_different_settings_names_the_setting(tmp_path):
    PopulationStore(tmp_path).init_population({"mode": "min", "monitor": "val_loss"})
    assert PopulationStore(tmp_path).init_population({"mode": "min", "monitor": "val_loss"})["mode"] == "min"
    with pytest.raises(ValueError, match="created with monitor='val_loss', got 'val_acc'"):
        PopulationStore(tmp_path).init_population({"mode": "min", "monitor": "val_acc"})


def test_unwritable_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match="`population_dir` must be a writable directory"):
        PopulationStore(blocker / "pop")
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match="writable"):
            PopulationStore(locked)


def _hammer(directory: str, member: int, n: int) -> None:
    store = PopulationStore(directory)
    store.register(member, {"lr": 0.1})
    for step in range(n):
        store.report(member, step, float(step), {"lr": 0.1 + step}, None)
        store.members()


def test_concurrent_processes_lose_no_report(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), m, 30)) for m in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = PopulationStore(tmp_path)
    history = store.history()
    assert len(history) == 90
    assert {m: r.step for m, r in store.members().items()} == {0: 29, 1: 29, 2: 29}


def test_writer_killed_mid_write_leaves_the_old_checkpoint_and_store_intact(tmp_path):
    """SIGKILL a process halfway through writing a checkpoint: readers still get the last whole one."""
    store = PopulationStore(tmp_path)
    store.register(0, {"lr": 0.1})
    path = store.checkpoint_path(0, 0)
    payload = os.urandom(1 << 20)
    atomic_write_bytes(path, payload)
    store.report(0, 0, 1.0, {"lr": 0.1}, path)
    marker = tmp_path / "halfway"
    child = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from ganno_lightning.files import atomic_file
        from ganno_lightning.pbt.store import PopulationStore
        store = PopulationStore({str(tmp_path)!r})
        new = store.checkpoint_path(0, 10)
        old = store.checkpoint_path(0, 0)
        with atomic_file(new) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"x" * (1 << 19))
                f.flush()
                Path({str(marker)!r}).touch()
                time.sleep(60)  # killed here, half written
        store.report(0, 10, 0.5, {{"lr": 0.2}}, new)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 60
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, "writer did not reach the halfway point"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    record = PopulationStore(tmp_path).members()[0]
    assert record.step == 0 and Path(record.checkpoint).read_bytes() == payload
    assert not store.checkpoint_path(0, 10).exists()  # no half file under the real name
    leftovers = [p for p in path.parent.iterdir() if ".tmp-" in p.name]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size == 1 << 19
    assert remove_stale_tmp(path.parent) == 1
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_prune_keeps_newest_and_the_referenced_checkpoint(tmp_path):
    store = PopulationStore(tmp_path)
    store.register(0, {"lr": 0.1})
    for step in (1, 2, 3, 4):
        atomic_write_bytes(store.checkpoint_path(0, step), b"c")
    store.report(0, 1, 0.1, {"lr": 0.1}, store.checkpoint_path(0, 1))
    removed = store.prune_checkpoints(0, keep=2)
    assert sorted(p.name for p in removed) == ["step_000000002.ckpt"]
    assert sorted(p.name for p in store.checkpoint_dir(0).iterdir()) == [
        "step_000000001.ckpt",
        "step_000000003.ckpt",
        "step_000000004.ckpt",
    ]


def test_an_exploit_points_the_member_at_its_exploited_state_and_prune_counts_it_newest(tmp_path):
    store = PopulationStore(tmp_path)
    store.register(0, {"lr": 0.1})
    report, exploited = store.checkpoint_path(0, 4), store.checkpoint_path(0, 4, exploit=True)
    assert exploited.name == "step_000000004_exploit.ckpt"
    for path in (store.checkpoint_path(0, 2), report, exploited):
        atomic_write_bytes(path, b"c")
    store.report(0, 4, 0.9, {"lr": 0.1}, report)
    store.record_exploit(LineageEvent(0, 4, 1, 4, 0.9, 0.3, {"lr": 0.1}, {"lr": 0.02}), checkpoint=exploited)
    member = store.members()[0]
    assert (member.checkpoint, member.hyperparameters, member.step, member.score) == (str(exploited), {"lr": 0.02}, 4, 0.9)
    assert [h["checkpoint"] for h in store.history()] == [str(report)]  # the report itself is unchanged
    assert [p.name for p in store.prune_checkpoints(0, keep=2)] == ["step_000000002.ckpt"]
