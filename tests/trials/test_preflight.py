"""preflight_fit with a real tiny LightningModule and Trainer: passes, and each failure's one clear ValueError."""

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ganno_lightning.trials.preflight import preflight_fit


class Tiny(pl.LightningModule):
    """A linear model on 16 random points; logs ``val_loss`` (or nothing) in validation, counts its batches."""

    def __init__(self, log_val=True, fail_in_training=False):
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.log_val, self.fail_in_training = log_val, fail_in_training
        self.train_batches = self.val_batches = 0

    def _loader(self):
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)), batch_size=4)

    def train_dataloader(self):
        return self._loader()

    def val_dataloader(self):
        return self._loader()

    def training_step(self, batch, batch_idx):
        if self.fail_in_training:
            raise RuntimeError("shapes do not match\nsecond line of the trace")
        self.train_batches += 1
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.val_batches += 1
        if self.log_val:
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def check(module, monitor="val_loss", **kwargs):
    defaults = dict(task="`task` 'tests:tiny'", skip="check_task", trainer_kwargs={"accelerator": "cpu"},
                    trainer_key="trainer_kwargs")
    return preflight_fit(lambda: (module, None), monitor, **{**defaults, **kwargs})


def test_a_module_that_logs_the_monitor_passes_after_the_asked_number_of_batches(tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    module = Tiny()
    logged = check(module, batches=2)
    assert set(logged) == {"train_loss", "val_loss"} and isinstance(logged["val_loss"], float)
    assert (module.train_batches, module.val_batches) == (2, 2)
    assert list((tmp_path / "cwd").iterdir()) == []  # a throwaway Trainer: nothing written


def test_the_callers_callbacks_run_in_the_fit():
    started = []

    class Seen(pl.Callback):
        def on_fit_start(self, trainer, pl_module):
            started.append(trainer.max_epochs)

    check(Tiny(), callbacks=[Seen()], trainer_kwargs={"accelerator": "cpu", "max_epochs": 7})
    assert started == [1]  # the check's one epoch, whatever the user's Trainer arguments say


def test_a_monitor_never_logged_names_its_key_and_lists_what_is_logged_sorted():
    with pytest.raises(ValueError) as error:
        check(Tiny(), monitor="val_acc", monitor_key="train.monitor")
    assert str(error.value) == (
        "`train.monitor` is 'val_acc', but the task never logs it in a one-batch fit; it logs `train_loss`,"
        " `val_loss`. Log it with self.log('val_acc', value) in validation_step, or set `train.monitor` to one of"
        " those."
    )
    with pytest.raises(ValueError, match=r"never logs it in a one-batch fit; it logs `train_loss`\. Log it"):
        check(Tiny(log_val=False))


def test_a_factory_that_raises_names_the_task_and_how_to_skip_the_check():
    def build():
        raise TypeError("hidden must be an int")

    with pytest.raises(ValueError) as error:
        preflight_fit(build, "val_loss", task="`task` 'tests:tiny'", skip="preflight")
    assert str(error.value) == (
        "`task` 'tests:tiny' could not be built: TypeError: hidden must be an int. Every trial would fail the same"
        " way: fix the task, or set `preflight` to false to skip this check."
    )
    assert isinstance(error.value.__cause__, TypeError)


def test_a_fit_that_raises_is_quoted_by_its_first_line():
    with pytest.raises(ValueError) as error:
        check(Tiny(fail_in_training=True), batches=2)
    message = str(error.value)
    assert message.startswith("A two-batch fit of `task` 'tests:tiny' raised RuntimeError: shapes do not match."
                              " Every trial would fail the same way: fix the task (or `trainer_kwargs`)")
    assert "\n" not in message  # a CLI reports it on one line


def test_trainer_arguments_the_trainer_refuses_name_their_key():
    with pytest.raises(ValueError, match=r"`trainer_kwargs`=\{'no_such_argument': 1\} are not valid Trainer"
                                         r" arguments: TypeError: "):
        check(Tiny(), trainer_kwargs={"no_such_argument": 1})
    # without a key of their own, a Trainer that cannot be made is the fit's error
    with pytest.raises(ValueError, match=r"^A one-batch fit of `task` 'tests:tiny' raised TypeError: "):
        check(Tiny(), trainer_kwargs={"no_such_argument": 1}, trainer_key=None)


def test_their_trainer_arguments_as_lightning_takes_them_in_one_process():
    # one callback (not a list), a logger that LearningRateMonitor needs, and a distributed strategy: the check
    # still fits in this process, on one device
    from lightning.pytorch.callbacks import LearningRateMonitor

    seen = []

    class Where(pl.Callback):
        def on_fit_start(self, trainer, pl_module):
            seen.append((trainer.num_devices, trainer.world_size, trainer.logger is not None))

    logged = check(Tiny(), callbacks=[Where()], trainer_kwargs={
        "accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn", "logger": True,
        "callbacks": LearningRateMonitor(logging_interval="step")})
    assert seen == [(1, 1, True)] and "val_loss" in logged
