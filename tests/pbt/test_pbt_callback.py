"""PBTCallback in real Trainers: exploit makes the mutated LR the one in effect, resume, checks, logging."""

import csv
import re
import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch.utils.data import DataLoader, TensorDataset

from ganno_lightning.pbt import PBTCallback, PopulationStore


class ScoredRegression(pl.LightningModule):
    """A linear model with plain SGD that logs a fixed ``fake_score``, so tests choose who is the donor.

    It measures the learning rate actually used by every optimizer step: with plain SGD,
    ``w_after = w_before - lr * grad`` so ``lr = (w_before - w_after) / grad``.
    """

    def __init__(self, lr=0.1, score=1.0, optimizer="sgd", scheduler=None, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.layer = torch.nn.Linear(4, 1)
        self.lr, self.score, self.optimizer_name, self.scheduler = lr, score, optimizer, scheduler
        self.effective_lrs = []  # (global_step, lr measured from the update)
        self._before = None

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("fake_score", self.score, on_epoch=True, on_step=False)
        self.log("train_loss", loss)
        return loss

    def on_before_optimizer_step(self, optimizer):
        self._before = (self.layer.weight.detach().clone(), self.layer.weight.grad.detach().clone())

    def on_train_batch_end(self, outputs, batch, batch_idx):
        w0, grad = self._before
        delta = (w0 - self.layer.weight.detach()).flatten()
        g = grad.flatten()
        self.effective_lrs.append((self.global_step, float(delta[g.abs().argmax()] / g[g.abs().argmax()])))

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(32, 4, generator=g)
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)

    def configure_optimizers(self):
        if self.optimizer_name == "adam":
            opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        else:
            opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        if self.scheduler == "exp":
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)}
        return opt


def make_trainer(callbacks, max_epochs=2, logger=False, **kwargs):
    return pl.Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        **kwargs,
    )


def pbt(tmp_path, member, lr, **kwargs):
    options = dict(
        hyperparameters={"lr": {"low": 1e-4, "high": 1.0, "log": True}},
        monitor="fake_score",
        perturb_factors=(0.5, 2.0),
        resample_probability=0.0,
        initial_hyperparameters={"lr": lr},
    )
    options.update(kwargs)
    return PBTCallback(tmp_path / "pop", member=member, **options)


def test_exploit_loads_donor_and_the_mutated_lr_is_the_one_in_effect(tmp_path):
    # member 1 is the better one (lower fake_score); it trains first so its checkpoint is in the store
    donor = ScoredRegression(lr=0.01, score=0.1, seed=1)
    make_trainer([pbt(tmp_path, 1, 0.01)], max_epochs=1).fit(donor)
    donor_weight = donor.layer.weight.detach().clone()

    weights_after_exploit = {}

    class Spy(Callback):
        def on_train_epoch_start(self, trainer, module):
            weights_after_exploit[trainer.current_epoch] = module.layer.weight.detach().clone()

    model = ScoredRegression(lr=0.5, score=1.0, seed=0)
    callback = pbt(tmp_path, 0, 0.5)
    trainer = make_trainer([callback, Spy()], max_epochs=2)
    trainer.fit(model)

    assert callback.exploits == 1
    new_lr = callback.hyperparameters["lr"]
    assert new_lr == pytest.approx(0.005) or new_lr == pytest.approx(0.02)  # donor's 0.01 x {0.5, 2}
    # epoch 0 ran at its own LR; after the exploit at the end of epoch 0 it runs from the donor's
    # weights, and every update uses the explored LR, not the donor's restored 0.01 nor its own 0.5
    assert torch.equal(weights_after_exploit[1], donor_weight)
    steps_per_epoch = 4
    first, second = model.effective_lrs[:steps_per_epoch], model.effective_lrs[steps_per_epoch:]
    assert all(lr == pytest.approx(0.5, rel=1e-3) for _, lr in first)
    assert len(second) == steps_per_epoch
    assert all(lr == pytest.approx(new_lr, rel=1e-3) for _, lr in second)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(new_lr)

    store = PopulationStore(tmp_path / "pop")
    (event,) = store.lineage()
    assert (event.member, event.donor, event.step) == (0, 1, 4)
    assert event.old_hyperparameters == {"lr": 0.5} and event.new_hyperparameters == {"lr": new_lr}
    assert store.members()[0].status == "done"


