"""TorchRL environments and the task zoo for meta-training GANNO agents.

Public names are imported on first use (PEP 562): ``from envs import keys`` does not pay for
importing TorchRL and Lightning.

Example::

    from envs import load_config, make_env

    env = make_env(load_config("configs/env_smoke.yaml"), seed=0)
    rollout = env.rollout(3)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ganno_lightning._lazy import lazy_exports

#: Public name -> the module that defines it (the one source of truth for the exports).
_EXPORTS = {
    "load_config": "envs.config",
    "make_env": "envs.config",
    "TaskError": "envs.inner_run",
    "EnvConfig": "envs.layerwise_env",
    "LayerwiseLREnv": "envs.layerwise_env",
    "MixtureFamily": "envs.task",
    "SingleTask": "envs.task",
    "TaskFamily": "envs.task",
    "TrainingTask": "envs.task",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from envs.config import load_config, make_env
    from envs.inner_run import TaskError
    from envs.layerwise_env import EnvConfig, LayerwiseLREnv
    from envs.task import MixtureFamily, SingleTask, TaskFamily, TrainingTask
