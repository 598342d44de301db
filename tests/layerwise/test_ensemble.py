import lightning as L
import pytest
import torch
from helpers import ValidatedRegressor, trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from ganno_lightning import FEATURE_NAMES, GANNOAgent, GANNOCallback
from ganno_lightning.layerwise.agent import FORMAT_VERSION


def _members(interval=25):
    """Three members that differ in weights, normaliser statistics and memory."""
    members = [GANNOAgent.create(hidden_sizes=(16,), recurrent_size=8, interval=interval, seed=0),
               GANNOAgent.create(hidden_sizes=(16,), interval=interval, seed=1),
               GANNOAgent.create(hidden_sizes=(16,), recurrent_size=4, interval=interval, seed=2)]
    for shift, member in enumerate(members):
        member.normalizer.mean.fill_(0.3 * shift)
        member.normalizer.var.fill_(1.0 + shift)
    return members


def test_an_ensemble_acts_as_the_mixture_of_its_members_and_carries_each_members_memory():
    members, observations = _members(), torch.randn(3, 5, len(FEATURE_NAMES)) * 3
    ensemble = GANNOAgent.ensemble(members)
    states, ensemble_state = [None] * 3, None
    for observation in observations:  # three decisions: the recurrent members' states must carry over
        decisions = [m.decide(observation, s) for m, s in zip(members, states)]
        states = [d.state for d in decisions]
        mixed = ensemble.decide(observation, ensemble_state)
        ensemble_state = mixed.state
        # "mean": the geometric mean of the members' expected changes
        expected = torch.stack([d.multipliers.log() for d in decisions]).mean(0).exp()
        torch.testing.assert_close(mixed.multipliers, expected)
        torch.testing.assert_close(mixed.state, torch.cat([states[0], states[2]], -1))
    probabilities = [torch.softmax(m.actor.step(m.normalizer(observation), None, s)[0], -1)
                     for m, s in zip(members, [None] * 3)]
    torch.testing.assert_close(torch.softmax(ensemble.logits(observation), -1), torch.stack(probabilities).mean(0))


def test_an_ensemble_of_one_agent_decides_as_that_agent():
    member = _members()[0]
    ensemble, observation = GANNOAgent.ensemble([member]), torch.randn(4, len(FEATURE_NAMES))
    for exploration in ("mean", "mode"):
        torch.testing.assert_close(ensemble.decide(observation, exploration=exploration).multipliers,
                                   member.decide(observation, exploration=exploration).multipliers)


def test_an_ensemble_round_trips_in_a_format_5_file_that_records_its_members(tmp_path):
    members = _members()
    ensemble = GANNOAgent.ensemble(members, sources=["a.pt", "b.pt", "c.pt"])
    path = ensemble.save(tmp_path / "ensemble.pt")
    assert torch.load(path, weights_only=True)["format_version"] == 5 < FORMAT_VERSION  # older releases refuse it
    loaded = GANNOAgent.load(path)
    observation = torch.randn(6, len(FEATURE_NAMES)) * 3
    first = ensemble.decide(observation)
    torch.testing.assert_close(loaded.decide(observation, first.state).multipliers,
                               ensemble.decide(observation, first.state).multipliers)
    assert loaded.fingerprint() == ensemble.fingerprint() and loaded.recurrent and "ensemble of 3" in repr(loaded)
    assert [m["source"] for m in loaded.training_config["ensemble"]] == ["a.pt", "b.pt", "c.pt"]
    assert [m["fingerprint"] for m in loaded.training_config["ensemble"]] == [m.fingerprint() for m in members]


@pytest.mark.parametrize("change, match", [
    ({"interval": 10}, "interval=10"),
    ({"decision_steps": [0, 5]}, "decision_steps"),
    ({"feature_names": list(reversed(FEATURE_NAMES))}, "feature_names"),
    ({"action_multipliers": "wide"}, "action_multipliers"),
    ({"prior_above": 600}, "prior_above=600"),
])
def test_members_that_act_differently_are_refused_by_name(change, match):
    odd = GANNOAgent.create(seed=1, **change)
    with pytest.raises(ValueError, match=f"b.pt has {match}"):
        GANNOAgent.ensemble([GANNOAgent.create(seed=0), odd], sources=["a.pt", "b.pt"])
    with pytest.raises(ValueError, match="at least one agent"):
        GANNOAgent.ensemble([])
    with pytest.raises(ValueError, match="must name each of the 2 members"):
        GANNOAgent.ensemble([GANNOAgent.create(seed=0)] * 2, sources=["a.pt"])


STEPS_PER_EPOCH = 8  # ValidatedRegressor: 64 samples, batch 8


def _fit(max_epochs, ckpt_dir, agent_path, resume=None):
    L.seed_everything(7)
    model = ValidatedRegressor(optimizer="adam", lr=0.01)
    callback = GANNOCallback(agent_path)
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_epochs=1, save_top_k=-1)
    trainer(max_epochs=max_epochs, enable_checkpointing=True, callbacks=[callback, checkpoint],
            num_sanity_val_steps=0).fit(model, ckpt_path=resume)
    return callback


def test_a_saved_ensemble_drives_a_trainer_and_resumes_with_its_members_memory(tmp_path):
    path = GANNOAgent.ensemble(_members(interval=4)).save(tmp_path / "ensemble.pt")
    straight = _fit(4, tmp_path / "a", path)
    assert len({tuple(lrs) for lrs in straight.schedule.lrs}) > 1  # it acted
    halfway = tmp_path / "a" / f"epoch=1-step={2 * STEPS_PER_EPOCH}.ckpt"  # written by the straight run itself
    resumed = _fit(4, tmp_path / "c", path, resume=halfway)
    assert straight.state_dict()["policy_state"].shape[-1] == 8 + 4  # the recurrent members' states side by side
    torch.testing.assert_close(resumed.state_dict()["policy_state"], straight.state_dict()["policy_state"],
                               rtol=0, atol=0)
    torch.testing.assert_close(torch.tensor(resumed.schedule.lrs), torch.tensor(straight.schedule.lrs))