def test_exploit_with_a_scheduler_sets_base_lrs_after_the_load(tmp_path):
    donor = ScoredRegression(lr=0.04, score=0.1, scheduler="exp", seed=1)
    make_trainer([pbt(tmp_path, 1, 0.04)], max_epochs=2).fit(donor)  # donor LR now 0.04 * 0.5**2 = 0.01

    model = ScoredRegression(lr=0.5, score=1.0, scheduler="exp")
    callback = pbt(tmp_path, 0, 0.5)
    trainer = make_trainer([callback], max_epochs=2)
    trainer.fit(model)
    new_base = callback.hyperparameters["lr"]
    assert new_base in (pytest.approx(0.02), pytest.approx(0.08))
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.base_lrs == [pytest.approx(new_base)]
    # the donor's schedule position (factor 0.25 after its 2 epochs) continues from the new base:
    # exploit after epoch 0, then one more epoch of training and one more x0.5 step
    second_epoch = [lr for _, lr in model.effective_lrs[4:]]
    assert all(lr == pytest.approx(new_base * 0.25, rel=1e-3) for lr in second_epoch)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(new_base * 0.125)


def test_save_resume_continues_with_the_checkpointed_values(tmp_path):
    callback = pbt(tmp_path, 0, 0.3)
    make_trainer([callback], max_epochs=2).fit(ScoredRegression(lr=0.3))
    store = PopulationStore(tmp_path / "pop")
    checkpoint = store.members()[0].checkpoint
    assert Path(checkpoint).exists()
    saved = torch.load(checkpoint, weights_only=False)
    (state,) = [v for k, v in saved["callbacks"].items() if k.startswith("PBTCallback")]
    assert state["hyperparameters"] == {"lr": 0.3} and state["last_ready"] == 2

    resumed = pbt(tmp_path, 0, 0.9)  # a different initial value must not win over the checkpoint's
    model = ScoredRegression(lr=0.9)
    trainer = make_trainer([resumed], max_epochs=3)
    trainer.fit(model, ckpt_path=checkpoint)
    assert resumed.hyperparameters == {"lr": 0.3}
    assert resumed.ready_count == 3 and resumed._last_ready == 3
    assert [lr for _, lr in model.effective_lrs] == [pytest.approx(0.3, rel=1e-3)] * 4
    assert [h["step"] for h in store.history()] == [4, 8, 12]


def test_callback_attribute_setter_tunes_another_callback(tmp_path):
    class IntervalCallback(Callback):  # stands in for GANNOCallback's `interval`
        def __init__(self):
            self.interval = 10
            self.seen = []

        def on_train_epoch_start(self, trainer, module):
            self.seen.append(self.interval)

    space = {"interval": {"low": 1, "high": 100, "integer": True}}
    setters = {"interval": "callback:IntervalCallback.interval"}
    donor_cb = IntervalCallback()
    make_trainer(
        [pbt(tmp_path, 1, None, hyperparameters=space, setters=setters, initial_hyperparameters={"interval": 20}), donor_cb],
        max_epochs=1,
    ).fit(ScoredRegression(score=0.1))
    assert donor_cb.seen == [20]
    target = IntervalCallback()
    callback = pbt(
        tmp_path, 0, None, hyperparameters=space, setters=setters, initial_hyperparameters={"interval": 50}
    )
    make_trainer([callback, target], max_epochs=2).fit(ScoredRegression(score=1.0))
    assert target.seen[0] == 50 and target.seen[1] in (10, 40)  # 20 x {0.5, 2}
    assert isinstance(target.interval, int)

    with pytest.raises(ValueError, match="0 callback\\(s\\) named `IntervalCallback`"):
        make_trainer(
            [pbt(tmp_path / "x", 0, None, hyperparameters=space, setters=setters, initial_hyperparameters={"interval": 5})]
        ).fit(ScoredRegression())


