"""Population Based Training for Lightning: a Lightning-free core, a callback, and population runners.

Names are imported lazily, so member processes that only touch the store do not import Lightning.

Example::

    from lightning.pytorch import Trainer
    from ganno_lightning.pbt import PBTCallback

    pbt = PBTCallback("runs/pbt", member=0, hyperparameters={"lr": {"low": 1e-4, "high": 0.1, "log": True}})
    trainer = Trainer(max_epochs=20, callbacks=[pbt])
"""

from ganno_lightning._lazy import lazy_exports

_EXPORTS = {
    # the search space and the setters are shared by every tuner: they live in ganno_lightning.tuning
    "Hyperparameter": "ganno_lightning.tuning.space",
    "CallbackAttribute": "ganno_lightning.tuning.setters",
    "FunctionSetter": "ganno_lightning.tuning.setters",
    "ModuleAttribute": "ganno_lightning.tuning.setters",
    "BinaryTournament": "core",
    "ExploitDecision": "core",
    "Explorer": "core",
    "LineageEvent": "core",
    "NoExploit": "core",
    "PBTStrategy": "core",
    "ReadyCriterion": "core",
    "TruncationSelection": "core",
    "PopulationStore": "store",
    "PBTCallback": "callback",
    "PopulationConfig": "runner",
    "run_population": "runner",
    "plot_schedules": "plot",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, {name: module if "." in module else f"{__name__}.{module}"
                                                    for name, module in _EXPORTS.items()})
