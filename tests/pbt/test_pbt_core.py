"""Exploit/explore statistics and argument checks of the Lightning-free PBT core."""

import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ganno_lightning.pbt.core import (
    BinaryTournament,
    ExploitDecision,
    Explorer,
    NoExploit,
    PBTStrategy,
    ReadyCriterion,
    TruncationSelection,
    make_exploiter,
)
from ganno_lightning.tuning.space import Hyperparameter


@settings(max_examples=200, deadline=None)
@given(
    value=st.floats(1e-6, 1e3),
    seed=st.integers(0, 10_000),
    low=st.floats(1e-5, 1.0),
    span=st.floats(1.01, 1e4),
)
def test_explore_always_stays_within_bounds(value, seed, low, span):
    space = {"lr": Hyperparameter(low, low * span, log=True), "n": Hyperparameter(1, 50, integer=True)}
    explorer = Explorer((0.8, 1.2), resample_probability=0.3)
    new = explorer.explore({"lr": value, "n": 7}, space, random.Random(seed))
    assert low <= new["lr"] <= low * span
    assert 1 <= new["n"] <= 50 and new["n"] == int(new["n"])


def test_explore_perturbs_by_the_factors_and_resamples_at_the_given_rate():
    space = {"lr": Hyperparameter(1e-4, 1.0, log=True)}
    explorer = Explorer((0.8, 1.2), resample_probability=0.25)
    rng = random.Random(1)
    outcomes = Counter()
    trials = 4000
    for _ in range(trials):
        new = explorer.explore({"lr": 0.01}, space, rng)["lr"]
        if math.isclose(new, 0.008):
            outcomes["down"] += 1
        elif math.isclose(new, 0.012):
            outcomes["up"] += 1
        else:
            outcomes["resampled"] += 1
    assert abs(outcomes["resampled"] / trials - 0.25) < 0.03
    assert abs(outcomes["down"] / trials - 0.375) < 0.03
    assert abs(outcomes["up"] / trials - 0.375) < 0.03


def test_explore_clips_at_the_bounds_and_moves_small_integers():
    space = {"lr": Hyperparameter(0.01, 0.1), "k": Hyperparameter(1, 4, integer=True)}
    explorer = Explorer((0.8, 1.2), resample_probability=0.0)
    values = [explorer.explore({"lr": 0.1, "k": 2}, space, random.Random(s)) for s in range(50)]
    assert {round(v["lr"], 12) for v in values} == {0.08, 0.1}  # 0.12 clipped to the upper bound
    assert {v["k"] for v in values} == {1.0, 3.0}  # 2*1.2 would round back to 2


def test_explorer_argument_errors():
    with pytest.raises(ValueError, match=r"`perturb_factors` must be two positive floats, got \(0.8,\)"):
        Explorer((0.8,))
    with pytest.raises(ValueError, match="`perturb_factors` must be two positive floats"):
        Explorer((0.8, -1.0))
    with pytest.raises(ValueError, match="`resample_probability` must be in"):
        Explorer(resample_probability=1.5)


def test_truncation_selection_bottom_copies_top_uniformly():
    scores = {m: float(m) for m in range(8)}  # mode=min: 0,1 top; 6,7 bottom
    rule = TruncationSelection(0.25)
    rng = random.Random(0)
    for member in range(2, 6):
        assert rule.select_donor(member, scores, "min", rng) is None
    donors = Counter(rule.select_donor(7, scores, "min", rng) for _ in range(2000))
    assert set(donors) == {0, 1}
    assert abs(donors[0] / 2000 - 0.5) < 0.05
    # mode=max flips the ranking
    assert rule.select_donor(0, scores, "max", rng) in {6, 7}
    assert rule.select_donor(7, scores, "max", rng) is None


