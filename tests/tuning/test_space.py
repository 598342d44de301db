"""The search space on its own: ranges, parsing, the log prior, perturbing and clipping."""

import math
import random
from collections import Counter

import pytest

from ganno_lightning.tuning.space import (
    Hyperparameter,
    clip_values,
    parse_space,
    sample_values,
    unit_to_values,
    values_to_unit,
)


def test_hyperparameter_rejects_empty_and_bad_ranges():
    with pytest.raises(ValueError, match=r"range \[0.1, 0.1\] is empty"):
        Hyperparameter(0.1, 0.1)
    with pytest.raises(ValueError, match="range .* is empty"):
        Hyperparameter(1.0, 0.5)
    with pytest.raises(ValueError, match="log-scale range needs `low` > 0"):
        Hyperparameter(0.0, 1.0, log=True)
    with pytest.raises(ValueError, match="finite"):
        Hyperparameter(0.0, math.inf)
    with pytest.raises(ValueError, match="contains no integer"):
        Hyperparameter(0.2, 0.8, integer=True)


def test_parse_space_errors_name_the_hyperparameter():
    with pytest.raises(ValueError, match="at least one"):
        parse_space({})
    with pytest.raises(ValueError, match="`lr` has unknown key"):
        parse_space({"lr": {"low": 1e-3, "high": 1e-1, "logscale": True}})
    with pytest.raises(ValueError, match="`lr` needs both `low` and `high`"):
        parse_space({"lr": {"low": 1e-3}})
    with pytest.raises(ValueError, match="`wd`: .*empty"):
        parse_space({"wd": {"low": 0.1, "high": 0.0}})


def test_log_uniform_prior_is_uniform_in_log_space():
    dim = Hyperparameter(1e-4, 1e-0, log=True)
    rng = random.Random(0)
    logs = [math.log10(dim.sample(rng)) for _ in range(4000)]
    assert all(-4 <= v <= 0 for v in logs)
    # each decade holds about a quarter of the draws (a linear prior would put ~90% in the top decade)
    decades = Counter(min(int(v + 4), 3) for v in logs)
    for decade in range(4):
        assert 0.2 < decades[decade] / len(logs) < 0.3


def test_perturb_multiplies_clips_and_moves_small_integers_by_one():
    assert Hyperparameter(0.01, 1.0, log=True).perturb(0.1, 1.2) == pytest.approx(0.12)
    assert Hyperparameter(0.01, 1.0).perturb(0.9, 1.2) == 1.0
    k = Hyperparameter(1, 4, integer=True)
    assert (k.perturb(2, 1.2), k.perturb(2, 0.8)) == (3.0, 1.0)  # 2.4 and 1.6 would round back to 2
    assert (k.perturb(4, 1.2), k.perturb(1, 0.8)) == (4.0, 1.0)  # and still stay inside the range
    assert Hyperparameter(1, 100, integer=True).perturb(50, 1.2) == 60.0


def test_sample_values_draws_every_dimension_in_order_inside_its_range():
    space = parse_space({"lr": {"low": 1e-4, "high": 0.1, "log": True}, "k": {"low": 1, "high": 3, "integer": True}})
    draws = [sample_values(space, random.Random(seed)) for seed in range(200)]
    assert all(list(d) == ["lr", "k"] and 1e-4 <= d["lr"] <= 0.1 and d["k"] in (1.0, 2.0, 3.0) for d in draws)
    assert sample_values(space, random.Random(7)) == sample_values(space, random.Random(7))


def test_clip_values_needs_exactly_the_space_and_clips():
    space = {"lr": Hyperparameter(0.01, 0.1), "k": Hyperparameter(1, 4, integer=True)}
    assert clip_values(space, {"k": 9, "lr": 0.0}) == {"lr": 0.01, "k": 4.0}
    with pytest.raises(ValueError, match=r"missing \['k'\], unknown \['n'\]"):
        clip_values(space, {"lr": 0.05, "n": 1})


