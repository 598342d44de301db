"""The task zoo: every family trains under a real Trainer, counts its agents exactly, is reproducible
from its generator, keeps held-out tasks larger than meta-training ones, and rejects bad configs
with messages that name the field."""

import doctest
import importlib
import math

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from ganno_lightning.envs.tasks import (
    ADAM_AND_MOMENTUM_SGD,
    FAMILIES,
    OPTIMIZERS,
    TaskRanges,
    make_family,
)
from ganno_lightning.envs.tasks.data import digits
from ganno_lightning.envs.tasks.ranges import Choices
from ganno_lightning.layerwise.partition import LayerPartition

NAMES = sorted(FAMILIES)
#: The families meta-training and the committed evaluations were built on; their tasks must not change.
ORIGINAL_FAMILIES = ("cnn_digits", "mlp_digits", "sequence", "teacher_student")
SAMPLES = 20


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def first_batch(task):
    return next(iter(task.module.train_dataloader()))


def sample(family, seed, split="train", torch_seed=0):
    torch.manual_seed(torch_seed)
    return family.sample(torch.Generator().manual_seed(seed), split)


class RecordLosses(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


# --- training -------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "heldout"])
@pytest.mark.parametrize("name", NAMES)
def test_sample_trains_under_trainer(name, split):
    task = sample(make_family(name), seed=3, split=split)
    record = RecordLosses()
    trainer = L.Trainer(
        max_steps=5, val_check_interval=5, limit_val_batches=1, num_sanity_val_steps=0, callbacks=[record],
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task.module)
    assert trainer.global_step == 5
    assert len(record.losses) == 5 and all(math.isfinite(x) and x > 0 for x in record.losses)
    val_loss = float(trainer.callback_metrics["val_loss"])
    assert math.isfinite(val_loss) and val_loss > 0


@pytest.mark.parametrize("name", NAMES)
def test_optimizer_is_the_sampled_one(name):
    family = make_family(name)
    expected = {
        "adam": (torch.optim.Adam, {"weight_decay": 0}),
        "sgd": (torch.optim.SGD, {"momentum": 0.9, "weight_decay": 0}),
        "adamw": (torch.optim.AdamW, {"weight_decay": 0.01}),
        "sgd_plain": (torch.optim.SGD, {"momentum": 0, "weight_decay": 0}),
    }
    assert set(expected) == set(OPTIMIZERS)
    for optimizer, (cls, settings) in expected.items():
        task = make_family(name, train={"optimizers": [optimizer]}).sample(torch.Generator().manual_seed(0))
        opt = task.module.configure_optimizers()
        assert type(opt) is cls and task.info["optimizer"] == optimizer
        assert opt.param_groups[0]["lr"] == task.info["lr"]
        assert family.train.lr[0] <= task.info["lr"] <= family.train.lr[1]
        assert {k: opt.param_groups[0][k] for k in settings} == settings
        assert sum(len(g["params"]) for g in opt.param_groups) == len(list(task.module.parameters()))


@pytest.mark.parametrize("name", NAMES)
def test_original_families_keep_adam_and_momentum_sgd_and_new_ones_draw_all_four(name):
    # The original families' tasks (hence meta-training and the committed evaluations) are unchanged.
    family = make_family(name)
    expected = ADAM_AND_MOMENTUM_SGD if name in ORIGINAL_FAMILIES else OPTIMIZERS
    assert family.train.optimizers == family.heldout.optimizers == expected
    drawn = {sample(family, seed).info["optimizer"] for seed in range(SAMPLES)}
    assert drawn == set(expected)


# --- layers become agents -------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_agents_never_exceed_max_layers(name):
    family = make_family(name)
    for split in ("train", "heldout"):
        bound = family.max_layers(split)
        for seed in range(SAMPLES):
            task = sample(family, seed, split)
            agents = len(LayerPartition.from_module(task.module))
            # The meta-device count of the same hyperparameters agrees with the real model's partition.
            assert agents == family.num_layers(task.info) == task.info["num_layers"] <= bound


@pytest.mark.parametrize("name", NAMES)
def test_counting_layers_draws_no_random_number_and_builds_data_on_the_cpu(name):
    family = make_family(name)
    digits.cache_clear()  # the count below is then the first to build the digits
    state = torch.get_rng_state()
    family.max_layers("heldout")
    assert torch.equal(torch.get_rng_state(), state)  # the meta device initialises no weight
    # The count built its model with seed 0; data cached then must serve real tasks of that seed.
    module = family.build({**sample(family, 0, "heldout").info, "seed": 0}, seed=0)
    assert next(iter(module.train_dataloader()))[0].device.type == "cpu"


@pytest.mark.parametrize("name", NAMES)
def test_max_layers_is_reached(name):
    # Exact bound: the largest architecture the ranges allow has exactly max_layers agents.
    family = make_family(name)
    for split in ("train", "heldout"):
        hp = dict(sample(family, 0, split).info)
        hp.update(family.largest(family.ranges(split)))
        module = family.build(hp, seed=0)
        assert len(LayerPartition.from_module(module)) == family.max_layers(split)


@pytest.mark.parametrize("name", NAMES)
def test_heldout_is_deeper_and_wider(name):
    family = make_family(name)
    train, heldout = family.ranges("train"), family.ranges("heldout")
    assert heldout.width[1] > train.width[1]
    assert family.max_layers("heldout") > family.max_layers("train")
    for seed in range(SAMPLES):
        info = sample(family, seed, "heldout").info
        assert info["depth"] > train.depth[1]
        assert info["split"] == "heldout"


# --- reproducibility ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_same_seeds_give_the_same_task(name):
    family = make_family(name)
    a, b = sample(family, 11, torch_seed=5), sample(family, 11, torch_seed=5)
    assert a.info == b.info and a.name == b.name
    state_a, state_b = a.module.state_dict(), b.module.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    for x, y in zip(first_batch(a), first_batch(b)):
        assert torch.equal(x, y)


@pytest.mark.parametrize("name", NAMES)
def test_different_seeds_give_different_tasks(name):
    family = make_family(name)
    a, b = sample(family, 0), sample(family, 1)
    assert a.info != b.info
    assert not torch.equal(first_batch(a)[0], first_batch(b)[0])


@pytest.mark.parametrize("name", NAMES)
def test_generator_alone_decides_the_task(name):
    # Every choice comes from the generator; the global seed only changes the initial weights.
    family = make_family(name)
    a, b = sample(family, 2, torch_seed=0), sample(family, 2, torch_seed=1)
    assert a.info == b.info
    assert not all(torch.equal(p, q) for p, q in zip(a.module.parameters(), b.module.parameters()))


def test_info_is_plain_and_within_ranges():
    for name in NAMES:
        family = make_family(name)
        for split in ("train", "heldout"):
            ranges = family.ranges(split)
            for seed in range(SAMPLES):
                info = sample(family, seed, split).info
                assert all(type(v) in (int, float, str, bool) for v in info.values()), info
                for field, values in ranges.to_dict().items():
                    rule = ranges.RULES[field]
                    if isinstance(rule, Choices):
                        assert info[rule.key] in values, (field, info)
                    else:
                        assert values[0] <= info[field] <= values[1], (field, info)


def test_sampling_covers_both_ends_and_draws_once_per_field():
    draws = [TaskRanges(depth=[1, 2]).validate().sample(torch.Generator().manual_seed(s)) for s in range(40)]
    assert {d["depth"] for d in draws} == {1, 2}
    assert {d["optimizer"] for d in draws} == {"adam", "sgd"}
    # Narrowing one range leaves every other field's draw where it was.
    wide = TaskRanges().validate().sample(torch.Generator().manual_seed(9))
    narrow = TaskRanges(lr=[1e-3, 1e-3]).validate().sample(torch.Generator().manual_seed(9))
    assert narrow["lr"] == 1e-3
    assert {k: v for k, v in wide.items() if k != "lr"} == {k: v for k, v in narrow.items() if k != "lr"}


def test_data_order_is_fixed_per_task_and_data_is_shared():
    family = make_family("mlp_digits", train={"batch_size": [64, 64]})
    task = sample(family, 0)
    first, again = first_batch(task), first_batch(task)  # a second fit sees the same order
    assert torch.equal(first[0], again[0])
    other = sample(family, 1)
    # Both tasks index the one cached dataset rather than copies of it.
    assert task.module.train_dataloader().dataset.tensors[0] is digits().x_train
    assert other.module.train_dataloader().dataset.tensors[0] is digits().x_train
    assert len(list(task.module.train_dataloader())) == len(digits().x_train) // 64


# --- configuration --------------------------------------------------------------------------------


def test_yaml_section_overrides_only_the_keys_it_names():
    cfg = OmegaConf.create("""
        name: sequence
        train: {depth: [2, 2], lr: [1.0e-3, 2.0e-3], optimizers: [sgd]}
        heldout: {delay: [5, 5]}
    """)
    family = make_family(cfg.name, cfg.train, cfg.heldout)
    assert family.train.depth == (2, 2) and family.train.optimizers == ("sgd",)
    assert family.train.width == type(family).default_train.width
    assert family.heldout.delay == (5, 5) and family.heldout.depth == type(family).default_heldout.depth
    info = sample(family, 0).info
    assert info["depth"] == 2 and info["optimizer"] == "sgd" and 1e-3 <= info["lr"] <= 2e-3
    assert family.max_layers("train") == 4


@pytest.mark.parametrize(
    ("name", "train", "match"),
    [
        ("mlp_digits", {"depth": [4, 2]}, r"`family\.train\.depth` must be \[low, high\] .*got \[4, 2\]"),
        ("mlp_digits", {"depth": [0, 2]}, r"`family\.train\.depth` must be .*1 <= low"),
        ("mlp_digits", {"depth": [True, 3]}, r"`family\.train\.depth`"),
        ("mlp_digits", {"depth": 3}, r"`family\.train\.depth` must be \[low, high\].*got 3"),
        ("cnn_digits", {"width": [8, 4.5]}, r"`family\.train\.width`.*got \[8, 4\.5\]"),
        ("teacher_student", {"lr": [0, 1e-3]}, r"`family\.train\.lr` must be .*0 < low <= high"),
        ("teacher_student", {"lr": [1e-2, 1e-3]}, r"`family\.train\.lr`.*got \[0\.01, 0\.001\]"),
        ("teacher_student", {"lr": [1e-3, float("inf")]}, r"`family\.train\.lr`"),
        ("mlp_digits", {"batch_size": [32, 4096]}, r"`family\.train\.batch_size` must not exceed the 1438"),
        ("sequence", {"batch_size": [0, 8]}, r"`family\.train\.batch_size`"),
        ("mlp_digits", {"optimizers": ["adagrad"]}, r"`family\.train\.optimizers` has unknown value\(s\) \['adagrad'\]"),
        ("mlp_digits", {"optimizers": []}, r"`family\.train\.optimizers` must be a non-empty list"),
        ("mlp_digits", {"optimizers": "adam"}, r"`family\.train\.optimizers` must be a non-empty list"),
        ("mlp_digits", {"dept": [1, 2]}, r"Unknown config key `family\.train\.dept` \(did you mean `depth`\?\)"),
        ("mlp_digits", {"noise": [0.0, 0.1]}, r"Unknown config key `family\.train\.noise`.*Known keys: depth"),
        ("cnn_digits", {"batch_norm": ["yes"]}, r"`family\.train\.batch_norm` has unknown value"),
        ("cnn_digits", {"batch_norm": [1]}, r"`family\.train\.batch_norm`"),
        ("teacher_student", {"noise": [-0.1, 0.0]}, r"`family\.train\.noise` must be .*0 <= low"),
        ("sequence", {"seq_len": [1, 4]}, r"`family\.train\.seq_len` must be .*2 <= low"),
        ("sequence", {"delay": [2, 8]}, r"`family\.train\.delay` must stay below `family\.train\.seq_len`"),
        ("transformer_seq", {"tasks": ["reverse"]}, r"`family\.train\.tasks` has unknown value\(s\) \['reverse'\]"),
        ("transformer_seq", {"tasks": []}, r"`family\.train\.tasks` must be a non-empty list"),
        ("transformer_seq", {"seq_len": [1, 4]}, r"`family\.train\.seq_len` must be .*2 <= low"),
        ("transformer_seq", {"batch_size": [32, 4096]}, r"`family\.train\.batch_size` must not exceed the 2048"),
        ("transformer_seq", {"delay": [1, 2]}, r"Unknown config key `family\.train\.delay`"),
        ("resmlp", {"datasets": ["iris"]}, r"`family\.train\.datasets` has unknown value\(s\) \['iris'\]"),
        ("resmlp", {"dropout": [0.1, 1.0]}, r"`family\.train\.dropout` must stay below 1"),
        ("resmlp", {"dropout": [-0.1, 0.1]}, r"`family\.train\.dropout` must be .*0 <= low"),
        # The smallest listed dataset bounds the batch size: wine has 143 training examples.
        ("resmlp", {"batch_size": [16, 200]}, r"`family\.train\.batch_size` must not exceed the 143"),
    ],
)
def test_invalid_train_ranges_name_the_field(name, train, match):
    with pytest.raises(ValueError, match=match):
        make_family(name, train=train)


def test_heldout_errors_and_custom_prefix_name_the_full_path():
    with pytest.raises(ValueError, match=r"`family\.heldout\.width` must be"):
        make_family("mlp_digits", heldout={"width": [64, 32]})
    with pytest.raises(ValueError, match=r"`env\.family\.train\.lr`"):
        make_family("mlp_digits", train={"lr": [-1.0, 1.0]}, prefix="env.family")
    with pytest.raises(ValueError, match=r"Unknown config key `family\.heldout\.widht`"):
        make_family("cnn_digits", heldout=OmegaConf.create({"widht": [1, 2]}))


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown task family `family\.name` 'mlp_digit'.*cnn_digits, mlp_digits.*"
                                         r"Did you mean 'mlp_digits'"):
        make_family("mlp_digit")


