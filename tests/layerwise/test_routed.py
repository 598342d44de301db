import math

import lightning as L
import pytest
import torch
from helpers import ValidatedRegressor, trainer

from ganno_lightning import GANNOAgent, GANNOCallback
from ganno_lightning.layerwise.agent import FORMAT_VERSION


def _agents(interval=25):
    """A short-run agent (hypergradient features) and a long-run one that also reads the run's length; both
    recurrent, with normaliser statistics of their own."""
    short = GANNOAgent.create(hidden_sizes=(16,), recurrent_size=8, interval=interval, seed=0,
                              feature_names="hypergradient")
    long = GANNOAgent.create(hidden_sizes=(16,), recurrent_size=4, interval=interval, seed=1,
                             feature_names="run_length")
    for shift, agent in enumerate((short, long)):
        agent.normalizer.mean.fill_(0.3 * shift)
        agent.normalizer.var.fill_(1.0 + shift)
    long.training_config = {"env": {"horizon": 300, "long_run_prob": 0.25, "long_horizon": 1200}}
    return short, long


@pytest.mark.parametrize("length, acting", [(300, "short"), (600, "short"), (601, "long"), (3000, "long"),
                                            (None, "short")])
def test_a_routed_agent_acts_as_the_agent_of_the_fits_length_and_carries_its_memory(length, acting):
    short, long = _agents()
    routed = GANNOAgent.routed([short, long], boundaries=[600])
    assert routed.feature_names == long.feature_names
    observations = torch.randn(3, 5, len(long.feature_names)) * 3
    observations[..., -1] = 0.0 if length is None else math.log(length)  # log_total_steps; 0: unknown
    agent = short if acting == "short" else long
    columns = [long.feature_names.index(name) for name in agent.feature_names]
    state = routed_state = None
    for observation in observations:  # three decisions: the acting agent's memory must carry over
        alone = agent.decide(observation[..., columns], state, exploration="mean")
        decision = routed.decide(observation, routed_state, exploration="mean")
        state, routed_state = alone.state, decision.state
        torch.testing.assert_close(decision.multipliers, alone.multipliers, rtol=0, atol=0)
        own = routed_state[..., :8] if acting == "short" else routed_state[..., 8:]
        torch.testing.assert_close(own, state, rtol=0, atol=0)


def test_a_routed_agent_round_trips_in_a_format_6_file_that_records_its_routes(tmp_path):
    short, long = _agents()
    routed = GANNOAgent.routed([short, long], boundaries=[600], sources=["short.pt", "long.pt"])
    path = routed.save(tmp_path / "routed.pt")
    assert torch.load(path, weights_only=True)["format_version"] == 6 < FORMAT_VERSION  # older releases refuse it
    loaded = GANNOAgent.load(path)
    observation = torch.randn(2, 6, len(long.feature_names)) * 3
    observation[0, :, -1], observation[1, :, -1] = math.log(300), math.log(3000)  # one fit of each kind
    first = routed.decide(observation)
    torch.testing.assert_close(loaded.decide(observation, first.state).multipliers,
                               routed.decide(observation, first.state).multipliers, rtol=0, atol=0)
    assert loaded.fingerprint() == routed.fingerprint() and "routed by fit length at [600.0]" in repr(loaded)
    assert [(r["source"], r["fits"]) for r in loaded.training_config["routes"]] == [("short.pt", "<= 600"),
                                                                                 ("long.pt", "> 600")]
    assert [r["fingerprint"] for r in loaded.training_config["routes"]] == [short.fingerprint(), long.fingerprint()]
    assert loaded.trained_horizon == 1200  # the longest fits' agent's


