"""Short scored runs, written once for every method (agent evaluation, rule search, BOIL, PBT).

- :func:`~ganno_lightning.trials.trainer.short_run_trainer`: a quiet one-device Trainer that
  validates every N steps and writes nothing of its own.
- :class:`~ganno_lightning.trials.curve.LearningCurve`: the validation curve as
  ``(global_step, value)`` points, and the stop of a run that diverged (EarlyStopping's
  ``check_finite`` and ``divergence_threshold``, or a multiple of the first training loss).
- :func:`~ganno_lightning.trials.preflight.preflight_fit`: the check every tuner runs before its
  first trial: build the task, fit a batch or two in this process, and the monitored metric must be
  logged; one ValueError naming the config key at fault otherwise.
- :class:`~ganno_lightning.trials.pool.JobPool`: jobs in ``spawn``-ed worker processes; a job whose
  worker dies is run again, results go to a JSON-lines log as each job ends, a rerun resumes.

Public names are imported on first use, so the Lightning-free pool does not import Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ganno_lightning._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".trainer": ["short_run_trainer"],
    ".curve": ["LearningCurve"],
    ".preflight": ["preflight_fit"],
    ".pool": ["JobFailure", "JobPool", "finished_record", "read_log"],
})

if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from ganno_lightning.trials.curve import LearningCurve
    from ganno_lightning.trials.pool import JobFailure, JobPool, finished_record, read_log
    from ganno_lightning.trials.preflight import preflight_fit
    from ganno_lightning.trials.trainer import short_run_trainer