def test_wrong_split_and_generator_are_errors():
    family = make_family("teacher_student")
    with pytest.raises(ValueError, match=r"`split` must be one of \['train', 'heldout'\], got 'test'"):
        family.sample(torch.Generator(), "test")
    with pytest.raises(ValueError, match=r"`split`"):
        family.max_layers("valid")
    with pytest.raises(TypeError, match=r"`generator` must be a CPU torch.Generator"):
        family.sample(0)
    with pytest.raises(TypeError, match=r"`family\.train` must be a mapping"):
        make_family("teacher_student", train=[1, 2])


def test_ranges_instances_are_accepted_and_normalised():
    family = make_family("sequence", train=TaskRanges(depth=[1, 1], width=[16, 16], optimizers=["adam"]))
    assert family.train.depth == (1, 1) and family.train.optimizers == ("adam",)
    assert family.train.seq_len == type(family).default_train.seq_len  # extra field kept from the default
    assert family.max_layers("train") == 3


# --- the transformer and residual-MLP families ---------------------------------------------------


def test_transformer_embeddings_and_encoder_sublayers_are_agents():
    family = make_family("transformer_seq", train={"depth": [2, 2]})
    task = sample(family, 0)
    partition = LayerPartition.from_module(task.module)
    # Token and position embeddings are agents of their own, of kind "embedding".
    assert partition.layers[0].module_names == ("token_embedding",)
    assert partition.layers[1].module_names == ("position_embedding",)
    assert [layer.kind for layer in partition.layers[:2]] == ["embedding", "embedding"]
    assert len(partition) == task.info["num_layers"] == 6 * 2 + 4
    # Each encoder layer is built on its own, so the layers start from different weights.
    first, second = task.module.layers
    assert not torch.equal(first.linear1.weight, second.linear1.weight)