def test_choices_parse_sample_clip_and_perturb_to_a_neighbour():
    space = parse_space({"batch_size": {"choices": [32, 64, 128]}, "opt": {"choices": ["sgd", "adam"], "low": None}})
    dim = space["batch_size"]
    assert dim.choices == (32, 64, 128) and dim.to_dict() == {"choices": [32, 64, 128]}
    draws = Counter(dim.sample(random.Random(seed)) for seed in range(300))
    assert set(draws) == {32, 64, 128} and min(draws.values()) > 70
    assert (dim.clip(64), dim.clip(70.0), dim.clip(1000)) == (64, 64, 128)  # a number: the nearest choice
    assert (dim.perturb(64, 1.2), dim.perturb(64, 0.8), dim.perturb(128, 1.2), dim.perturb(32, 0.8)) == (128, 32, 128, 32)
    assert space["opt"].perturb("adam", 1.2) == "adam" and space["opt"].perturb("adam", 0.8) == "sgd"
    with pytest.raises(ValueError, match=r"'rmsprop' is not one of the choices \['sgd', 'adam'\]"):
        space["opt"].clip("rmsprop")


def test_bad_choices_name_the_hyperparameter():
    with pytest.raises(ValueError, match=r"`bs`: `choices` must list at least two values, got \[32\]"):
        parse_space({"bs": {"choices": [32]}})
    with pytest.raises(ValueError, match=r"`bs`: `choices` must be distinct"):
        parse_space({"bs": {"choices": [32, 32]}})
    with pytest.raises(ValueError, match=r"`bs`: A dimension with `choices` takes no `low`, `high`"):
        parse_space({"bs": {"choices": [32, 64], "low": 1}})
    with pytest.raises(ValueError, match=r"`bs` needs both `low` and `high` \(or `choices`\)"):
        parse_space({"bs": {"low": 1}})
    with pytest.raises(ValueError, match=r"`choices` must be finite numbers, strings or booleans"):
        Hyperparameter(choices=[1, [2]])


def test_unit_cube_round_trip_for_every_kind_of_dimension():
    space = parse_space({
        "lr": {"low": 1e-4, "high": 1e-1, "log": True}, "dropout": {"low": 0.0, "high": 0.5},
        "layers": {"low": 1, "high": 4, "integer": True}, "width": {"low": 8, "high": 512, "integer": True, "log": True},
        "batch_size": {"choices": [32, 64, 128]}, "opt": {"choices": ["sgd", "adam"]},
    })
    values = {"lr": 3e-3, "dropout": 0.2, "layers": 3, "width": 64, "batch_size": 128, "opt": "adam"}
    x = values_to_unit(space, values)
    assert all(0.0 <= u <= 1.0 for u in x)
    back = unit_to_values(space, x)
    assert back["lr"] == pytest.approx(3e-3) and back["dropout"] == pytest.approx(0.2)
    assert {k: back[k] for k in ("layers", "width", "batch_size", "opt")} == {"layers": 3, "width": 64,
                                                                             "batch_size": 128, "opt": "adam"}
    assert type(back["layers"]) is int and type(back["batch_size"]) is int
    # every integer and every choice gets an equal share of the unit interval
    layers = Counter(space["layers"].from_unit((i + 0.5) / 400) for i in range(400))
    assert layers == {1: 100, 2: 100, 3: 100, 4: 100}
    assert [space["opt"].from_unit(u) for u in (0.0, 0.49, 0.51, 1.0)] == ["sgd", "sgd", "adam", "adam"]
    assert unit_to_values(space, [0.0] * 6)["lr"] == 1e-4 and unit_to_values(space, [1.0] * 6)["lr"] == 0.1
    with pytest.raises(ValueError, match="needs 6 coordinates"):
        unit_to_values(space, [0.5])


def test_pbt_explores_a_choice_by_moving_to_a_neighbour():
    from ganno_lightning.pbt.core import Explorer

    space = parse_space({"batch_size": {"choices": [32, 64, 128]}, "lr": {"low": 1e-3, "high": 1.0, "log": True}})
    explored = [Explorer((0.8, 1.2), 0.0).explore({"batch_size": 64, "lr": 0.1}, space, random.Random(s))
                for s in range(20)]
    assert {e["batch_size"] for e in explored} == {32, 128}
    assert {round(e["lr"], 6) for e in explored} == {0.08, 0.12}
