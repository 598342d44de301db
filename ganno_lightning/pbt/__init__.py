"""Population Based Training for Lightning: a Lightning-free core, a callback, and population runners.

Names are imported lazily, so member processes that only touch the store do not import Lightning.

Example::

    from lightning.pytorch import Trainer
    from ganno_lightning.pbt import PBTCallback

    pbt = PBTCallback("runs/pbt", member=0, hyperparameters={"lr": {"low": 1e-4, "high": 0.1, "log": True}})
    trainer = Trainer(max_epochs=20, callbacks=[pbt])
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "BinaryTournament": "core",
    "Decision": "core",
    "Explorer": "core",
    "Hyperparameter": "core",
    "LineageEvent": "core",
    "NoExploit": "core",
    "PBTStrategy": "core",
    "ReadyCriterion": "core",
    "TruncationSelection": "core",
    "PopulationStore": "store",
    "atomic_file": "store",
    "CallbackAttribute": "setters",
    "FunctionSetter": "setters",
    "ModuleAttribute": "setters",
    "PBTCallback": "callback",
    "PopulationConfig": "runner",
    "run_population": "runner",
    "plot_schedules": "plot",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(f"ganno_lightning.pbt.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ganno_lightning.pbt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