@pytest.mark.parametrize("kind", ["copy", "sort", "count"])
def test_transformer_task_targets(kind):
    task = sample(make_family("transformer_seq", train={"tasks": [kind], "seq_len": [5, 5]}), 0)
    x, y = first_batch(task)
    assert task.info["task"] == kind
    if kind == "count":
        assert x.shape[1] == 5
        assert torch.equal(y, (x.unsqueeze(2) == x.unsqueeze(1)).sum(2) - 1)
    else:
        assert x.shape[1] == 10 and bool((x[:, 5:] == 10).all()) and bool((y[:, :5] == -100).all())
        answer = x[:, :5] if kind == "copy" else x[:, :5].sort(dim=1).values
        assert torch.equal(y[:, 5:], answer)
    assert task.module.loss([x, y]).item() > 0


def test_resmlp_datasets_losses_and_agents():
    family = make_family("resmlp", train={"depth": [2, 2], "dropout": [0.1, 0.1]})
    for dataset, loss in [("wine", "cross_entropy"), ("diabetes", "mse_loss"), ("regression", "mse_loss")]:
        task = sample(make_family("resmlp", train={"datasets": [dataset], "depth": [2, 2]}), 0)
        task.module.eval()  # dropout off: the two forward passes below must agree
        x, y = first_batch(task)
        assert task.info["dataset"] == dataset
        assert y.dtype == (torch.int64 if loss == "cross_entropy" else torch.float32)
        out = task.module(x)
        expected = getattr(nn.functional, loss)(out, y)
        assert torch.allclose(task.module.loss([x, y]), expected)
        assert len(LayerPartition.from_module(task.module)) == 3 * 2 + 3
    assert family.max_layers("train") == 9