def test_agents_that_cannot_be_routed_are_refused_by_name():
    short, long = _agents()
    with pytest.raises(ValueError, match="long.pt has interval=10"):
        GANNOAgent.routed([short, _agents(interval=10)[1]], [600], sources=["short.pt", "long.pt"])
    with pytest.raises(ValueError, match="must observe .*`log_total_steps`.*env.features: run_length"):
        GANNOAgent.routed([short, short], [600])
    with pytest.raises(ValueError, match=r"one fit length fewer than the 2 agents, got \[300, 600\]"):
        GANNOAgent.routed([short, long], [300, 600])
    with pytest.raises(ValueError, match="at least two agents"):
        GANNOAgent.routed([long], [])
    probe = GANNOAgent.create(hidden_sizes=(16,), seed=2, feature_names="lr_probe")
    with pytest.raises(ValueError, match=r"agent 0 observes \['lr_probe_change_1x', .*\], which the widest agent"):
        GANNOAgent.routed([probe, long], [600])
    with pytest.raises(ValueError, match=r"`boundaries` must be ascending fit lengths above 1 step, got \[0.5\]"):
        GANNOAgent.routed([short, long], [0.5])


STEPS_PER_EPOCH = 8  # ValidatedRegressor: 64 samples, batch 8


def _schedule(agent, max_epochs, tmp_path):
    callback = GANNOCallback(agent.save(tmp_path / "agent.pt"))  # building its networks draws random numbers
    L.seed_everything(7)  # so the model is seeded after it
    trainer(max_epochs=max_epochs, callbacks=[callback]).fit(ValidatedRegressor(optimizer="adam", lr=0.01))
    return torch.tensor(callback.schedule.lrs)


def test_in_a_trainer_the_fits_length_picks_the_agent(tmp_path):
    """The callback tells the agent the fit's length: a 16-step fit goes to the short-run agent, a 32-step one
    to the long-run agent, each deciding exactly as it does alone."""
    short, long = _agents(interval=4)
    routed = GANNOAgent.routed([short, long], boundaries=[20])
    for epochs, alone in ((2, short), (4, long)):
        schedule = _schedule(routed, epochs, tmp_path / f"routed{epochs}")
        assert len(schedule) == epochs * STEPS_PER_EPOCH // 4 + 1 and len({tuple(r) for r in schedule.tolist()}) > 1
        torch.testing.assert_close(schedule, _schedule(alone, epochs, tmp_path / f"alone{epochs}"), rtol=0, atol=0)


def test_loading_an_agent_leaves_the_callers_random_numbers_alone(tmp_path):
    """A seeded fit draws the same dropout masks and shuffles whichever agent file it loads, however large."""
    paths = [GANNOAgent.routed(list(_agents()), [600]).save(tmp_path / "routed.pt"),
             GANNOAgent.create(hidden_sizes=(8,), seed=0).save(tmp_path / "small.pt")]
    draws = []
    for path in paths:
        torch.manual_seed(0)
        GANNOAgent.load(path)
        draws.append(torch.rand(3))
    torch.manual_seed(0)
    assert torch.equal(draws[0], torch.rand(3)) and torch.equal(draws[1], draws[0])


def test_a_routed_agent_is_paced_by_the_run_length_of_the_route_that_acts(tmp_path):
    """``interval='scaled'`` stretches the interval by the fit's length over the acting route's training runs."""
    short, long = _agents(interval=4)
    short.training_config = {"env": {"horizon": 8}}
    long.training_config = {"env": {"horizon": 40}}
    routed = GANNOAgent.routed([short, long], boundaries=[20])
    assert [routed.trained_horizon_for(n) for n in (16, 20, 21, None)] == [8, 8, 40, 8]
    assert routed.trained_horizon == 40 and short.trained_horizon_for(3000) == 8
    callback = GANNOCallback(routed.save(tmp_path / "routed.pt"), interval="scaled")
    trainer(max_epochs=2, callbacks=[callback]).fit(ValidatedRegressor(optimizer="adam", lr=0.01))  # 16 steps
    assert callback.interval == 8  # 4 steps in 8-step runs, paced to a 16-step fit (the longest route's: 4)

