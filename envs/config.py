"""Build an environment from omegaconf YAML: an ``env:`` section and a ``family:`` section.

Example file (``configs/env_smoke.yaml``)::

    env:
      horizon: 100
      interval: 25
    family:
      name: mlp_digits
      train: {depth: [2, 3], width: [16, 32]}

Unknown keys anywhere and impossible values are errors that name the field.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ganno_lightning import config as shared
from ganno_lightning.config import unknown_key_error
from ganno_lightning.envs.layerwise_env import EnvConfig, LayerwiseLREnv
from ganno_lightning.envs.task import MixtureFamily, TaskFamily
from ganno_lightning.envs.task_pool import MATCHED_ENV_KEYS, TaskPool
from ganno_lightning.envs.tasks import make_family

_SECTIONS = ("env", "family")
_FAMILY_KEYS = ("name", "train", "heldout", "lr_sampling")


@dataclass
class EnvFileConfig:
    """The sections of an environment's YAML file."""

    env: EnvConfig = field(default_factory=EnvConfig)
    # {name, train, heldout} or {name: mixture, members: [...]}: checked by family_from_config
    family: dict[str, Any] = field(default_factory=dict)


def load_config(source: str | os.PathLike | dict | DictConfig, overrides: Sequence[str] = ()) -> DictConfig:
    """An environment's YAML file (or dict) with ``key=value`` overrides, checked against :class:`EnvFileConfig`.

    Example::

        env = make_env(load_config("configs/env_smoke.yaml", ["env.horizon=200"]), seed=0)
    """
    return shared.load_config(EnvFileConfig, source, overrides, see="configs/env_default.yaml")


def env_config(config: DictConfig | dict) -> EnvConfig:
    """The validated :class:`EnvConfig` of ``config["env"]``, read by the shared loader (one wording of errors).

    Example::

        settings = env_config({"env": {"horizon": 200, "interval": 25}})
    """
    raw = config.get("env") if config is not None else None
    loaded = shared.load_config(EnvFileConfig, {"env": raw or {}}, see="configs/env_default.yaml")
    return OmegaConf.to_object(loaded.env).validate("env")


def family_from_config(config: DictConfig | dict, section: str = "family") -> TaskFamily:
    """The family of ``config[section]``: ``{name, train, heldout}``, or ``{name: mixture, members: [...]}``."""
    raw = config.get(section) if config is not None else None
    if raw is None or "name" not in raw:
        raise ValueError(f"`{section}.name` is required: the task family to train on (e.g. mlp_digits).")
    plain = OmegaConf.to_container(raw, resolve=True) if isinstance(raw, DictConfig) else dict(raw)
    if plain["name"] == MixtureFamily.name:
        unknown = [k for k in plain if k not in ("name", "members")]
        if unknown:
            raise unknown_key_error(f"{section}.{unknown[0]}", ("name", "members"), see="configs/ganno_default.yaml")
        members = plain.get("members") or []
        if not isinstance(members, list) or not members:
            raise ValueError(f"`{section}.members` must be a non-empty list of families, got {members!r}.")
        paths = [f"{section}.members[{i}]" for i in range(len(members))]
        return MixtureFamily([family_from_config({path: m if isinstance(m, dict) else {"name": m}}, path)
                              for path, m in zip(paths, members)])
    unknown = [k for k in plain if k not in _FAMILY_KEYS]
    if unknown:
        raise unknown_key_error(f"{section}.{unknown[0]}", _FAMILY_KEYS, see="configs/env_default.yaml")
    return make_family(plain["name"], train=plain.get("train"), heldout=plain.get("heldout"), prefix=section,
                       lr_sampling=plain.get("lr_sampling", "ranges"))


def make_env(config: DictConfig | dict, seed: int = 0, split: str | None = None) -> LayerwiseLREnv:
    """A :class:`LayerwiseLREnv` from a loaded config (``split`` overrides ``env.split``)."""
    check_sections(config)
    settings = env_config(config)
    if split is not None:
        settings.split = split
        settings.validate()
    check_task_pool(config, settings)
    family = family_from_config(config)
    check_runnable(settings, family)
    return LayerwiseLREnv(family, settings, seed=seed)


def check_runnable(settings: EnvConfig, family: TaskFamily, prefix: str = "env") -> None:
    """Raise before any episode runs where ``settings`` cannot run ``family``'s tasks on this machine.

    The env itself finds these only at a reset (a task with more layers than ``max_agents``) or
    inside the inner training (a device torch cannot use), as a traceback deep in a worker.

    Raises:
        ValueError: If ``max_agents`` is below the most layers a task of ``family`` (``split``) has,
            or ``device`` is not a device string or names a CUDA/MPS device this torch cannot use.
    """
    if settings.max_agents is not None:
        # an upper bound some task reaches; built on the meta device, so cheap for the registered families
        most = family.max_layers(settings.split)
        if settings.max_agents < most:
            raise ValueError(f"`{prefix}.max_agents` is {settings.max_agents}, but tasks of family "
                             f"{family.name!r} ({prefix}.split={settings.split!r}) have up to {most} layers, one agent "
                             f"each; set `{prefix}.max_agents` to at least {most}, or null for the family's bound.")
    try:
        device = torch.device(settings.device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"`{prefix}.device` must be a torch device such as 'cpu' or 'cuda:0', got "
                         f"{settings.device!r} ({err}).") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            found = "no CUDA device" if count == 0 else f"{count} CUDA device(s)"
            build = "" if torch.backends.cuda.is_built() else " (this torch is built without CUDA)"
            raise ValueError(f"`{prefix}.device` is {settings.device!r}, but torch sees {found}{build}; set "
                             f"`{prefix}.device: cpu`, or run where that GPU is available.")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"`{prefix}.device` is {settings.device!r}, but MPS is not available to this torch; set "
                         f"`{prefix}.device: cpu`.")


def check_task_pool(config: DictConfig | dict, settings: EnvConfig | None = None) -> None:
    """Where ``env.task_pool`` is set, raise unless the pool was built for this ``family`` section and env.

    Raises:
        ValueError: Naming the first setting that differs (see :meth:`TaskPool.check_matches`).
    """
    settings = settings or env_config(config)
    if settings.task_pool is None:
        return
    family = config["family"]
    plain = OmegaConf.to_container(family, resolve=True) if isinstance(family, DictConfig) else family
    matched = {k: getattr(settings, k) for k in MATCHED_ENV_KEYS}
    pool = TaskPool.load(settings.task_pool)
    pool.check_matches(plain, matched)
    if settings.long_run_prob > 0:  # validate() asks for the long runs' pool then
        long_pool = TaskPool.load(settings.long_task_pool, "env.long_task_pool")
        long_pool.check_matches(plain, {**matched, "horizon": settings.long_horizon}, key="env.long_task_pool",
                                horizon_key="long_horizon")
        # a long run starts where a short run of its task starts: the short pool must hold every long task
        missing = [t.seed for t in long_pool.tasks if t.seed not in pool.by_seed]
        if missing:
            raise ValueError(f"`env.long_task_pool` '{long_pool.path}' has tasks (seeds {missing[:5]}, {len(missing)} "
                             f"in all) that `env.task_pool` '{pool.path}' lacks; build it over seeds of that pool "
                             f"(`first_seed`, `tasks`).")


def check_sections(config: DictConfig | dict, allowed: Sequence[str] = _SECTIONS) -> None:
    """Reject a top-level section other than ``allowed`` (``env`` and ``family``), naming the closest."""
    unknown = [k for k in config if k not in allowed]
    if unknown:
        raise unknown_key_error(str(unknown[0]), allowed, see="configs/env_default.yaml")
