"""Controller: token layout, decoding, teacher forcing and PPO learning on a known reward."""

import pytest
import torch
from tensordict import TensorDict

from ganno_lightning.nos.controller import ControllerPPO, RuleController, SearchSpace
from ganno_lightning.nos.dsl import UnknownNameError, parse_rule

SPACE = SearchSpace(operands=["g", "m_hat", "sign_g", "1"], unary=["id", "neg", "clip({}, 0.1)"], binary=["add", "mul", "keep"])


def test_slots_follow_the_paper_layout():
    assert SPACE.slots() == ["operand", "operand", "unary", "unary", "binary"]
    deep = SearchSpace(operands=["g"], unary=["neg"], binary=["add"], depth=2)
    assert len(deep.slots()) == 13
    assert SPACE.size() == 4 * 4 * 3 * 3 * 3


def test_decode_renders_parseable_rules():
    c = RuleController(SPACE, seed=0)
    assert c.decode([1, 3, 1, 2, 1]) == "mul(neg(m_hat), clip(1, 0.1))"
    assert c.decode([0, 0, 0, 0, 2]) == "keep(g, g)"
    deep = RuleController(SearchSpace(operands=["g", "sign_m"], unary=["id", "exp"], binary=["add", "mul"], depth=2))
    actions, _ = deep.sample(16)
    for a in actions:
        parse_rule(deep.decode(a))  # every sample is a valid rule


def test_teacher_forcing_reproduces_sampling_log_probs():
    c = RuleController(SPACE, seed=3)
    ppo = ControllerPPO(c)
    actions, log_probs = c.sample(32)
    dist = ppo.actor.get_dist(TensorDict({"action": actions}, [32]))
    torch.testing.assert_close(dist.log_prob(actions), log_probs, rtol=1e-5, atol=1e-5)
    # the padding of the smaller vocabularies is never sampled
    assert int(actions[:, 2:4].max()) < 3 and int(actions[:, :2].max()) < 4


def test_sampling_is_seeded():
    a, _ = RuleController(SPACE, seed=5).sample(6)
    b, _ = RuleController(SPACE, seed=5).sample(6)
    assert torch.equal(a, b)


def test_ppo_learns_a_known_reward():
    # reward = fraction of tokens equal to a target rule: PPO must move the mean reward up
    torch.manual_seed(0)
    c = RuleController(SPACE, seed=0)
    ppo = ControllerPPO(c, lr=2e-2, epochs=3)
    target = torch.tensor([0, 1, 0, 1, 2])
    means = []
    for _ in range(12):
        actions, log_probs = c.sample(8)
        rewards = (actions == target).float().mean(-1)
        stats = ppo.update(actions, log_probs, rewards)
        means.append(float(rewards.mean()))
    assert means[-1] > means[0] + 0.3
    assert {"losses/objective", "losses/entropy", "losses/approx_kl", "losses/clip_fraction", "charts/baseline"} <= set(stats)


def test_ppo_state_round_trip_continues_identically():
    ppo = ControllerPPO(RuleController(SPACE, seed=1))
    a, lp = ppo.controller.sample(4)
    ppo.update(a, lp, torch.rand(4))
    twin = ControllerPPO(RuleController(SPACE, seed=99))
    twin.load_state_dict(ppo.state_dict())
    assert torch.equal(ppo.controller.sample(5)[0], twin.controller.sample(5)[0])
    assert twin.baseline == ppo.baseline


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(operands=[]), ValueError, r"`operands` must be a non-empty list, got \[\]"),
        (dict(unary=[]), ValueError, r"`unary` must be a non-empty list, got \[\]"),
        (dict(binary=[]), ValueError, r"`binary` must be a non-empty list, got \[\]"),
        (dict(operands=["grad"]), UnknownNameError, r"search space operand 'grad': unknown operand 'grad'"),
        (dict(unary=["square"]), ValueError, r"`unary` entry 'square' is not a unary function"),
        (dict(unary=["clip"]), ValueError, r"`unary` entry 'clip' needs a parameter"),
        (dict(binary=["max"]), ValueError, r"`binary` entry 'max' is not a binary function"),
        (dict(depth=0), ValueError, r"`depth` must be an int in \[1, 3\], got 0"),
    ],
)
def test_search_space_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        SearchSpace(**kwargs)


def test_ppo_rejects_bad_rewards():
    ppo = ControllerPPO(RuleController(SPACE))
    a, lp = ppo.controller.sample(3)
    with pytest.raises(ValueError, match="`rewards` must be finite"):
        ppo.update(a, lp, torch.tensor([1.0, float("nan"), 0.0]))
    with pytest.raises(ValueError, match=r"`rewards` must have one entry per sampled rule \(3\)"):
        ppo.update(a, lp, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="`epochs` must be a positive int, got 0"):
        ControllerPPO(RuleController(SPACE), epochs=0)
