"""The action set, its exploration modes, the scale bounds and the multiply-and-clip, on their own."""

import math

import pytest
import torch

from ganno_lightning.layerwise.actions import (
    DEFAULT_ACTION_MULTIPLIERS,
    DEFAULT_SCALE_BOUNDS,
    ActionSet,
    apply_multipliers,
    check_action_multipliers,
    check_exploration,
    check_min_change,
    check_scale_bounds,
    clip_scales,
)


def test_default_action_set_is_the_seven_symmetric_powers_of_two():
    assert DEFAULT_ACTION_MULTIPLIERS == (0.5, 2**-0.5, 2**-0.25, 1.0, 2**0.25, 2**0.5, 2.0)
    assert DEFAULT_SCALE_BOUNDS == (0.01, 100.0)
    assert ActionSet().multipliers == DEFAULT_ACTION_MULTIPLIERS


def test_index_to_multiplier_and_its_range_check():
    actions = ActionSet([0.5, 1.0, 2.0])
    assert actions.multipliers_of([2, 0, 1, 1]) == [2.0, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"Actions must lie in \[0, 2\], got \[0, 3\]"):
        actions.multipliers_of([0, 3])
    with pytest.raises(ValueError, match=r"Actions must lie in \[0, 2\], got \[-1\]"):
        actions.multipliers_of([-1])


@pytest.mark.parametrize("bad", [[], [1.0, 0.0], [1.0, -2.0], [math.inf], [math.nan], ["x"]])
def test_action_multipliers_must_be_positive_and_finite(bad):
    with pytest.raises(ValueError, match=r"`env.action_multipliers` must be a non-empty list of positive finite"):
        check_action_multipliers(bad, "env.action_multipliers")
    with pytest.raises(ValueError, match=r"`action_multipliers`"):
        ActionSet(bad)


def test_mode_is_the_argmax_and_gives_the_exact_multiplier():
    actions = ActionSet()
    logits = torch.randn(4, 5, 7, generator=torch.Generator().manual_seed(0))
    multipliers, chosen = actions.choose(logits, "mode")
    assert torch.equal(chosen, logits.argmax(-1))
    assert multipliers.dtype == torch.float64 and multipliers.shape == (4, 5)
    # exactly the float the environment applies for that index, no float32 rounding
    assert multipliers.reshape(-1).tolist() == actions.multipliers_of(chosen.reshape(-1).tolist())


def test_mean_is_the_exponential_of_the_expected_log_multiplier():
    actions = ActionSet([0.5, 1.0, 4.0])
    logits = torch.tensor([[0.0, 0.0, 0.0], [10.0, -10.0, -10.0], [1.0, 2.0, 3.0]])
    multipliers, chosen = actions.choose(logits, "mean")
    assert chosen is None
    probs = torch.softmax(logits.double(), -1)
    expected = (probs @ torch.tensor([0.5, 1.0, 4.0], dtype=torch.float64).log()).exp()
    assert torch.equal(multipliers, expected)
    assert multipliers[0].item() == pytest.approx((0.5 * 1.0 * 4.0) ** (1 / 3))  # geometric mean when uniform
    assert multipliers[1].item() == pytest.approx(0.5, rel=1e-6)


def test_random_samples_follow_the_distribution_and_the_generator():
    actions = ActionSet([0.5, 2.0])
    logits = torch.log(torch.tensor([0.2, 0.8])).expand(4000, 2)
    multipliers, chosen = actions.choose(logits, "random", torch.Generator().manual_seed(0))
    assert chosen.shape == (4000,) and chosen.float().mean().item() == pytest.approx(0.8, abs=0.03)
    assert torch.equal(multipliers, torch.tensor([0.5, 2.0], dtype=torch.float64)[chosen])
    again, _ = actions.choose(logits, "random", torch.Generator().manual_seed(0))
    assert torch.equal(multipliers, again)


def test_exploration_names_the_argument_on_error():
    assert check_exploration("random") == "random"
    with pytest.raises(ValueError, match=r"`agent.exploration` must be one of \['mean', 'mode', 'random'\], got 'x'"):
        check_exploration("x", "agent.exploration")
    with pytest.raises(ValueError, match=r"`exploration` must be one of"):
        ActionSet().choose(torch.zeros(7), "greedy")


def test_min_change_keeps_the_lr_where_the_change_is_smaller_and_leaves_the_rest():
    actions = ActionSet()  # 2^-1 ... 2, with 1 at index 3
    leaning = torch.full((7,), -30.0)
    logits = torch.stack([leaning.index_fill(0, torch.tensor([a]), 0.0) for a in (0, 2, 3, 4, 6)])
    free, free_actions = actions.choose(logits, "mode")
    held, held_actions = actions.choose(logits, "mode", min_change=2**0.5)
    assert free.tolist() == [0.5, 2**-0.25, 1.0, 2**0.25, 2.0]
    assert held.tolist() == [0.5, 1.0, 1.0, 1.0, 2.0]  # x2^-1/4 and x2^1/4 are inside x2^-1/2 .. x2^1/2
    assert free_actions.tolist() == [0, 2, 3, 4, 6] and held_actions.tolist() == [0, 3, 3, 3, 6]
    # a change of exactly min_change is made; "mean" is held alike
    assert actions.choose(logits, "mode", min_change=2**0.25)[0].tolist() == free.tolist()
    assert actions.choose(logits, "mean", min_change=2**0.5)[0].tolist() == pytest.approx(held.tolist())
    assert torch.equal(actions.choose(logits, "mode", min_change=1.0)[0], free)
    # a set without the multiplier 1 has no action index for a held change
    no_identity = ActionSet([0.5, 2.0])
    multipliers, chosen = no_identity.choose(torch.tensor([[9.0, 0.0], [0.0, 9.0]]), "mode", min_change=4.0)
    assert multipliers.tolist() == [1.0, 1.0] and chosen is None


@pytest.mark.parametrize("bad", [0.5, 0.0, -2.0, math.inf, math.nan, "x", None, True])
def test_min_change_must_be_a_finite_factor_of_at_least_one(bad):
    with pytest.raises(ValueError, match=r"`agent.min_change` must be a finite number >= 1 .*, got "):
        check_min_change(bad, "agent.min_change")
    with pytest.raises(ValueError, match=r"`min_change`"):
        ActionSet().choose(torch.zeros(7), "mean", min_change=bad)


@pytest.mark.parametrize("bad", [(0.0, 10.0), (2.0, 10.0), (0.1, 0.5), (0.1, math.inf), (0.1,), "ab", None])
def test_scale_bounds_must_bracket_one(bad):
    with pytest.raises(ValueError, match=r"`env.scale_bounds` must"):
        check_scale_bounds(bad, "env.scale_bounds")


def test_scale_bounds_come_back_as_floats():
    assert check_scale_bounds([1, 100]) == (1.0, 100.0)


def test_multiply_then_clip_is_cumulative_and_bounded():
    bounds = (0.25, 4.0)
    scales = [1.0, 1.0, 1.0]
    for _ in range(3):
        scales = apply_multipliers(scales, [2.0, 0.5, 1.0], bounds)
    assert scales == [4.0, 0.25, 1.0]  # 8 and 1/8 clipped
    assert apply_multipliers(scales, [0.5, 2.0, 1.0], bounds) == [2.0, 0.5, 1.0]  # clipped values move back at once
    assert clip_scales([torch.tensor(9.0), 0.1], bounds) == [4.0, 0.25]
    with pytest.raises(ValueError):
        apply_multipliers([1.0, 1.0], [2.0], bounds)  # one multiplier per scale
