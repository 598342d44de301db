"""SingleTask: a user's own LightningModule as a family that pickles and runs in ParallelEnv workers."""

import functools
import math
import pickle

import pytest
import torch
from envtasks import RegressionData, make_regressor
from helpers import TinyRegressor
from torchrl.envs import ParallelEnv

from ganno_lightning.envs import EnvConfig, LayerwiseLREnv, SingleTask, keys

SMALL = EnvConfig(horizon=32, interval=4)


def rollout_rewards(family, steps=3):
    env = LayerwiseLREnv(family, SMALL, seed=0)
    try:
        return env.rollout(steps, policy=lambda td: td.set(keys.ACTION, torch.zeros(2, dtype=torch.long)))[
            "next", keys.REWARD].tolist()
    finally:
        env.close()


def test_an_import_string_family_pickles_and_builds_a_fresh_module_with_its_kwargs():
    family = pickle.loads(pickle.dumps(SingleTask("envtasks:make_regressor", lr=0.02, hidden=4)))
    first, second = (family.sample(torch.Generator()).module for _ in range(2))
    assert isinstance(first, TinyRegressor) and first.lr == 0.02 and first.net[0].out_features == 4
    assert first is not second and family.max_layers() == 2


def test_an_import_string_and_the_callable_give_the_same_rollout():
    assert rollout_rewards(SingleTask("envtasks:make_regressor", lr=0.02)) == \
        rollout_rewards(SingleTask(make_regressor, lr=0.02))


def test_the_documented_recipe_runs_in_parallel_env_workers():
    family = SingleTask("envtasks:make_regressor", lr=0.01)
    env = ParallelEnv(2, [functools.partial(LayerwiseLREnv, family, SMALL, seed=i) for i in range(2)])
    try:
        td = env.rollout(2)
    finally:
        env.close()
    rewards = td["next", keys.REWARD]
    assert rewards.shape == (2, 2, 2, 1) and all(math.isfinite(x) for x in rewards.flatten().tolist())
    assert not torch.equal(rewards[0], rewards[1])  # each worker trains its own seed


def test_a_datamodule_factory_serves_the_data():
    family = SingleTask("envtasks:make_regressor", datamodule="envtasks:RegressionData", datamodule_kwargs={"batch_size": 4})
    env = LayerwiseLREnv(pickle.loads(pickle.dumps(family)), SMALL, seed=0)
    env.rollout(2)
    assert isinstance(env.task.datamodule, RegressionData) and env.task.datamodule.batch_size == 4
    assert env.task.datamodule.loaders_made == 1


def test_bad_factories_are_named():
    with pytest.raises(ValueError, match=r"`factory` must be an import path 'package.module:attr', got 'envtasks.make"):
        SingleTask("envtasks.make_regressor")
    with pytest.raises(ValueError, match=r"`factory` 'envtasks:nope': 'envtasks' has no attribute 'nope'"):
        SingleTask("envtasks:nope")
    with pytest.raises(ValueError, match=r"`datamodule` 'no_pkg:Data': cannot import module 'no_pkg'"):
        SingleTask(make_regressor, datamodule="no_pkg:Data")
    with pytest.raises(TypeError, match=r"`factory` must be a class or function .* got 42"):
        SingleTask(42)
    with pytest.raises(ValueError, match=r"`datamodule_kwargs` \{'batch_size': 4\} given without `datamodule`"):
        SingleTask(make_regressor, datamodule_kwargs={"batch_size": 4})
    family = SingleTask("envtasks:make_regressor_and_data", datamodule=RegressionData)
    with pytest.raises(ValueError, match="returned a datamodule and `datamodule` is set too"):
        family.sample(torch.Generator())
