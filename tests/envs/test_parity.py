"""Train/deploy parity: the same actions through the env and through GANNOCallback give the same run."""

import functools

import pytest
import torch
from envtasks import StreamedRegressor
from helpers import TinyRegressor, trainer

from ganno_lightning import GANNOAgent, GANNOCallback
from ganno_lightning.envs import EnvConfig, LayerwiseLREnv, SingleTask, keys
from ganno_lightning.layerwise.features import LR_PROBE_FEATURES
from ganno_lightning.layerwise.agent import Decision

INTERVAL, HORIZON = 4, 32
SCRIPT = [[6, 0], [5, 1], [3, 3], [0, 6], [2, 4], [6, 6], [1, 0], [4, 2]]  # one row per decision


def make_module(scheduler="lambda", module_class=TinyRegressor):
    torch.manual_seed(11)
    return module_class(optimizer="adam", lr=0.01, scheduler=scheduler)


class ScriptedAgent(GANNOAgent):
    """Plays ``script`` (SCRIPT by default), whatever it observes, and remembers the observations."""

    def __init__(self, script=SCRIPT, **options):
        base = GANNOAgent.create(interval=INTERVAL, seed=0, **options)
        super().__init__(base.actor, base.normalizer, interval=INTERVAL, action_multipliers=base.action_multipliers,
                         decision_steps=base.decision_steps, prior=base.prior, feature_names=base.feature_names)
        self.script = script
        self.observations = []

    def decide(self, observation, state=None, *args, **kwargs):
        self.observations.append(observation.clone())
        actions = torch.tensor(self.script[len(self.observations) - 1])
        return Decision(torch.tensor(self.action_multipliers, dtype=torch.float64)[actions], actions, state)


# An IterableDataset without a length ends its epochs by exhaustion, in the env as in a Trainer: the
# per-epoch scheduler (HORIZON spans 4 epochs of 8 batches) steps at the same optimizer steps.
@pytest.mark.parametrize("module_class", [TinyRegressor, StreamedRegressor], ids=["map_style", "iterable"])
@pytest.mark.parametrize("scheduler", ["lambda", "epoch"])  # a per-step and a per-epoch LR scheduler
def test_env_and_callback_observe_and_set_lrs_identically(scheduler, module_class):
    config = EnvConfig(horizon=HORIZON, interval=INTERVAL, unknown_total_prob=0.0)
    factory = functools.partial(make_module, scheduler, module_class)
    env = LayerwiseLREnv(SingleTask(factory), config, seed=0)
    td = env.reset()
    env_observations = [td[keys.OBSERVATION]]
    for actions in SCRIPT[: HORIZON // INTERVAL - 1]:
        td.set(keys.ACTION, torch.tensor(actions))
        td = env.step(td)["next"]
        env_observations.append(td[keys.OBSERVATION])
    assert td["done"].item()
    assert env.run.epoch == HORIZON // 8  # 64 samples in batches of 8

    agent = ScriptedAgent()
    callback = GANNOCallback(agent)
    module = factory()
    trainer(max_steps=HORIZON, max_epochs=-1, callbacks=[callback]).fit(module)

    assert len(agent.observations) == len(env_observations) == HORIZON // INTERVAL
    for step, (ours, theirs) in enumerate(zip(agent.observations, env_observations)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=f"observation {step} differs")
    env_schedule = env.controller.schedule
    assert callback.schedule.steps[:-1] == env_schedule.steps
    assert callback.schedule.lrs[:-1] == env_schedule.lrs  # exactly, not approximately
    for ours, theirs in zip(module.parameters(), env.task.module.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


# #18's options on: a decision at step 0 (a probe in both), early decisions, the wide action set, an
# LR prior under the scales (the module has no scheduler, so the prior applies) and the feature sets.
WIDE_SCRIPT = [[10, 0], [9, 1], [5, 5], [0, 10], [2, 8], [7, 7], [1, 0], [4, 2], [6, 3], [3, 6]]


# the default features' parity is the test above's; run_length adds the run's length (the env's horizon, the Trainer's steps)
@pytest.mark.parametrize("prior, features", [("cosine", "run_length"), ("warmup_cosine", "lr_probe")])
def test_parity_with_early_decisions_a_probe_wide_actions_and_a_prior(prior, features):
    options = dict(decision_steps=[0, 2], prior=prior, action_multipliers="wide")
    config = EnvConfig(horizon=HORIZON, interval=INTERVAL, unknown_total_prob=0.0, features=features, **options)
    factory = functools.partial(make_module, None)
    env = LayerwiseLREnv(SingleTask(factory), config, seed=0)
    td = env.reset()
    assert env.controller.step == 0 and env.controller.prior.active
    env_observations = [td[keys.OBSERVATION]]
    for actions in WIDE_SCRIPT:
        td.set(keys.ACTION, torch.tensor(actions))
        td = env.step(td)["next"]
        env_observations.append(td[keys.OBSERVATION])
        if td["done"].item():
            break

    agent = ScriptedAgent(WIDE_SCRIPT, feature_names=features, **options)
    callback = GANNOCallback(agent)  # the options come from the agent
    module = factory()
    trainer(max_steps=HORIZON, max_epochs=-1, callbacks=[callback]).fit(module)

    assert len(agent.observations) == len(env_observations) == 10  # decisions at 0, 2, 4, 8, ..., 32
    assert agent.observations[-1].shape[-1] == len(config.features)
    if features == "lr_probe":  # the step-0 probe also tried the first update, the same way in both
        probed = torch.stack([o[..., -len(LR_PROBE_FEATURES):] for o in env_observations])
        assert probed[0].ne(0).all() and probed.eq(probed[0]).all()
    for step, (ours, theirs) in enumerate(zip(agent.observations, env_observations)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=f"observation {step} differs")
    env_schedule = env.controller.schedule
    assert env_schedule.steps == [0, 2, 4, 8, 12, 16, 20, 24, 28]
    assert callback.schedule.steps[:-1] == env_schedule.steps
    assert callback.schedule.lrs[:-1] == env_schedule.lrs  # exactly, not approximately
    for ours, theirs in zip(module.parameters(), env.task.module.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_parity_with_recover_on_spike():
    """A too-high SGD LR spikes (finite) in both, rolls back to the same state and is cut alike."""
    def factory():
        torch.manual_seed(11)
        return TinyRegressor(optimizer="sgd", lr=1.0)

    config = EnvConfig(horizon=HORIZON, interval=INTERVAL, unknown_total_prob=0.0, divergence_factor=3.0,
                       recover_on_spike=True)
    env = LayerwiseLREnv(SingleTask(factory), config, seed=0)
    td = env.reset()
    env_observations = [td[keys.OBSERVATION]]
    keep = [[3, 3]] * (HORIZON // INTERVAL)
    for actions in keep[:-1]:
        td = env.step(td.set(keys.ACTION, torch.tensor(actions)))["next"]
        env_observations.append(td[keys.OBSERVATION])
    assert env.controller.rollback.rollbacks >= 1

    agent = ScriptedAgent(keep)
    callback = GANNOCallback(agent, recover_on_spike=True, spike_factor=3.0)
    module = factory()
    with pytest.warns(UserWarning, match="spiked"):
        trainer(max_steps=HORIZON, max_epochs=-1, callbacks=[callback]).fit(module)
    for step, (ours, theirs) in enumerate(zip(agent.observations, env_observations)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=f"observation {step} differs")
    assert callback.schedule.lrs[:-1] == env.controller.schedule.lrs
    for ours, theirs in zip(module.parameters(), env.task.module.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
