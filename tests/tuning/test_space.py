"""The search space on its own: ranges, parsing, the log prior, perturbing and clipping."""

import math
import random
from collections import Counter

import pytest

from ganno_lightning.tuning.space import Hyperparameter, clip_values, parse_space, sample_values


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