def test_truncation_small_population_and_non_finite_scores():
    rule = TruncationSelection(0.25)
    rng = random.Random(0)
    assert rule.select_donor(0, {0: 0.5}, "min", rng) is None  # alone: nobody to copy
    assert rule.select_donor(1, {0: 0.1, 1: 0.9}, "min", rng) == 0
    scores = {0: 0.1, 1: 0.2, 2: 0.3, 3: 0.4, 4: math.inf, 5: math.inf, 6: math.inf, 7: 0.5}
    # every diverged member copies, even beyond the bottom quantile
    assert all(rule.select_donor(m, scores, "min", rng) in {0, 1} for m in (4, 5, 6))


def test_binary_tournament_copies_only_better_rivals():
    rule = BinaryTournament()
    rng = random.Random(0)
    scores = {0: 0.1, 1: 0.5, 2: 0.9}
    assert all(rule.select_donor(0, scores, "min", rng) is None for _ in range(50))
    donors = Counter(rule.select_donor(2, scores, "min", rng) for _ in range(2000))
    assert set(donors) == {0, 1} and abs(donors[0] / 2000 - 0.5) < 0.05
    # the middle member copies only when it meets the best one: half the time
    middle = Counter(rule.select_donor(1, scores, "min", rng) for _ in range(2000))
    assert abs(middle[None] / 2000 - 0.5) < 0.05 and set(middle) == {None, 0}


def test_strategy_decides_donor_and_explores_from_the_donor_values():
    strategy = PBTStrategy(
        {"lr": Hyperparameter(1e-4, 1.0, log=True)}, "min", TruncationSelection(0.25), Explorer((0.5, 2.0), 0.0)
    )
    scores = {0: 0.9, 1: 0.1, 2: 0.5, 3: 0.6}
    values = {0: {"lr": 0.5}, 1: {"lr": 0.01}, 2: {"lr": 0.1}, 3: {"lr": 0.2}}
    decision = strategy.decide(0, scores, values, random.Random(0))
    assert isinstance(decision, ExploitDecision) and decision.donor == 1
    assert decision.hyperparameters["lr"] in (pytest.approx(0.005), pytest.approx(0.02))
    assert strategy.decide(1, scores, values, random.Random(0)) is None
    assert PBTStrategy({"lr": Hyperparameter(1e-4, 1.0)}, exploit=NoExploit()).decide(0, scores, values, random.Random(0)) is None


def test_pbt_on_a_toy_problem_finds_the_good_region():
    """Many rounds of exploit/explore on a known score drive the population toward the optimum."""
    space = {"x": Hyperparameter(1e-3, 10.0, log=True)}
    strategy = PBTStrategy(space, "min")
    rng = random.Random(0)
    values = {m: strategy.sample(rng) for m in range(8)}
    for _ in range(60):
        scores = {m: (math.log(v["x"]) - math.log(0.5)) ** 2 for m, v in values.items()}
        for m in range(8):
            decision = strategy.decide(m, scores, values, rng)
            if decision is not None:
                values[m] = decision.hyperparameters
    best = min(values.values(), key=lambda v: abs(math.log(v["x"] / 0.5)))
    assert 0.3 < best["x"] < 0.8


def test_ready_criterion_and_exploiter_names():
    ready = ReadyCriterion(3, "step")
    assert not ready.is_ready(2, 0) and ready.is_ready(3, 0) and not ready.is_ready(5, 3)
    with pytest.raises(ValueError, match="`ready_interval` must be a positive int, got 0"):
        ReadyCriterion(0)
    with pytest.raises(ValueError, match="`ready_unit` must be 'step' or 'epoch', got 'batch'"):
        ReadyCriterion(1, "batch")
    with pytest.raises(ValueError, match="`exploit` must be 'truncation', 'tournament' or 'none', got 'best'"):
        make_exploiter("best")
    with pytest.raises(ValueError, match="`quantile` must be in"):
        make_exploiter("truncation", 0.9)
    with pytest.raises(ValueError, match="`mode` must be 'min' or 'max'"):
        PBTStrategy({"lr": Hyperparameter(0.1, 1.0)}, mode="lowest")
