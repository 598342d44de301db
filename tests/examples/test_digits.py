"""The one digits example: its split conventions, the zoo's unchanged split, the data module and the classifier."""

import lightning.pytorch as pl
import pytest
import torch

from ganno_lightning.envs.tasks.data import digits
from ganno_lightning.examples.digits import (
    DigitsClassifier,
    DigitsDataModule,
    digits_network,
    digits_task,
    load_digits_split,
)


def _trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kwargs)


def test_the_zoo_split_is_the_one_it_computed_before_the_move():
    # the zoo's own loader before it moved to ganno_lightning.examples, kept here as the reference
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.data, dtype=torch.float32)
    y = torch.as_tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    val, train = order[:359], order[359:]
    mean = x[train].mean(dim=0)
    x = (x - mean) / (x[train] - mean).std()
    for now, before in zip(digits(), (x[train], y[train], x[val], y[val])):
        assert torch.equal(now, before)  # bit for bit: the zoo's tasks train on exactly the same tensors


def test_one_permutation_is_cut_val_first_or_train_first():
    val_first = load_digits_split(0.3, seed=5)
    train_first = load_digits_split(539, seed=5, train_first=True)
    assert [len(t) for t in val_first[:4]] == [1258, 1258, 539, 539]
    assert [len(t) for t in train_first[:4]] == [1258, 1258, 539, 539]
    everything = torch.cat([val_first.x_val, val_first.x_train])  # the permutation, in order
    assert torch.equal(torch.cat([train_first.x_train, train_first.x_val]), everything)
    assert not torch.equal(val_first.x_val, train_first.x_val)
    assert 0.0 <= float(everything.min()) and float(everything.max()) <= 1.0  # pixels scaled to [0, 1]
    split = load_digits_split(359, seed=1234, test_size=360, train_first=True)
    assert [len(t) for t in split] == [1078, 1078, 359, 359, 360, 360]
    assert len(load_digits_split().x_test) == 0


def test_standardisation_uses_only_the_training_part():
    pixel = load_digits_split(0.3, train_subset=256, standardize="pixel")
    assert len(pixel.x_train) == 256
    torch.testing.assert_close(pixel.x_train.mean(0), torch.zeros(64), atol=1e-5, rtol=0)
    assert float(pixel.x_val.mean(0).abs().max()) > 1e-3  # the validation part keeps its own offset
    glob = load_digits_split(0.2, standardize="global")
    assert abs(float(glob.x_train.std()) - 1.0) < 1e-5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(val_size=1.5), r"`val_size` as a fraction must be in \[0, 1\), got 1.5"),
        (dict(val_size=True), r"`val_size` must be a fraction in \[0, 1\) or a count of images, got True"),
        (dict(test_size=5000), r"`test_size` as a count must be in \[0, 1797\), got 5000"),
        (dict(val_size=0.6, test_size=0.5), r"`val_size` \+ `test_size` leave no training images"),
        (dict(standardize="zscore"), r"`standardize` must be one of \(None, 'pixel', 'global'\), got 'zscore'"),
        (dict(train_subset=0), r"`train_subset` must be None or a positive int, got 0"),
    ],
)
def test_bad_split_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_digits_split(**kwargs)


def test_data_module_shuffles_by_its_own_seed_or_the_global_rng():
    def first_batch(dm):
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))[1]

    assert torch.equal(first_batch(DigitsDataModule(shuffle_seed=3)), first_batch(DigitsDataModule(shuffle_seed=3)))
    torch.manual_seed(0)
    a = first_batch(DigitsDataModule(shuffle_seed=None))
    torch.manual_seed(0)
    assert torch.equal(a, first_batch(DigitsDataModule(shuffle_seed=None)))
    with pytest.raises(ValueError, match=r"`batch_size` must be a positive int, got 0"):
        DigitsDataModule(batch_size=0)


def test_network_layers_follow_the_arguments():
    mlp = digits_network(hidden=[16, 16], dropout=0.1)
    assert [type(m).__name__ for m in mlp] == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert [type(m).__name__ for m in digits_network(hidden=[16])] == ["Linear", "ReLU", "Linear"]
    conv = digits_network(hidden=[64], channels=[16, 32])
    assert conv(torch.zeros(3, 64)).shape == (3, 10) and conv[1].in_channels == 1 and conv[7].in_features == 512


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(optimizer="rmsprop"), r"`optimizer` must be 'sgd' or 'adam', got 'rmsprop'"),
        (dict(scheduler="step"), r"`scheduler` must be None or 'cosine', got 'step'"),
        (dict(scheduler_interval="batch"), r"`scheduler_interval` must be 'epoch' or 'step', got 'batch'"),
    ],
)
def test_classifier_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DigitsClassifier(**kwargs)


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_classifier_learns_and_anneals_its_learning_rate(interval):
    torch.manual_seed(0)
    model = DigitsClassifier(hidden=[32], optimizer="sgd", lr=0.1, scheduler="cosine", scheduler_interval=interval,
                             max_epochs=2)
    trainer = _trainer(max_epochs=2)
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=128))
    assert float(trainer.callback_metrics["val_acc"]) > 0.5
    assert trainer.optimizers[0].param_groups[0]["lr"] < 1e-6  # annealed to zero at the horizon


def test_pbt_task_weights_follow_the_seed_and_the_data_is_shared():
    (a, data_a), (b, _), (c, _) = digits_task(seed=1), digits_task(seed=1), digits_task(seed=2)
    assert torch.equal(a.net[0].weight, b.net[0].weight) and not torch.equal(a.net[0].weight, c.net[0].weight)
    assert a.hparams.hidden == (64, 64) and data_a.split_kwargs["standardize"] == "pixel"
