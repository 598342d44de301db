"""The study's store: what a trial looks like to the core, crash safety, and a driver killed mid-study."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ganno_lightning.boil import BOILStore, BOILTuner

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def test_a_trial_from_suggestion_to_its_end(tmp_path):
    store = BOILStore(tmp_path)
    store.init_study({"monitor": "val_loss", "mode": "min"})
    trial = store.add_trial([0.25], {"lr": 0.01}, 3, {"source": "acquisition", "m0": 0.5, "suggest_seconds": 0.25},
                            fit={"m0": 0.5, "g0": 12.0, "noise": float("nan")}, observations=4)
    assert store.trial(trial).status == "queued"
    assert store.trial(trial).observation().suggest_seconds == 0.25  # what max_overhead_share reads on resume
    store.start_trial(trial)
    with pytest.raises(ValueError, match="Trial 1 is running, not queued: each trial is trained once"):
        store.start_trial(trial)
    for step, epoch, value in [(5, 1, 0.9), (10, 1, 0.8), (15, 2, 0.7), (20, 3, float("nan"))]:
        store.report(trial, step, epoch, value, seconds=step / 10)
    store.end_epoch(trial, 2, 1.6)
    record = store.trial(trial)
    assert record.observation().curve == [(1, 0.8), (2, 0.7)]  # epoch 3 did not complete
    assert math.isnan(record.points[-1].value)  # NaN survives SQLite (stored as NULL)
    store.finish_trial(trial, "diverged", "non-finite val_loss")
    assert store.trial(trial).observation().curve[-1][0] == 3  # a diverged trial keeps its last point
    fit = store.fits()[0]
    assert (fit["m0"], fit["g0"], fit["trial"], fit["observations"]) == (0.5, 12.0, trial, 4)
    assert fit["diagnostics"]["noise"] == "nan"
    assert store.spent() == (2, 2.0)
    with pytest.raises(ValueError, match="`status` must be one of"):
        store.finish_trial(trial, "running")
    with pytest.raises(KeyError, match="Trial 9 is not in the study"):
        store.trial(9)


def test_recover_marks_only_trials_whose_process_ended(tmp_path):
    store = BOILStore(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan, alive = store.add_trial([0.1], {"lr": 0.1}, 2), store.add_trial([0.2], {"lr": 0.2}, 2)
    store.start_trial(orphan, pid=int(dead.stdout))
    store.start_trial(alive)  # this process: still alive
    store.report(orphan, 3, 1, 0.5, 1.0)
    assert store.recover() == [orphan]
    assert store.trial(orphan).status == "interrupted" and store.trial(orphan).points[0].value == 0.5
    assert store.trial(alive).status == "running"


DRIVER = textwrap.dedent("""
    import sys
    sys.path[:0] = [{here!r}, {repo!r}]
    from ganno_lightning.boil import BOILTuner
    BOILTuner(task="boil_tasks:tiny_task", space={{"lr": {{"low": 1e-3, "high": 0.3, "log": True}}}},
              epochs=(3, 3), budget_epochs=9, study_dir={study!r}, workers=0, check_task=False,
              task_kwargs={{"record": {record!r}, "kill_at_epoch": 3, "kill_marker": {marker!r}}}).run()
""")


def test_a_driver_killed_mid_study_loses_no_reported_point_and_resumes(tmp_path, suggest_calls):
    """The driver trains in its own process (workers=0) and SIGKILLs itself at the start of trial 1's epoch 3."""
    study, record, marker = tmp_path / "study", tmp_path / "record.jsonl", tmp_path / "killed"
    script = DRIVER.format(here=str(HERE), repo=str(REPO), study=str(study), record=str(record), marker=str(marker))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    store = BOILStore(study)
    (killed,) = store.trials()
    assert killed.status == "running" and killed.epochs_done == 2  # as the kill left it
    before = {(p.global_step, p.value) for p in killed.points}
    logged = {(r["step"], r["value"]) for r in map(json.loads, record.read_text().splitlines())}
    assert logged == before and len(before) == 2  # every reported point was committed

    resumed = BOILTuner(task="boil_tasks:tiny_task", space={"lr": {"low": 1e-3, "high": 0.3, "log": True}},
                        epochs=(3, 3), budget_epochs=9, study_dir=study, workers=0, check_task=False,
                        task_kwargs={"record": str(record), "kill_at_epoch": 3, "kill_marker": str(marker)})
    started = time.time()
    result = resumed.run()
    first = resumed.store.trial(killed.id)
    assert first.status == "interrupted" and {(p.global_step, p.value) for p in first.points} == before
    assert first.observation().curve == killed.observation().curve  # the prefix is data for the model
    assert [t.status for t in result.history[1:]] == ["done", "done"]
    assert result.spent_epochs == 8  # 2 of the killed trial + 2 x 3: the next 3 would pass the budget of 9
    assert suggest_calls[0]["observations"][0].status == "interrupted"
    assert [c["suggestion"].info["source"] for c in suggest_calls] == ["random", "random"]  # 3 = the initial design
    assert time.time() - started < 60



@pytest.mark.parametrize("damage", ["cut", "header", "middle"])
def test_a_damaged_study_file_is_named_with_the_fix_not_a_sqlite_traceback(tmp_path, damage):
    store = BOILStore(tmp_path)
    for trial in range(30):  # a few pages, so that the middle of the file is table data
        store.add_trial([0.5], {"lr": 0.1}, 3, {"source": "random", "note": "x" * 200})
    store.close()
    path, size = tmp_path / BOILStore.FILE_NAME, (tmp_path / BOILStore.FILE_NAME).stat().st_size
    with open(path, "r+b") as f:
        if damage == "cut":
            f.truncate(size // 2)
        else:
            f.seek(0 if damage == "header" else size // 2)
            f.write(b"GARBAGE" * 8 if damage == "header" else bytes(4096))
    with pytest.raises(ValueError, match=r"The study database '.*study.db' is damaged and cannot be read \(.*\)\."
                                         r" Restore it from a copy, or give a new `study_dir` to start again"):
        BOILStore(tmp_path)