def test_logs_schedule_to_every_logger_including_wandb_offline(tmp_path):
    csv_logger = CSVLogger(tmp_path / "logs", name="member0")
    wandb_logger = WandbLogger(project="pbt-test", name="member0", save_dir=str(tmp_path), offline=True)
    make_trainer([pbt(tmp_path, 0, 0.2)], max_epochs=2, logger=[csv_logger, wandb_logger], log_every_n_steps=1).fit(
        ScoredRegression()
    )
    with open(Path(csv_logger.log_dir) / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("pbt/lr")]
    assert len(rows) >= 3 and all(float(r["pbt/lr"]) == pytest.approx(0.2) for r in rows)
    assert float(wandb_logger.experiment.summary["pbt/lr"]) == pytest.approx(0.2)
    run_dir = Path(wandb_logger.experiment.dir).parent
    wandb_logger.experiment.finish()
    assert any(name.endswith(".wandb") for name in os.listdir(run_dir))


def test_constructor_errors_quote_the_argument():
    ok = {"lr": {"low": 1e-4, "high": 0.1, "log": True}}
    with pytest.raises(ValueError, match="Unknown hyperparameter `dropout`"):
        PBTCallback("p", 0, {"dropout": {"low": 0.0, "high": 0.5}})
    with pytest.raises(ValueError, match=r"`lr`: The range \[0.1, 0.1\] is empty"):
        PBTCallback("p", 0, {"lr": {"low": 0.1, "high": 0.1}})
    with pytest.raises(ValueError, match=r"`perturb_factors` must be two positive floats, got \(0.8,\)"):
        PBTCallback("p", 0, ok, perturb_factors=(0.8,))
    with pytest.raises(ValueError, match="`member` must be a non-negative int, got -1"):
        PBTCallback("p", -1, ok)
    with pytest.raises(ValueError, match="`setters` names \\['wd'\\]"):
        PBTCallback("p", 0, ok, setters={"wd": "module:x"})
    with pytest.raises(ValueError, match="`ready_unit` must be 'step' or 'epoch'"):
        PBTCallback("p", 0, ok, ready_unit="batch")
    with pytest.raises(ValueError, match="missing \\['lr'\\]"):
        PBTCallback("p", 0, ok, initial_hyperparameters={"wd": 0.1})


def test_trainer_dependent_errors_come_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    model = ScoredRegression()
    with pytest.raises(PermissionError, match="`population_dir` must be a writable directory"):
        make_trainer([PBTCallback(blocker / "pop", 0, {"lr": {"low": 1e-3, "high": 1.0}})]).fit(model)
    assert model.effective_lrs == []

    model = ScoredRegression()
    beta = PBTCallback(tmp_path / "pop", 0, {"beta1": {"low": 0.5, "high": 0.99}}, monitor="fake_score")
    with pytest.raises(ValueError, match="`beta1` sets param-group key `betas`.*SGD"):
        make_trainer([beta]).fit(model)
    assert model.effective_lrs == []


def test_momentum_maps_to_betas_for_adam(tmp_path):
    callback = PBTCallback(
        tmp_path / "pop",
        0,
        {"momentum": {"low": 0.5, "high": 0.99}},
        monitor="fake_score",
        initial_hyperparameters={"momentum": 0.7},
    )
    trainer = make_trainer([callback], max_epochs=1)
    trainer.fit(ScoredRegression(optimizer="adam"))
    assert trainer.optimizers[0].param_groups[0]["betas"] == (0.7, 0.999)


def test_missing_monitor_fails_at_the_first_ready_point_naming_the_logged_metrics(tmp_path):
    callback = pbt(tmp_path, 0, 0.1, monitor="val_loss")
    with pytest.raises(RuntimeError, match="monitors `val_loss`, which was never logged.*`fake_score`"):
        make_trainer([callback], max_epochs=2).fit(ScoredRegression())
    store = PopulationStore(tmp_path / "pop")
    assert store.history() == [] and store.members()[0].status == "failed"


