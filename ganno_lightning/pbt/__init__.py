"""Population Based Training for Lightning: a Lightning-free core, a callback, and runners.

Example::

    from ganno_lightning.pbt import PBTCallback
    trainer = Trainer(callbacks=[PBTCallback("runs/pbt", member=0, hyperparameters={"lr": {"low": 1e-4, "high": 0.1, "log": True}})])
"""

from ganno_lightning.pbt.callback import PBTCallback
from ganno_lightning.pbt.core import (
    BinaryTournament,
    Decision,
    Explorer,
    Hyperparameter,
    LineageEvent,
    NoExploit,
    PBTStrategy,
    ReadyCriterion,
    TruncationSelection,
)
from ganno_lightning.pbt.setters import CallbackAttribute, FunctionSetter, ModuleAttribute
from ganno_lightning.pbt.store import PopulationStore, atomic_file

__all__ = [
    "BinaryTournament",
    "CallbackAttribute",
    "Decision",
    "Explorer",
    "FunctionSetter",
    "Hyperparameter",
    "LineageEvent",
    "ModuleAttribute",
    "NoExploit",
    "PBTCallback",
    "PBTStrategy",
    "PopulationStore",
    "ReadyCriterion",
    "TruncationSelection",
    "atomic_file",
]
