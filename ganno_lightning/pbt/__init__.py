"""Population Based Training for Lightning: a Lightning-free core, a callback, and population runners.

Names are imported lazily, so member processes that only touch the store do not import Lightning.

Example::

    from lightning.pytorch import Trainer
    from ganno_lightning.pbt import PBTCallback

    pbt = PBTCallback("runs/pbt", member=0, hyperparameters={"lr": {"low": 1e-4, "high": 0.1, "log": True}})
    trainer = Trainer(max_epochs=20, callbacks=[pbt])
"""

from ganno_lightning._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    # the search space and the setters are shared by every tuner: they live in ganno_lightning.tuning
    "ganno_lightning.tuning.space": ["Hyperparameter"],
    "ganno_lightning.tuning.setters": ["CallbackAttribute", "FunctionSetter", "ModuleAttribute"],
    ".core": ["BinaryTournament", "ExploitDecision", "Explorer", "LineageEvent", "NoExploit", "PBTStrategy",
              "ReadyCriterion", "TruncationSelection"],
    ".store": ["PopulationStore"],
    ".callback": ["PBTCallback"],
    ".runner": ["PopulationConfig", "run_population"],
    ".plot": ["plot_schedules"],
})