class ScheduledScore(ScoredRegression):
    """Logs ``scores[current_epoch]``: a member that improves over time."""

    def __init__(self, scores, **kwargs):
        super().__init__(**kwargs)
        self.scores = scores

    def training_step(self, batch, batch_idx):
        self.score = self.scores[self.current_epoch]
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("synchronous", [False, True])
def test_synchronous_ranking_compares_members_at_the_same_step(tmp_path, synchronous):
    # member 1 ran ahead: 0.5 after epoch 1 (step 4), 0.05 after epoch 2 (step 8)
    make_trainer([pbt(tmp_path, 1, 0.01)], max_epochs=3).fit(ScheduledScore([0.5, 0.05, 0.05], seed=1))
    # member 0 scores 0.3 at step 4: worse than member 1's latest report, better than its step-4 one
    callback = pbt(tmp_path, 0, 0.5, synchronous=synchronous)
    make_trainer([callback], max_epochs=2).fit(ScheduledScore([0.3, 0.3], seed=0))
    assert callback.exploits == (0 if synchronous else 1)


def test_synchronous_member_waits_for_slower_peers_then_ranks_without_them(tmp_path):
    store = PopulationStore(tmp_path / "pop")
    store.register(1, {"lr": 0.01})  # registered and running, but it never reports
    callback = pbt(tmp_path, 0, 0.5, synchronous=True, sync_timeout=0.5, min_population=1)
    with pytest.warns(UserWarning, match=r"members \[1\] have not reached step 4 after 0.5 s") as caught:
        make_trainer([callback], max_epochs=3).fit(ScoredRegression(lr=0.5))
    assert callback.exploits == 0
    # at the next ready point the silent member is not waited for again
    assert sum("have not reached" in str(w.message) for w in caught) == 1


def test_sync_timeout_must_be_a_non_negative_number(tmp_path):
    with pytest.raises(ValueError, match="`sync_timeout` must be a number of seconds >= 0, got -1"):
        pbt(tmp_path, 0, 0.5, synchronous=True, sync_timeout=-1)


@pytest.mark.parametrize("damage", ["truncate", "empty"])
def test_a_damaged_donor_checkpoint_skips_the_exploit_with_a_warning(tmp_path, damage):
    # member 1 is the better one, so member 0 would copy it, but member 1's checkpoint was cut short
    make_trainer([pbt(tmp_path, 1, 0.01)], max_epochs=1).fit(ScoredRegression(lr=0.01, score=0.1, seed=1))
    donor_checkpoint = Path(PopulationStore(tmp_path / "pop").members()[1].checkpoint)
    with open(donor_checkpoint, "r+b") as handle:
        handle.truncate(donor_checkpoint.stat().st_size // 2 if damage == "truncate" else 0)

    model = ScoredRegression(lr=0.5, score=1.0, seed=0)
    callback = pbt(tmp_path, 0, 0.5)
    with pytest.warns(UserWarning, match=re.escape(f"PBT checkpoint {str(donor_checkpoint)!r} is damaged")):
        make_trainer([callback], max_epochs=2).fit(model)

    assert callback.exploits == 0 and callback.hyperparameters == {"lr": 0.5}
    assert all(lr == pytest.approx(0.5, rel=1e-3) for _, lr in model.effective_lrs)  # trained on as it was
    store = PopulationStore(tmp_path / "pop")
    assert store.lineage() == [] and store.members()[0].status == "done" and store.members()[0].step == 8


def test_a_damaged_donor_is_passed_over_until_it_writes_another_checkpoint(tmp_path):
    # member 1 is the best but its checkpoint is cut short; member 2 is second best and whole
    make_trainer([pbt(tmp_path, 1, 0.01)], max_epochs=1).fit(ScoredRegression(lr=0.01, score=0.1, seed=1))
    make_trainer([pbt(tmp_path, 2, 0.02)], max_epochs=1).fit(ScoredRegression(lr=0.02, score=0.2, seed=2))
    damaged = Path(PopulationStore(tmp_path / "pop").members()[1].checkpoint)
    with open(damaged, "r+b") as handle:
        handle.truncate(damaged.stat().st_size // 2)

    callback = pbt(tmp_path, 0, 0.5, quantile=0.34)
    with pytest.warns(UserWarning) as caught:
        make_trainer([callback], max_epochs=3).fit(ScoredRegression(lr=0.5, score=1.0, seed=0))
    assert sum("is damaged" in str(w.message) for w in caught) == 1  # read once, not at every ready point
    assert [event.donor for event in PopulationStore(tmp_path / "pop").lineage()] == [2]
