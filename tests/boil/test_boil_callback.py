"""BOILCallback in a real Trainer: points keyed by global step, one per epoch for the model, divergence."""

import math

import lightning.pytorch as pl
import pytest
from boil_tasks import tiny_task

from ganno_lightning.boil import BOILCallback, BOILTuner

SPACE = {"lr": {"low": 1e-3, "high": 0.3, "log": True}}


def _trainer(trial, callback, **kwargs):
    defaults = dict(max_epochs=trial.max_epochs, callbacks=[callback], logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def test_ask_tell_with_a_real_trainer_and_validation_twice_per_epoch(tmp_path, suggest_calls):
    tuner = BOILTuner(space=SPACE, epochs=(2, 2), study_dir=tmp_path / "study", budget_epochs=4)
    trial = tuner.ask()
    assert trial.max_epochs == 2 and set(trial.values) == {"lr"}
    callback = BOILCallback(tuner, trial)
    _trainer(trial, callback, val_check_interval=0.5).fit(tiny_task(**trial.values))  # 4 batches an epoch
    record = tuner.tell(trial)
    assert record.status == "done" and record.epochs_done == 2
    steps = [p.global_step for p in record.points]
    assert steps == [2, 4, 6, 8]  # every validation kept, keyed by its optimizer step
    assert [p.epoch for p in record.points] == [1, 1, 2, 2]
    # the model sees the last validation within each epoch
    assert record.observation().curve == [(1, record.points[1].value), (2, record.points[3].value)]
    assert record.seconds > 0
    second = tuner.ask()
    assert second.id != trial.id
    assert tuner.ask() is None  # 2 trials x 2 epochs: the epoch budget is committed
    assert len(suggest_calls[1]["observations"]) == 1 and len(suggest_calls[1]["pending"]) == 0
    assert suggest_calls[1]["spent_fraction"] == 0.5
    assert all(c["core"] is tuner.core for c in suggest_calls)


def test_a_non_finite_run_is_stopped_and_marked_diverged(tmp_path):
    tuner = BOILTuner(space=SPACE, epochs=(4, 4), study_dir=tmp_path / "study")
    trial = tuner.ask()
    trainer = _trainer(trial, BOILCallback(tuner, trial))
    trainer.fit(tiny_task(nan_from_epoch=2))
    record = tuner.tell(trial)
    assert record.status == "diverged" and "non-finite" in record.reason
    assert trainer.current_epoch < 3  # stopped early, not after 4 epochs
    curve = record.observation().curve
    assert curve[0][0] == 1 and math.isfinite(curve[0][1])
    assert not math.isfinite(curve[-1][1])  # a diverged trial ends in its non-finite value


def test_a_trainer_of_another_length_is_refused_and_the_trial_stays_queued(tmp_path):
    tuner = BOILTuner(space=SPACE, epochs=(3, 3), study_dir=tmp_path / "study")
    trial = tuner.ask()
    with pytest.raises(ValueError, match=r"Trial 1 trains for max_epochs=3, but the Trainer has `max_epochs`=5"):
        _trainer(trial, BOILCallback(tuner, trial), max_epochs=5).fit(tiny_task())
    assert tuner.store.trial(trial.id).status == "queued"
    with pytest.raises(ValueError, match="Trial 1 never started: train it with BOILCallback"):
        tuner.tell(trial)


def test_tell_takes_a_curve_from_any_training_loop(tmp_path):
    tuner = BOILTuner(space=SPACE, epochs=(1, 3), study_dir=tmp_path / "study")
    trial = tuner.ask()
    record = tuner.tell(trial, curve=[(1, 0.5), (2, 0.4), (3, 0.35)], seconds=2.0)
    assert record.status == "done" and record.observation().curve == [(1, 0.5), (2, 0.4), (3, 0.35)]
    assert tuner.result().best_value == 0.35 and tuner.result().best_values == trial.values


def test_callback_needs_a_study():
    with pytest.raises(ValueError, match="`tuner` must be a BOILTuner or a BOILStore"):
        BOILCallback(object(), 1)


def test_the_summary_of_a_diverged_study_is_strict_json(tmp_path):
    import json

    tuner = BOILTuner(space=SPACE, epochs=(1, 2), study_dir=tmp_path / "study")
    tuner.tell(tuner.ask(), curve=[(1, 0.5), (2, float("nan"))], status="diverged")
    summary = tuner.result().to_dict()
    assert json.loads(json.dumps(summary, allow_nan=False))["trials"][0]["curve"] == [[1, 0.5], [2, None]]
