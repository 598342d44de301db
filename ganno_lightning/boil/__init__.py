"""BOIL: Bayesian optimisation over learning curves (Nguyen, Schulze & Osborne, NeurIPS 2020).

A Lightning-free core (:mod:`~ganno_lightning.boil.core`) suggests a configuration and a training
length from every trial's learning curve; around it, a study's SQLite store, a tuner that runs
trials in worker processes or by ask/tell, the Lightning callback that records each trial's curve,
a Ray Tune searcher, and the report. Names are imported lazily, so reading a study's store does not
import Lightning or BoTorch.

Example::

    from ganno_lightning.boil import BOILTuner

    if __name__ == "__main__":  # trials train in spawned processes that import this script
        tuner = BOILTuner("ganno_lightning.examples.digits:digits_task",
                          space={"lr": {"low": 1e-3, "high": 0.3, "log": True}, "batch_size": {"choices": [32, 64, 128]}},
                          epochs=(1, 20), budget_epochs=100, study_dir="runs/boil")
        result = tuner.run()
"""

from typing import TYPE_CHECKING

from ganno_lightning._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".observations": ["Observation", "Suggestion", "TRIAL_STATES"],
    ".core": ["BOILCore"],
    ".store": ["BOILStore", "CurvePoint", "TrialRecord"],
    ".tuner": ["BOILResult", "BOILTrial", "BOILTuner", "TrialFailuresError"],
    ".callback": ["BOILCallback"],
    ".report": ["write_report"],
    ".ray_tune": ["BOILSearcher"],
})

if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from ganno_lightning.boil.callback import BOILCallback
    from ganno_lightning.boil.core import BOILCore
    from ganno_lightning.boil.observations import TRIAL_STATES, Observation, Suggestion
    from ganno_lightning.boil.ray_tune import BOILSearcher
    from ganno_lightning.boil.report import write_report
    from ganno_lightning.boil.store import BOILStore, CurvePoint, TrialRecord
    from ganno_lightning.boil.tuner import BOILResult, BOILTrial, BOILTuner, TrialFailuresError
