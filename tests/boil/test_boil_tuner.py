"""BOILTuner: bad input before anything trains, a run within its budget, resume, and workers that die."""

import json
import os

import pytest

from boil_tasks import FAST_CORE

from ganno_lightning.boil import BOILTuner
from ganno_lightning.boil.model import G0_GRID, M0_GRID

SPACE = {"lr": {"low": 1e-3, "high": 0.3, "log": True}, "batch_size": {"choices": [8, 16, 32]}}
TASK = "boil_tasks:tiny_task"


def tuner(tmp_path, **kwargs):
    defaults = dict(task=TASK, space=SPACE, epochs=(1, 3), budget_epochs=8, study_dir=tmp_path / "study", workers=0,
                    initial_random=2, **FAST_CORE)
    defaults.update(kwargs)
    return BOILTuner(**defaults)


@pytest.mark.parametrize("kwargs, match", [
    ({"space": {"lr": {"low": 1e-3, "high": 0.3}, "momentum": {"low": 0.5, "high": 0.9}}},
     r"`space` names `momentum`, which `task` 'boil_tasks:tiny_task' does not take \(its arguments: lr, hidden,"),
    ({"space": {"lr": {"low": 0.1, "high": 0.1}}}, r"`space`: Hyperparameter `lr`: The range \[0.1, 0.1\] is empty"),
    ({"space": {"batch_size": {"choices": [16]}}}, r"`space`: Hyperparameter `batch_size`: `choices` must list at"),
    ({"space": {}}, r"`space` must name at least one hyperparameter, got \{\}"),
    ({"trainer_kwargs": {"max_epochs": 5}}, r"`trainer_kwargs` sets `max_epochs`=5, but BOIL chooses each trial's length"
                                            r" within `epochs`=\(1, 3\)\. Remove `max_epochs`"),
    ({"trainer_kwargs": {"max_steps": 100}}, r"`trainer_kwargs` sets `max_steps`=100"),
    ({"budget_epochs": 1, "epochs": (2, 5)}, r"`budget_epochs`=1 is smaller than one trial: the shortest trial trains"
                                             r" t_min=2 epoch\(s\)"),
    ({"budget_seconds": 10.0}, r"Give one budget, `budget_epochs` or `budget_seconds`, got both"),
    ({"budget_epochs": None, "budget_seconds": -1.0}, r"`budget_seconds` must be a positive number of seconds, got -1.0"),
    ({"epochs": (3, 1)}, r"`epochs` must be \(t_min, t_max\), two ints with 1 <= t_min <= t_max, got \(3, 1\)"),
    ({"mode": "minimum"}, r"`mode` must be 'min' or 'max', got 'minimum'"),
    ({"task_kwargs": {"lr": 0.1}}, r"`task_kwargs` fixes \['lr'\], which `space` tunes"),
    ({"initail_random": 3}, r"Unknown BOIL core option `initail_random`=3; known: initial_random"),
    ({"task": "boil_tasks:no_such_factory"}, r"`task` 'boil_tasks:no_such_factory': 'boil_tasks' has no attribute"),
])
def test_bad_input_is_refused_before_anything_trains(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tuner(tmp_path, **kwargs)
    assert not (tmp_path / "study").exists()  # refused before the study was created


def test_an_unwritable_study_dir_names_the_argument(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match="`study_dir` must be a writable directory"):
        tuner(tmp_path, study_dir=blocker / "study")


def test_a_monitor_that_is_never_logged_is_found_by_a_one_batch_fit(tmp_path):
    study = tuner(tmp_path, monitor="val_acc")
    with pytest.raises(ValueError, match=r"`monitor` is 'val_acc', but the task never logs it in a one-batch fit; it"
                                         r" logs `val_loss`"):
        study.run()
    assert study.history() == []  # nothing trained, nothing suggested


def test_run_in_process_spends_the_budget_and_resumes_with_a_larger_one(tmp_path, capsys, suggest_calls):
    study = tuner(tmp_path, progress=True)
    result = study.run()
    trials = study.history()
    assert all(t.status == "done" for t in trials)
    assert result.spent_epochs == sum(t.epochs_done for t in trials) == 8  # lengths cut to the budget's room
    assert result.best_seen_value == min(v for t in trials for _, v in t.epoch_curve())
    assert result.recommended_by == "model"  # the GP has taken over: it picks among the tried configurations
    picked = next(t for t in trials if t.id == result.best_trial)
    assert result.best_values == picked.values and result.best_curve == picked.epoch_curve()
    assert result.best_value == min(v for _, v in picked.epoch_curve())
    assert {type(t.values["batch_size"]) for t in trials} == {int}
    assert "boil: trial 1 done after" in capsys.readouterr().err
    assert [len(c["observations"]) for c in suggest_calls] == list(range(len(trials)))
    assert [t.info["source"] for t in trials[:2]] == ["random", "random"]
    acquired = [t for t in trials if t.info["source"] == "acquisition"]
    assert acquired and acquired[0].info["fit_source"] == "fit"  # the real GP took over after 2
    assert all(t.info["fit_source"] in ("fit", "reused") for t in acquired)  # refitted every `refit_every` trials
    fits = study.store.fits()
    assert [f["trial"] for f in fits] == [t.id for t in acquired]
    assert all(f["m0"] in M0_GRID and f["g0"] in G0_GRID for f in fits)  # the learned compression, on its grid
    assert all(f["diagnostics"]["n_real"] == f["observations"] for f in fits)  # every finished trial is data
    study.close()
    more = tuner(tmp_path, budget_epochs=11).run()  # same settings, larger budget: trains on
    assert more.spent_epochs == 11 and len(more.history) > len(trials)
    json.dumps(more.to_dict())


def test_resume_with_other_settings_names_the_setting(tmp_path):
    tuner(tmp_path).close()
    with pytest.raises(ValueError, match=r"The study in '.*' was created with mode='min', got 'max'\. Use a new"
                                         r" `study_dir` or the original setting to resume"):
        tuner(tmp_path, mode="max")
    with pytest.raises(ValueError, match=r"created with epochs=\[1, 3\], got \[1, 4\]"):
        tuner(tmp_path, epochs=(1, 4))


def test_a_worker_killed_mid_trial_leaves_its_points_and_the_study_goes_on(tmp_path):
    """Worker processes (spawn): the first trial SIGKILLs its worker at the start of epoch 2."""
    record = tmp_path / "record.jsonl"
    study = tuner(tmp_path, workers=1, epochs=(3, 3), budget_epochs=6, check_task=False,
                  task_kwargs={"record": str(record), "kill_at_epoch": 2, "kill_marker": str(tmp_path / "killed")})
    study.run()
    first, second = study.history()[:2]
    assert first.status == "interrupted" and "worker_died" in first.reason
    assert [p.epoch for p in first.points] == [1] and first.epochs_done == 1  # its prefix is kept
    assert second.status == "done" and second.epochs_done == 3
    logged = [json.loads(line) for line in record.read_text().splitlines()]
    stored = {(p.global_step, p.value) for t in study.history() for p in t.points}
    assert {(r["step"], r["value"]) for r in logged} <= stored  # nothing reported was lost
    assert os.getpid() not in {r["pid"] for r in logged}  # the trials ran in worker processes


def test_a_factory_returning_a_module_and_datamodule_with_a_seed(tmp_path):
    result = tuner(tmp_path, task="boil_tasks:tiny_task_with_data", space={"lr": SPACE["lr"]},
                   budget_epochs=3, epochs=(3, 3)).run()
    assert result.history[0].status == "done" and len(result.best_curve) == 3


def test_ask_and_run_need_a_budget_or_task_only_where_they_do(tmp_path):
    study = BOILTuner(space=SPACE, study_dir=tmp_path / "study")  # ask/tell: no task, no budget needed
    assert study.ask() is not None
    with pytest.raises(ValueError, match="`task` is needed to run trials"):
        study.run()
    with pytest.raises(ValueError, match=r"`run\(\)` needs a budget"):
        BOILTuner(task=TASK, space=SPACE, study_dir=tmp_path / "other").run()


def test_the_acquisition_prices_trials_in_the_unit_the_budget_counts(tmp_path):
    assert tuner(tmp_path / "a").core.cost_unit == "epochs"
    assert tuner(tmp_path / "b", budget_epochs=None, budget_seconds=30.0).core.cost_unit == "seconds"
    assert tuner(tmp_path / "c", cost_unit="seconds").core.cost_unit == "seconds"  # the user's choice wins


def test_a_task_that_cannot_be_built_is_named_by_the_one_batch_check(tmp_path):
    with pytest.raises(ValueError, match=r"`task` 'boil_tasks:tiny_task' with \{.*\} \(the middle of `space`\) and"
                                         r" `task_kwargs`=\{'hidden': -1\} could not be built: RuntimeError"):
        tuner(tmp_path, task_kwargs={"hidden": -1}).run()
    with pytest.raises(ValueError, match=r"`trainer_kwargs`=\{'no_such_argument': 1\} are not valid Trainer arguments:"
                                         r" TypeError"):
        tuner(tmp_path / "other", trainer_kwargs={"no_such_argument": 1}).run()


def test_trials_that_fail_in_a_row_stop_the_study_with_the_last_error(tmp_path):
    """A failed trial spends no budget: without the limit, a broken task would be retried forever."""
    study = tuner(tmp_path, task_kwargs={"hidden": -1}, check_task=False, max_failures_in_a_row=2)
    with pytest.raises(RuntimeError, match=r"BOIL stopped: the last 2 trials failed without training an epoch"
                                           r" \(`max_failures_in_a_row`=2\); trial 2 ended failed: RuntimeError: .*"
                                           r" run again with the same `study_dir` to resume"):
        study.run()
    assert [t.status for t in study.history()] == ["failed", "failed"]
    with pytest.raises(ValueError, match=r"`max_failures_in_a_row` must be a positive int, got 0"):
        tuner(tmp_path / "other", max_failures_in_a_row=0)
