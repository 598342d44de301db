"""RuleSearchCallback with a real Lightning Trainer on the digits task."""

import os

import pytest
import torch

from ganno_lightning.examples.digits import DigitsClassifier, DigitsDataModule
from ganno_lightning.nos import NonFiniteUpdateError, RuleOptimizer, RuleSearchCallback
from ganno_lightning.nos.dsl import UnknownNameError
from ganno_lightning.trials.trainer import short_run_trainer


def _trainer(cb, max_steps=30):
    # the same quiet Trainer the rule search scores its candidates with
    return short_run_trainer(max_steps, val_every=10, root=os.getcwd(), callbacks=[cb])


def test_installs_rule_optimizer_and_reports_reward():
    torch.manual_seed(0)
    cb = RuleSearchCallback("powersign", lr=0.05, monitor="val_acc", mode="max")
    trainer = _trainer(cb)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    assert isinstance(trainer.optimizers[0], RuleOptimizer)
    assert trainer.optimizers[0].param_groups[0]["rule"] == "mul(exp(mul(sign_g, sign_m)), g)"
    assert trainer.global_step == 30
    assert [s for s, _ in cb.curve] == [10, 20, 30]
    assert not cb.diverged
    assert cb.reward == cb.curve[-1][1] and cb.reward > 0.5  # PowerSign learns digits in 30 steps
    assert cb.result()["rule"] == "mul(exp(mul(sign_g, sign_m)), g)"


def test_min_mode_negates_and_decay_steps_default_to_max_steps():
    cb = RuleSearchCallback("addsign_ld", lr=0.05, monitor="val_loss", mode="min")
    trainer = _trainer(cb, max_steps=20)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    assert trainer.optimizers[0].param_groups[0]["decay_steps"] == 20
    assert cb.reward == -cb.curve[-1][1] < 0


def test_diverging_rule_stops_early():
    # gradient ascent with a large step: the loss explodes within a few steps
    cb = RuleSearchCallback("neg(g)", lr=5.0, monitor="val_acc", mode="max", divergence_factor=3.0)
    trainer = _trainer(cb, max_steps=200)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    assert cb.diverged and cb.reward is None
    assert "exceeded" in cb.reason or "non-finite" in cb.reason
    assert trainer.global_step < 50


def test_nan_rule_marks_diverged_and_raises_clear_error():
    cb = RuleSearchCallback("log(sub(g, g))", lr=0.1, monitor="val_acc", mode="max")
    with pytest.raises(NonFiniteUpdateError, match="non-finite update"):
        _trainer(cb).fit(DigitsClassifier(), datamodule=DigitsDataModule())
    assert cb.diverged and "non-finite" in cb.reason


def test_unlogged_monitor_is_a_clear_error():
    cb = RuleSearchCallback("g", lr=0.1, monitor="val_accuracy", mode="max")
    with pytest.raises(ValueError, match=r"`monitor` 'val_accuracy' was not logged.*'val_acc'"):
        _trainer(cb, max_steps=10).fit(DigitsClassifier(), datamodule=DigitsDataModule())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(rule="g", lr=-1.0), ValueError, r"`lr` must be a positive float, got -1.0"),
        (dict(rule="g", mode="maximize"), ValueError, r"`mode` must be 'min' or 'max', got 'maximize'"),
        (dict(rule="g", divergence_factor=1.0), ValueError, r"`divergence_factor` must be a float > 1, got 1.0"),
        (dict(rule="g", monitor=""), ValueError, r"`monitor` must be the name"),
        (dict(rule="mul(gg, 2)"), UnknownNameError, r"unknown operand 'gg'"),
    ],
)
def test_constructor_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        RuleSearchCallback(**kwargs)


def test_save_resume_compare(tmp_path):
    # one run of 20 steps == 10 steps, checkpoint, resume for 10 more (weights, optimizer state, curve)
    torch.manual_seed(0)
    full = RuleSearchCallback("powersign", lr=0.05, monitor="val_acc", mode="max")
    model_full = DigitsClassifier()
    _trainer(full, max_steps=20).fit(model_full, datamodule=DigitsDataModule())

    torch.manual_seed(0)
    first = RuleSearchCallback("powersign", lr=0.05, monitor="val_acc", mode="max")
    model = DigitsClassifier()
    trainer = _trainer(first, max_steps=10)
    trainer.fit(model, datamodule=DigitsDataModule())
    ckpt = tmp_path / "half.ckpt"
    trainer.save_checkpoint(ckpt)

    second = RuleSearchCallback("powersign", lr=0.05, monitor="val_acc", mode="max")
    resumed = DigitsClassifier()
    trainer = _trainer(second, max_steps=20)
    trainer.fit(resumed, datamodule=DigitsDataModule(), ckpt_path=ckpt)
    assert isinstance(trainer.optimizers[0], RuleOptimizer)
    assert second.curve[0] == first.curve[0]
    assert [s for s, _ in second.curve] == [s for s, _ in full.curve] == [10, 20]
    # the data order after resuming mid-epoch differs from the uninterrupted run, so compare the
    # optimizer state (carried over) rather than the weights
    state = trainer.optimizers[0].state_dict()["state"]
    assert all(int(s["step"]) == 20 for s in state.values())
    assert all("exp_avg" in s for s in state.values())
