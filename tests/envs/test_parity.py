"""Train/deploy parity: the same actions through the env and through GANNOCallback give the same run."""

import functools

import pytest
import torch
from envtasks import StreamedRegressor
from helpers import TinyRegressor, trainer

from ganno_lightning import GANNOAgent, GANNOCallback
from ganno_lightning.envs import EnvConfig, LayerwiseLREnv, SingleTask, keys
from ganno_lightning.layerwise.agent import Decision

INTERVAL, HORIZON = 4, 32
SCRIPT = [[6, 0], [5, 1], [3, 3], [0, 6], [2, 4], [6, 6], [1, 0], [4, 2]]  # one row per decision


def make_module(scheduler="lambda", module_class=TinyRegressor):
    torch.manual_seed(11)
    return module_class(optimizer="adam", lr=0.01, scheduler=scheduler)


class ScriptedAgent(GANNOAgent):
    """Plays SCRIPT, whatever it observes, and remembers the observations."""

    def __init__(self):
        base = GANNOAgent.create(interval=INTERVAL, seed=0)
        super().__init__(base.actor, base.normalizer, interval=INTERVAL)
        self.observations = []

    def decide(self, observation, state=None, *args, **kwargs):
        self.observations.append(observation.clone())
        actions = torch.tensor(SCRIPT[len(self.observations) - 1])
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
