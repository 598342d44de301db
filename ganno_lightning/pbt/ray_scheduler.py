"""Ray Tune's PBT scheduler, made safe to restore: the scheduler ``ganno-pbt-ray`` runs a population with.

Ray saves a Tune experiment's trials but not its scheduler's state. Restored,
``PopulationBasedTraining(synch=True)`` counts its sync points from the first one again (Ray 2.x): its first
perturbation sets the next sync point to the furthest trial's time, a member that copied that trial has
reached it too, and every member then waits, paused, for a sync point no one is below (Tune reports "No
trial is running"). :class:`RestorablePopulationBasedTraining` sets the next sync point past every restored
trial's last report instead. Asynchronous PBT keeps no such clock and is unchanged.

Importing this module needs Ray Tune: ``pip install "ray[tune]"``.

Example::

    from ray import tune
    from ganno_lightning.pbt.ray_scheduler import RestorablePopulationBasedTraining

    scheduler = RestorablePopulationBasedTraining(
        time_attr="training_iteration", perturbation_interval=1, synch=True,
        hyperparam_mutations={"lr": tune.loguniform(1e-4, 1e-1)},
    )
"""

from __future__ import annotations

from typing import Any

try:
    from ray.tune.schedulers import PopulationBasedTraining
except ImportError as err:  # pragma: no cover - exercised only without ray
    raise ImportError('RestorablePopulationBasedTraining needs Ray Tune: `pip install "ray[tune]>=2.9"`.') from err

__all__ = ["RestorablePopulationBasedTraining"]


class RestorablePopulationBasedTraining(PopulationBasedTraining):
    """Ray's ``PopulationBasedTraining`` whose synchronous sync points survive a restore (same arguments).

    A trial added with a last report (a restored one) moves the next sync point past that report, so that
    every member still below it trains up to it before the population is ranked again.
    """

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        # the saved report itself: `trial.last_result` would ask a new trial's actor for default values
        reached = trial.run_metadata.last_result.get(self._time_attr)
        if self._synch and reached is not None:
            self._next_perturbation_sync = max(self._next_perturbation_sync, reached + self._perturbation_interval)
