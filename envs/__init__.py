"""TorchRL environments and the task zoo for meta-training GANNO agents.

Public names are imported on first use (PEP 562): ``from ganno_lightning.envs import keys`` does not pay for
importing TorchRL and Lightning.

Example::

    from ganno_lightning.envs import load_config, make_env

    env = make_env(load_config("configs/env_smoke.yaml"), seed=0)
    rollout = env.rollout(3)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ganno_lightning._lazy import lazy_exports

#: Public name -> the module that defines it (the one source of truth for the exports).
_EXPORTS = {
    "load_config": "ganno_lightning.envs.config",
    "make_env": "ganno_lightning.envs.config",
    "TaskError": "ganno_lightning.envs.inner_run",
    "EnvConfig": "ganno_lightning.envs.layerwise_env",
    "LayerwiseLREnv": "ganno_lightning.envs.layerwise_env",
    "MixtureFamily": "ganno_lightning.envs.task",
    "SingleTask": "ganno_lightning.envs.task",
    "TaskFamily": "ganno_lightning.envs.task",
    "TrainingTask": "ganno_lightning.envs.task",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from ganno_lightning.envs.config import load_config, make_env
    from ganno_lightning.envs.inner_run import TaskError
    from ganno_lightning.envs.layerwise_env import EnvConfig, LayerwiseLREnv
    from ganno_lightning.envs.task import MixtureFamily, SingleTask, TaskFamily, TrainingTask