def test_resmlp_generated_sets_come_from_the_task_seed_and_bundled_ones_are_shared():
    generated = make_family("resmlp", train={"datasets": ["classification"]})
    a, b = sample(generated, 0), sample(generated, 1)
    data_a, data_b = a.module._data(), b.module._data()
    assert data_a.x_train.shape == data_b.x_train.shape == (800, 20)
    assert not torch.equal(data_a.x_val, data_b.x_val)
    bundled = make_family("resmlp", train={"datasets": ["breast_cancer"]})
    c, d = sample(bundled, 0), sample(bundled, 1)
    assert c.module._data().x_train is d.module._data().x_train
    # Features standardised on the training part.
    x = c.module._data().x_train
    assert torch.allclose(x.mean(0), torch.zeros(30), atol=1e-5) and torch.allclose(x.std(0), torch.ones(30), atol=1e-4)


def test_resmlp_batch_bound_follows_the_listed_datasets():
    # Without wine, the bound is diabetes' 354 training examples.
    family = make_family("resmlp", train={"datasets": ["diabetes", "digits"], "batch_size": [16, 300]})
    assert family.train.batch_size == (16, 300)
    with pytest.raises(ValueError, match=r"`family\.train\.batch_size` must not exceed the 354"):
        make_family("resmlp", train={"datasets": ["diabetes", "digits"], "batch_size": [16, 400]})


# --- docstrings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module",
    ["ranges", "base", "data", "mlp_digits", "cnn_digits", "teacher_student", "sequence", "transformer_seq", "resmlp",
     "__init__"],
)
def test_docstring_examples(module):
    mod = importlib.import_module("ganno_lightning.envs.tasks" if module == "__init__" else f"ganno_lightning.envs.tasks.{module}")
    result = doctest.testmod(mod, extraglobs={**vars(mod), "torch": torch, "nn": nn}, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
