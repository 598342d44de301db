"""LearningCurve in a real CPU Trainer: points by global step, the stops (NaN, threshold, factor), resume."""

import math

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ganno_lightning.trials.curve import LearningCurve
from ganno_lightning.trials.trainer import short_run_trainer


class Scripted(pl.LightningModule):
    """8 training batches per epoch; the logged validation value and the training loss follow a script.

    ``val_at[step]`` is logged as ``val_loss`` by the validation at that optimizer step (default 1.0);
    ``loss_at[step]`` replaces the training loss of the batch that makes step ``step + 1``.
    """

    def __init__(self, val_at=None, loss_at=None, log_val=True):
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.val_at, self.loss_at, self.log_val = dict(val_at or {}), dict(loss_at or {}), log_val

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        if self.global_step in self.loss_at:
            loss = loss * 0 + self.loss_at[self.global_step]  # keeps the graph: backward still works
        return loss

    def validation_step(self, batch, batch_idx):
        if self.log_val:
            self.log("val_loss", torch.tensor(float(self.val_at.get(self.global_step, 1.0))))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(16, 4)), batch_size=2)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(2, 4)), batch_size=2)


def _fit(curve, module, max_steps=16, val_every=4, tmp_path=None, **overrides):
    trainer = short_run_trainer(max_steps, val_every, str(tmp_path), [curve], **overrides)
    trainer.fit(module)
    return trainer


def test_points_are_keyed_by_global_step_with_two_validations_per_epoch(tmp_path):
    curve = LearningCurve("val_loss")
    trainer = _fit(curve, Scripted(val_at={4: 0.9, 8: 0.8, 12: 0.7, 16: 0.6}), tmp_path=tmp_path)
    assert trainer.current_epoch == 2  # 8 batches per epoch, validations at steps 4 and 8 of each
    assert curve.curve == [(4, pytest.approx(0.9)), (8, pytest.approx(0.8)), (12, pytest.approx(0.7)),
                           (16, pytest.approx(0.6))]
    assert not curve.diverged and curve.reason == ""


def test_non_finite_validation_value_stops_the_run(tmp_path):
    curve = LearningCurve("val_loss")
    trainer = _fit(curve, Scripted(val_at={8: math.nan}), max_steps=40, tmp_path=tmp_path)
    assert curve.diverged and curve.reason == "non-finite val_loss nan at step 8"
    assert trainer.global_step == 8
    assert [s for s, _ in curve.curve] == [4, 8] and math.isnan(curve.curve[-1][1])  # recorded as it is


def test_check_finite_false_keeps_training_through_nan(tmp_path):
    curve = LearningCurve("val_loss", check_finite=False)
    trainer = _fit(curve, Scripted(val_at={8: math.nan}, loss_at={3: math.nan}), tmp_path=tmp_path)
    assert not curve.diverged and trainer.global_step == 16


@pytest.mark.parametrize("mode, threshold, values, stop_at", [
    ("min", 2.0, {4: 1.5, 8: 2.5}, 8),  # above the bound is worse when smaller is better
    ("max", 0.5, {4: 0.6, 8: 0.7, 12: 0.4}, 12),  # below it when larger is better
])
def test_divergence_threshold_stops_as_soon_as_the_value_is_worse(tmp_path, mode, threshold, values, stop_at):
    curve = LearningCurve("val_loss", mode=mode, divergence_threshold=threshold)
    trainer = _fit(curve, Scripted(val_at=values), max_steps=40, tmp_path=tmp_path)
    assert curve.diverged and trainer.global_step == stop_at
    assert "`divergence_threshold`" in curve.reason and f"at step {stop_at}" in curve.reason


def test_equal_to_the_threshold_does_not_stop(tmp_path):
    curve = LearningCurve("val_loss", divergence_threshold=1.0)  # the script logs 1.0 everywhere
    trainer = _fit(curve, Scripted(), tmp_path=tmp_path)
    assert not curve.diverged and trainer.global_step == 16


def test_non_finite_training_loss_stops_before_the_next_validation(tmp_path):
    curve = LearningCurve("val_loss")
    trainer = _fit(curve, Scripted(loss_at={5: math.inf}), max_steps=40, tmp_path=tmp_path)
    assert curve.diverged and curve.reason == "non-finite training loss inf at step 6"
    assert trainer.global_step == 6
    assert [s for s, _ in curve.curve] == [4, 6]  # Lightning validates once more when a run stops


def test_divergence_factor_is_relative_to_the_first_training_loss(tmp_path):
    curve = LearningCurve("val_loss", divergence_factor=5.0)
    module = Scripted(loss_at={0: 2.0, 1: 9.9, 2: 10.1})  # 9.9 < 5 x 2.0 <= 10.1
    trainer = _fit(curve, module, max_steps=40, tmp_path=tmp_path)
    assert curve.diverged and trainer.global_step == 3
    assert curve.reason == "training loss 10.1 exceeded 5 x the first loss 2 at step 3"


def test_missing_monitor_raises_when_strict_and_is_skipped_otherwise(tmp_path):
    with pytest.raises(ValueError, match=r"`monitor` 'val_loss' was not logged during validation"):
        _fit(LearningCurve("val_loss"), Scripted(log_val=False), tmp_path=tmp_path)
    lenient = LearningCurve("val_loss", strict=False)
    _fit(lenient, Scripted(log_val=False), tmp_path=tmp_path)
    assert lenient.curve == [] and not lenient.diverged


def test_the_decision_goes_through_the_strategy_on_every_rank(tmp_path, monkeypatch):
    # another rank diverged: this one's reduced decision is True although its own values are fine
    monkeypatch.setattr(pl.strategies.SingleDeviceStrategy, "reduce_boolean_decision", lambda self, d, all=True: True)
    curve = LearningCurve("val_loss")
    trainer = _fit(curve, Scripted(), max_steps=40, tmp_path=tmp_path)
    assert curve.diverged and curve.reason == "another rank diverged" and trainer.global_step == 1


def test_save_resume_compare(tmp_path):
    full = LearningCurve("val_loss", divergence_factor=100.0)
    _fit(full, Scripted(val_at={4: 0.9, 8: 0.8, 12: 0.7, 16: 0.6}), tmp_path=tmp_path)
    first = LearningCurve("val_loss", divergence_factor=100.0)
    trainer = _fit(first, Scripted(val_at={4: 0.9, 8: 0.8}), max_steps=8, tmp_path=tmp_path)
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    second = LearningCurve("val_loss", divergence_factor=100.0)
    trainer = short_run_trainer(16, 4, str(tmp_path), [second])
    trainer.fit(Scripted(val_at={4: 0.9, 8: 0.8, 12: 0.7, 16: 0.6}), ckpt_path=tmp_path / "half.ckpt")
    assert second.curve == full.curve
    assert second._first_loss == first._first_loss  # the reference of the factor is the run's first loss


@pytest.mark.parametrize("kwargs, match", [
    (dict(monitor=""), r"`monitor` must be the name of a logged validation metric, got ''"),
    (dict(mode="maximize"), r"`mode` must be 'min' or 'max', got 'maximize'"),
    (dict(divergence_factor=1.0), r"`divergence_factor` must be a float > 1, got 1.0"),
    (dict(divergence_factor=True), r"`divergence_factor` must be a float > 1, got True"),
    (dict(divergence_threshold="high"), r"`divergence_threshold` must be a number or None, got 'high'"),
    (dict(divergence_threshold=math.nan), r"`divergence_threshold` must be a number or None, got nan"),
])
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LearningCurve(**kwargs)
