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

#: Module -> the public names it defines (the one source of truth for the exports).
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".config": ["load_config", "make_env"],
    ".inner_run": ["TaskError"],
    ".layerwise_env": ["EnvConfig", "LayerwiseLREnv"],
    ".task": ["MixtureFamily", "SingleTask", "TaskFamily", "TrainingTask"],
})

if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from ganno_lightning.envs.config import load_config, make_env
    from ganno_lightning.envs.inner_run import TaskError
    from ganno_lightning.envs.layerwise_env import EnvConfig, LayerwiseLREnv
    from ganno_lightning.envs.task import (
        MixtureFamily,
        SingleTask,
        TaskFamily,
        TrainingTask,
    )
