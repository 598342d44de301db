import doctest
import importlib
import math

import pytest

from ganno_lightning.envs.reward import EpisodeReward, log_improvement


def reward(reference="first", val_weight=0.0):
    return EpisodeReward(divergence_factor=10.0, divergence_reference=reference, divergence_penalty=5.0,
                         val_weight=val_weight)


def test_interval_rewards_telescope_to_the_log_ratio_of_first_and_last_loss():
    r = reward()
    r.start(4.0)
    total = sum(r.of_interval(loss) for loss in (3.0, 3.5, 1.0, 0.5))
    assert total == pytest.approx(math.log(4.0 / 0.5))


@pytest.mark.parametrize("reference, diverged", [("first", False), ("best", True)])
def test_divergence_is_judged_against_the_first_or_the_best_loss(reference, diverged):
    r = reward(reference)
    r.start(1.0)
    r.of_interval(0.05)
    assert r.diverged(0.6) is diverged  # 0.6 < 10 x 1.0 (first) but > 10 x 0.05 (best)
    assert r.diverged(math.nan) and r.diverged(math.inf) and r.penalty == -5.0


def test_validation_term_is_off_without_weight_or_a_measurement():
    assert reward(val_weight=0.0).validation_term(2.0, 1.0) is None
    assert reward(val_weight=0.5).validation_term(None, 1.0) is None
    assert reward(val_weight=0.5).validation_term(2.0, 1.0) == pytest.approx(0.5 * math.log(2.0))


def test_zero_loss_gives_a_finite_reward_and_bad_reference_is_named():
    assert math.isfinite(log_improvement(1.0, 0.0))
    with pytest.raises(ValueError, match=r"`divergence_reference` must be one of \['first', 'best'\], got 'last'"):
        reward("last")


@pytest.mark.parametrize("module", ["ganno_lightning.envs.reward", "ganno_lightning.envs.inner_run"])
def test_docstring_examples(module):
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_final_term_is_clipped_weighted_and_worst_when_the_end_is_unmeasured():
    r = EpisodeReward(10.0, "first", 5.0, 0.0, train_loss_weight=0.0, final_val_weight=0.5, final_val_clip=1.0)
    r.start(1.0)
    assert r.of_interval(0.5) == 0.0  # no training-loss term
    assert r.final_term(1.0, 0.5) == pytest.approx(0.5 * math.log(2.0))
    assert r.final_term(1.0, 1e-9) == pytest.approx(0.5) and r.final_term(1.0, None) == pytest.approx(-0.5)
    assert r.final_term(None, 0.5) is None and reward().final_term(1.0, 0.5) is None
