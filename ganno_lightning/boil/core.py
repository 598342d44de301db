"""BOIL, free of Lightning: from the trials so far to the next ``(configuration, epochs)``.

:class:`BOILCore` ties the pieces of Nguyen, Schulze & Osborne (NeurIPS 2020) together, each in its
own module:

- :mod:`~ganno_lightning.boil.compression`: curves -> scores (logistic-weighted mean, ``m0``, ``g0``);
- :mod:`~ganno_lightning.boil.model`: the GP over ``[x, t / T_max]``, fitted jointly with ``(m0, g0)``;
- :mod:`~ganno_lightning.boil.virtual`: curve prefixes as extra observations where the GP is unsure;
- :mod:`~ganno_lightning.boil.cost`: the price of ``(x, t)``: seconds, or epochs under an epochs budget;
- :mod:`~ganno_lightning.boil.acquisition`: ``log EI - log cost``, maximised over ``(x, t)``.

Around them, this module adds what a tuner running several trials at once needs:

- the first ``initial_random`` trials (default 3, as in the authors' code) are drawn uniformly,
  trained for ``T_max`` (as the authors' initial design does);
- pending trials (queued or running, passed as ``pending``) enter as a *kriging believer*: the GP is
  conditioned on its own posterior mean at their ``(x, max_epochs)`` (with the ``"target"`` and
  ``"lookahead"`` gains, also at ``(x, T_max)``, where the acquisition judges ``x``), so it does not
  suggest them again;
- when the GP fit fails, the previous fit's hyperparameters are reused on the current data; when that
  fails too, the suggestion is random, and ``info["reason"]`` (also logged) says why.

These three are additions, not deviations: the paper's algorithm is sequential, assumes fits
succeed, and its code also starts from random configurations trained for ``T_max``.

Deviations from the paper and its code (github.com/ntienvu/BOIL, ``boil.py``), each an option:

- ``cost_unit``: the acquisition prices a trial in the unit its budget counts. ``"seconds"`` (the
  paper: a regression on measured seconds); ``"epochs"`` (what :class:`~ganno_lightning.boil.tuner.BOILTuner`
  uses with ``budget_epochs``): a trial costs its epochs, nothing fitted.
- ``t_floor``: the acquisition never suggests fewer than ``ceil(t_floor * T_max)`` epochs (nor fewer
  than ``t_min``). The paper lets ``t`` go to 0. On the digits tuning task (20 Sobol configurations,
  T_max 30), the rank correlation between the validation loss after ``k`` epochs and after 30 was 0.10
  at ``k = 1``, 0.37 at 2, 0.54 at 3, 0.75 at 5 and 0.88 at 10: a 1-epoch trial says almost nothing
  about the score that matters, yet costs a GP refit, and with a cheap enough price EI kept buying
  them (a median of 1 to 6 epochs per trial, 50 to 250 trials in 450 epochs). Default 0.2 (6 of 30
  epochs; it was 0.1): the length choice is nearly bang-bang (see :mod:`~ganno_lightning.boil.acquisition`),
  and at 0.1 runs of 12 to 33 consecutive 3-epoch trials took BOIL's own time to 12-15% of some
  benchmark studies; at 0.2 the benchmark's test losses were unchanged or lower (issue #19).
- ``max_overhead_share`` (default None: off): the shortest suggested training also rises so that one
  suggestion's own time (GP fit and acquisition: the mean ``Observation.suggest_seconds`` of the last
  few trials) is at most this share of itself plus the trial it starts (so of the study),
  ``t >= overhead / seconds_per_epoch * (1 - share) / share``. The paper prices only training, so on a
  task whose epochs take milliseconds a 6-epoch trial costs less than choosing it: on the benchmark's
  diabetes task (a study trains 450 epochs in 9 s) one study bought 18 six-epoch trials in a row and
  BOIL's own time reached 14% of the study. Both times are read from the observations, so a
  suggestion stays a function of its arguments, but it depends on timings (as with
  ``cost_unit="seconds"``). Off by default: at 0.1 on the dev seeds 10-29 it cut the worst diabetes
  share from 10.3% to 8.7% and won 38 of 60 paired seeds against ASHA with TPE at half the budget,
  the default 40 (``benchmarks/results/boil_dev_20_seeds.md``; issue #19).
- ``refit_every``: the GP's hyperparameters and ``(m0, g0)`` are optimised when at least this many
  trials have been added since the last full fit, and reused on the current data in between (the
  authors optimise them every ``2 d`` iterations, from 20 random starts; here warm-started from the last
  fit, for at most ``fit_maxiter`` L-BFGS iterations, default 20). Default 3.
- ``gain``: what the acquisition values in a trial ``(x, t)`` (the paper: the EI of the score at ``t``).
  ``"target"`` (default): the EI of the score at ``T_max`` times the squared kernel correlation between
  the scores at ``t`` and ``T_max``; ``"lookahead"``: the expected improvement of the posterior mean at
  ``(x, T_max)`` once ``(x, t)`` is observed. See :mod:`~ganno_lightning.boil.acquisition`.
- ``t_persistence``: the GP's kernel over ``t`` has a learned constant share
  (:class:`~ganno_lightning.boil.model.PersistentLengthKernel`; the paper: the Matern/RBF factor alone).
- ``log_metric`` (default False: the metric itself, as the issue asks): compress ``log`` of a positive
  metric. On the dev seeds 10-29 it won 45 of 60 paired studies against ASHA with TPE at half the budget
  under the mean of 5 retrainings, the default 44
  (``benchmarks/results/boil_log_metric_and_stopping_dev.md``; issue #19).
- ``t_trend``: the GP's prior mean rises with ``t`` (:class:`~ganno_lightning.boil.model.LengthTrendMean`);
  see :mod:`~ganno_lightning.boil.model`.
- :meth:`BOILCore.recommend`: the configuration to use is the tried one whose score the GP predicts
  best at ``T_max`` (the authors' code reports the best observed score). A best observed value is
  the minimum of hundreds of noisy validations, often reached early in a trial that then overfits;
  the model reads every trial's whole curve. On the benchmark's dev seeds (10-19, three tasks) it won
  22 of 30 paired seeds against ASHA with TPE at half the budget, the lowest validation loss at any
  epoch 20, and Optuna's rule (lowest at the deepest epoch reached) 20 (issue #19). ``recommend_kappa``
  (default 0) makes it pessimistic: the tried configuration with the best ``mean - kappa * sd`` at
  ``T_max``, so one seen for a few epochs of a running trial must look better by its uncertainty. At 1,
  on the same 60 dev studies (seeds 10-29), its pick at half the budget differed in 24 and scored a
  better test loss in 9 of them, worse in 15: not the default.

Every call is deterministic given the seed, the arguments and the calls before it (fits warm-start
from the previous one). Nothing is kept between calls but that previous fit and how many trials it
saw: observations, virtual observations and the cost model are re-derived every time.

Example::

    >>> core = BOILCore(dims=1, t_max=8, mode="min", initial_random=2, seed=0)
    >>> history = []
    >>> for _ in range(4):
    ...     s = core.suggest(history)
    ...     loss = [(e, (s.x[0] - 0.3) ** 2 + 1.0 / e) for e in range(1, s.max_epochs + 1)]
    ...     history.append(Observation(x=s.x, max_epochs=s.max_epochs, curve=loss, seconds=0.1 * s.max_epochs))
    >>> s.info["source"], sorted(core.last_fit)[:3]
    ('acquisition', ['g0', 'length_persistence', 'lengthscale_t'])
    >>> core.posterior_mean(torch.tensor([[0.3, 1.0]])).shape
    torch.Size([1])
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ganno_lightning.boil.acquisition import GAINS, CostAwareLogEI, incumbent, maximise
from ganno_lightning.boil.compression import NormalisedCurves, epoch_weights
from ganno_lightning.boil.cost import CostModel
from ganno_lightning.boil.model import (
    FIT_MAXITER,
    G0_GRID,
    M0_GRID,
    CurveGPFit,
    VirtualSettings,
    fit_curve_gp,
    refit_with_previous,
)
from ganno_lightning.boil.observations import SUGGEST_SECONDS, Observation, Suggestion

__all__ = ["BOILCore"]

log = logging.getLogger(__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class BOILCore:
    """Bayesian optimisation over learning curves: suggests a configuration and a training length.

    Args:
        dims: configuration dimensions ``d`` (the search space's unit cube).
        t_max: the longest training, in epochs (``T_max``).
        t_min: the shortest training the acquisition may suggest, in epochs.
        mode: ``"min"`` when the monitored metric improves downwards (loss), ``"max"`` upwards.
        seed: makes every random draw reproducible.
        initial_random: trials drawn uniformly (trained for ``t_max``) before the GP takes over;
            default 3 (the authors'), so the initial design spends ``3 t_max`` epochs.
        virtual_observations: add curve prefixes as extra GP observations (off: an ablation).
        learn_compression: learn ``(m0, g0)`` by marginal likelihood; off keeps ``m0`` and ``g0``
            fixed (an ablation).
        log_metric: compress the logarithm of a positive metric (a loss), not the metric itself
            (:mod:`~ganno_lightning.boil.compression`).
        m0: the compression midpoint (position ``epoch / t_max`` of half weight); the start when learned.
        g0: the compression growth; the start when learned.
        fixed_t: always train for ``t_max`` (an ablation: BO on final scores, no length trade-off).
        cost_cooling: fade the cost term as the budget is spent: ``weight = 1 - spent_fraction``.
        cost_unit: what a trial costs: ``"seconds"`` (fitted on the measured seconds, the paper) or
            ``"epochs"`` (its epochs: the price under an epochs budget).
        t_floor: the shortest training the acquisition may suggest, as a fraction of ``t_max`` (rounded
            up, and at least ``t_min``); 0 leaves ``t_min`` alone (the paper).
        max_overhead_share: keep a suggestion's own seconds (fit and acquisition) at most this share of
            themselves plus the trial it starts, by raising the shortest suggested training (``None``: no
            bound). Read from ``Observation.suggest_seconds``: a caller driving the core itself passes each
            suggestion's ``info["suggest_seconds"]`` there (the tuner's store and the Ray searcher do).
        refit_every: optimise the GP's hyperparameters (and ``(m0, g0)``) once this many trials were
            added since the last full fit; in between, reuse them on the current data. 1: every call.
        t_trend: give the GP a prior mean with a trend in ``t`` (off: a constant mean).
        t_persistence: the GP's kernel over ``t`` has a learned constant share, the part of a score every
            training length shares (:class:`~ganno_lightning.boil.model.PersistentLengthKernel`); off:
            Matern alone (the paper's product kernel).
        gain: what a trial ``(x, t)`` is judged by (:mod:`~ganno_lightning.boil.acquisition`): ``"target"``,
            the EI at ``(x, t_max)`` times the squared kernel correlation between ``t`` and ``t_max``;
            ``"lookahead"``, the expected improvement of the posterior mean at ``(x, t_max)`` once ``(x, t)``
            is observed; ``"curve"``, ``EI(x, t)`` (the paper).
        recommend_kappa: :meth:`recommend` picks the best ``mean - recommend_kappa * sd`` of the score at
            ``t_max`` (0: the best mean).
        max_virtual_per_trial: most virtual observations at one trial's configuration.
        max_virtual_total: most virtual observations in all.
        virtual_variance_threshold: add a virtual observation only where the GP's posterior variance
            (standardised scores) is at least this.
        num_restarts: local searches when maximising the acquisition, from the best raw samples.
        raw_samples: quasi-random points scored to choose those starts.
        fit_maxiter: most L-BFGS iterations per GP fit.

    Raises:
        ValueError: if an argument is out of range; the message names it, the value and the fix.

    Example::

        core = BOILCore(dims=2, t_max=20, mode="min", seed=0)
        first = core.suggest([])                        # random: the initial design
        trial = Observation(x=first.x, max_epochs=first.max_epochs, curve=[(1, 0.9), (2, 0.7)],
                            seconds=4.0, status="running")
        core.suggest([trial], pending=[trial], spent_fraction=0.1)   # still random: 1 of 3 seen
    """

    def __init__(
        self,
        dims: int,
        t_max: int,
        t_min: int = 1,
        mode: str = "min",
        seed: int = 0,
        initial_random: int = 3,
        virtual_observations: bool = True,
        learn_compression: bool = True,
        log_metric: bool = False,
        m0: float = 0.5,
        g0: float = 12.0,
        fixed_t: bool = False,
        cost_cooling: bool = False,
        cost_unit: str = "seconds",
        t_floor: float = 0.2,
        max_overhead_share: float | None = None,
        refit_every: int = 3,
        t_trend: bool = True,
        t_persistence: bool = False,
        gain: str = "target",
        recommend_kappa: float = 0.0,
        max_virtual_per_trial: int = 10,
        max_virtual_total: int = 100,
        virtual_variance_threshold: float = 0.01,
        num_restarts: int = 4,
        raw_samples: int = 512,
        fit_maxiter: int = FIT_MAXITER,
    ) -> None:
        if not _is_int(dims) or dims < 1:
            raise ValueError(f"`dims` must be a positive int (the search space's dimensions), got {dims!r}.")
        if not _is_int(t_max) or t_max < 1:
            raise ValueError(f"`t_max` must be a positive int (the longest training in epochs), got {t_max!r}.")
        if not _is_int(t_min) or not 1 <= t_min <= t_max:
            raise ValueError(f"`t_min` must be an int in [1, t_max={t_max}], got {t_min!r}.")
        if mode not in ("min", "max"):
            raise ValueError(f"`mode` must be 'min' or 'max', got {mode!r}.")
        if not _is_int(seed):
            raise ValueError(f"`seed` must be an int, got {seed!r}.")
        if not _is_int(initial_random) or initial_random < 1:
            raise ValueError(f"`initial_random` must be a positive int (random trials before the GP), got {initial_random!r}.")
        for name, flag in (("virtual_observations", virtual_observations), ("learn_compression", learn_compression),
                           ("log_metric", log_metric),
                           ("fixed_t", fixed_t), ("cost_cooling", cost_cooling), ("t_trend", t_trend),
                           ("t_persistence", t_persistence)):
            if not isinstance(flag, bool):
                raise ValueError(f"`{name}` must be True or False, got {flag!r}.")
        if gain not in GAINS:
            raise ValueError(f"`gain` must be one of {', '.join(map(repr, GAINS))}, got {gain!r}.")
        if cost_unit not in ("seconds", "epochs"):
            raise ValueError(f"`cost_unit` must be 'seconds' or 'epochs' (what the budget counts), got {cost_unit!r}.")
        if isinstance(t_floor, bool) or not isinstance(t_floor, (int, float)) or not 0.0 <= t_floor <= 1.0:
            raise ValueError(f"`t_floor` must be a number in [0, 1] (a fraction of t_max; 0: no floor), got {t_floor!r}.")
        if max_overhead_share is not None and (isinstance(max_overhead_share, bool)
                                               or not isinstance(max_overhead_share, (int, float))
                                               or not 0.0 < max_overhead_share <= 1.0):
            raise ValueError(f"`max_overhead_share` must be a number in (0, 1] (e.g. 0.1: BOIL's own time at most 10% "
                             f"of itself plus a trial) or None (no bound), got {max_overhead_share!r}.")
        if isinstance(recommend_kappa, bool) or not isinstance(recommend_kappa, (int, float)) or not (
                math.isfinite(recommend_kappa) and recommend_kappa >= 0):
            raise ValueError(f"`recommend_kappa` must be a non-negative number (0: recommend the best mean), "
                             f"got {recommend_kappa!r}.")
        if not _is_int(refit_every) or refit_every < 1:
            raise ValueError(f"`refit_every` must be a positive int (1 optimises the GP at every call), got {refit_every!r}.")
        if not isinstance(m0, (int, float)) or not 0.0 <= m0 <= 1.0:
            raise ValueError(f"`m0` must be a number in [0, 1] (a position epoch / t_max), got {m0!r}.")
        if not isinstance(g0, (int, float)) or not (math.isfinite(g0) and g0 > 0):
            raise ValueError(f"`g0` must be a positive finite number (e.g. 12.0), got {g0!r}.")
        for name, value in (("max_virtual_per_trial", max_virtual_per_trial), ("max_virtual_total", max_virtual_total)):
            if not _is_int(value) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative int (0 adds no virtual observations), got {value!r}.")
        if not isinstance(virtual_variance_threshold, (int, float)) or not (virtual_variance_threshold >= 0):
            raise ValueError(f"`virtual_variance_threshold` must be a non-negative number, got {virtual_variance_threshold!r}.")
        if not _is_int(num_restarts) or num_restarts < 1:
            raise ValueError(f"`num_restarts` must be a positive int, got {num_restarts!r}.")
        if not _is_int(raw_samples) or raw_samples < num_restarts:
            raise ValueError(f"`raw_samples` must be an int >= num_restarts ({num_restarts}), got {raw_samples!r}.")
        if not _is_int(fit_maxiter) or fit_maxiter < 1:
            raise ValueError(f"`fit_maxiter` must be a positive int, got {fit_maxiter!r}.")
        self.dims, self.t_max, self.t_min, self.mode, self.seed = dims, t_max, t_min, mode, seed
        self.cost_unit, self.t_floor, self.refit_every, self.t_trend = cost_unit, float(t_floor), refit_every, t_trend
        self.t_persistence, self.gain, self.recommend_kappa = t_persistence, gain, float(recommend_kappa)
        self.max_overhead_share = None if max_overhead_share is None else float(max_overhead_share)
        #: The shortest training the acquisition suggests: ``t_min``, raised to ``ceil(t_floor * t_max)``; with
        #: ``max_overhead_share``, raised further per call (``Suggestion.info["t_shortest"]``).
        self.t_shortest = min(t_max, max(t_min, math.ceil(self.t_floor * t_max - 1e-9)))
        self._full_fit_trials = 0  # trials with data at the last full (optimised) fit
        self.initial_random = initial_random
        self.learn_compression, self.fixed_t, self.cost_cooling = learn_compression, fixed_t, cost_cooling
        self.log_metric = log_metric
        self.m0, self.g0 = float(m0), float(g0)
        self.virtual = (VirtualSettings(per_trial=max_virtual_per_trial, total=max_virtual_total,
                                        variance_threshold=float(virtual_variance_threshold))
                        if virtual_observations else None)
        self.num_restarts, self.raw_samples, self.fit_maxiter = num_restarts, raw_samples, fit_maxiter
        self._fit: CurveGPFit | None = None
        #: Diagnostics of the latest GP fit (``m0``, ``g0``, lengthscales, noise, mll, ``n_virtual``,
        #: seconds, source); None before the first.
        self.last_fit: dict[str, Any] | None = None

    # -- inputs -----------------------------------------------------------------------------------

    def _check(self, trials: Sequence[Observation], name: str) -> None:
        for i, trial in enumerate(trials):
            if not isinstance(trial, Observation):
                raise ValueError(f"`{name}[{i}]` must be an Observation, got {type(trial).__name__}.")
            x = list(trial.x)
            if len(x) != self.dims or not all(isinstance(v, (int, float)) and -1e-9 <= v <= 1 + 1e-9 for v in x):
                raise ValueError(f"`{name}[{i}].x` must be {self.dims} numbers in [0, 1] (a point of the unit cube), "
                                 f"got {trial.x!r}.")
            if not _is_int(trial.max_epochs) or not 1 <= trial.max_epochs <= self.t_max:
                raise ValueError(f"`{name}[{i}].max_epochs` must be an int in [1, t_max={self.t_max}], "
                                 f"got {trial.max_epochs!r}.")
            if any(not 1 <= int(epoch) <= self.t_max for epoch, _ in trial.curve):
                raise ValueError(f"`{name}[{i}].curve` epochs must lie in [1, t_max={self.t_max}], "
                                 f"got {[e for e, _ in trial.curve]}.")

    # -- suggestions ------------------------------------------------------------------------------

    def _random(self, draw: int, reason: str) -> Suggestion:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + draw)
        x = torch.rand(self.dims, generator=generator, dtype=torch.float64).tolist()
        return Suggestion(x=x, max_epochs=self.t_max, info={"source": "random", "reason": reason})

    def suggest(self, observations: Sequence[Observation], pending: Sequence[Observation] = (),
                spent_fraction: float = 0.0) -> Suggestion:
        """The next trial to start.

        Args:
            observations: trials with their curves so far (any status). Every trial with at least
                one point is data at ``(x, epochs done)``; trials without points are ignored.
            pending: queued or running trials, believed to score the GP's mean at
                ``(x, max_epochs)`` (their curves are not read; pass running curves in ``observations``).
            spent_fraction: the share of the tuning budget already used, in ``[0, 1]`` (read only
                with ``cost_cooling``).

        Raises:
            ValueError: if a trial's ``x``, ``max_epochs`` or epochs do not fit this core, or
                ``spent_fraction`` is outside ``[0, 1]``.
        """
        start = time.perf_counter()
        observations, pending = list(observations), list(pending)
        self._check(observations, "observations")
        self._check(pending, "pending")
        if not isinstance(spent_fraction, (int, float)) or not 0.0 <= spent_fraction <= 1.0:
            raise ValueError(f"`spent_fraction` must be a number in [0, 1], got {spent_fraction!r}.")
        trials = [*observations, *(p for p in pending if p not in observations)]  # a running trial is in both
        started = len(trials)
        if started < self.initial_random:
            return self._random(started, f"initial random trial {started + 1} of {self.initial_random}")
        data = [o for o in observations if o.curve]
        if len(data) < 2:
            return self._random(started, f"{len(data)} trial(s) with a point: the GP needs 2")
        # A private RNG stream per call: deterministic, and the caller's global torch RNG is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + started)
            fit, failure = self._fit_model(data)
            if fit is None:
                log.warning("BOILCore: suggesting at random: %s", failure)
                return self._random(started, failure)
            try:
                shortest = self._shortest(trials)
                suggestion = self._acquire(fit, data, pending, spent_fraction, shortest)
            except Exception as err:  # noqa: BLE001 - a failed optimiser must not stop the tuner
                reason = f"acquisition optimisation failed: {type(err).__name__}: {err}"
                log.warning("BOILCore: suggesting at random: %s", reason)
                return self._random(started, reason)
        suggestion.info.update({"fit_source": fit.source, "fit_seconds": fit.seconds,
                                SUGGEST_SECONDS: time.perf_counter() - start})
        if failure:
            suggestion.info["fit_error"] = failure
        return suggestion

    def _gp_inputs(self, data: Sequence[Observation]) -> tuple[Tensor, NormalisedCurves]:
        """The GP's configurations (unit cube) and normalised curves of trials with points."""
        x = torch.tensor([o.x for o in data], dtype=torch.float64).clamp(0.0, 1.0)
        return x, NormalisedCurves.from_points([o.curve for o in data], self.t_max, self.mode, self.log_metric)

    def _full_fit(self, x: Tensor, curves: NormalisedCurves, m0: float, g0: float,
                  previous: CurveGPFit | None = None) -> CurveGPFit:
        """Optimise the GP's hyperparameters (and ``(m0, g0)`` when learned) on ``x`` and ``curves``."""
        return fit_curve_gp(x, curves, m0, g0, grid=(M0_GRID, G0_GRID) if self.learn_compression else None,
                            virtual=self.virtual, previous=previous, maxiter=self.fit_maxiter, t_trend=self.t_trend,
                            t_persistence=self.t_persistence)

    def _fit_model(self, data: list[Observation]) -> tuple[CurveGPFit | None, str]:
        """A fresh fit, else the previous hyperparameters on today's data, else None and why."""
        x, curves = self._gp_inputs(data)
        m0, g0 = (self._fit.m0, self._fit.g0) if self._fit is not None and self.learn_compression else (self.m0, self.g0)
        if self._fit is not None and self.refit_every > 1 and len(data) - self._full_fit_trials < self.refit_every:
            # Between full fits: the last hyperparameters on today's data (a Cholesky, no optimiser).
            try:
                fit = refit_with_previous(x, curves, self._fit, self.virtual, source="reused")
            except Exception:  # noqa: BLE001 - fall through to a full fit
                fit = None
            if fit is not None:
                self._fit = fit
                self.last_fit = fit.diagnostics()
                return fit, ""
        try:
            fit = self._full_fit(x, curves, m0, g0, previous=self._fit)
            self._full_fit_trials = len(data)
            failure = ""
        except Exception as err:  # noqa: BLE001 - FitError or any numerical error: fall back below
            failure = f"GP fit failed ({type(err).__name__}: {err})"
            if self._fit is None:
                return None, failure + "; no previous fit to fall back on"
            log.warning("BOILCore: %s; reusing the previous fit's hyperparameters.", failure)
            try:
                fit = refit_with_previous(x, curves, self._fit, self.virtual)
            except Exception as err2:  # noqa: BLE001
                return None, f"{failure}; the previous fit's hyperparameters failed too ({type(err2).__name__}: {err2})"
        self._fit = fit
        self.last_fit = fit.diagnostics()
        return fit, failure

    def _acquire(self, fit: CurveGPFit, data: list[Observation], pending: list[Observation],
                 spent_fraction: float, shortest: int) -> Suggestion:
        model = fit.model
        tried = torch.tensor([o.x for o in data], dtype=torch.float64).clamp(0.0, 1.0)
        best_f = incumbent(model, tried)
        believer = model
        if pending:
            # Kriging believer: pretend each pending trial already scored what the GP expects. The target and
            # lookahead gains judge x by its score at T_max, so a short pending trial is believed there too: believed
            # only at its own length, it would hardly lower the gain at its x, and the next suggestion would land
            # beside it.
            rows = [[*p.x, p.max_epochs / self.t_max] for p in pending]
            if self.gain != "curve":
                rows += [[*p.x, 1.0] for p in pending if p.max_epochs < self.t_max]
            points = torch.tensor(rows, dtype=torch.float64).clamp(0.0, 1.0)
            with torch.no_grad():
                believed = model.posterior(points).mean
            believer = model.condition_on_observations(points, believed)
        if self.cost_unit == "epochs":
            cost = CostModel.per_epoch(self.dims)
        else:
            measured = [o for o in data if o.seconds > 0]
            cost = CostModel.fit(torch.tensor([o.x for o in measured], dtype=torch.float64).reshape(-1, self.dims),
                                 torch.tensor([o.epochs_done for o in measured], dtype=torch.float64),
                                 torch.tensor([o.seconds for o in measured], dtype=torch.float64))
        weight = 1.0 - spent_fraction if self.cost_cooling else 1.0
        acq = CostAwareLogEI(believer, best_f=best_f, cost=cost, t_max=self.t_max, cost_weight=weight, gain=self.gain)
        pick = maximise(acq, self.dims, self.t_max, shortest, fixed_t=self.fixed_t,
                        num_restarts=self.num_restarts, raw_samples=self.raw_samples)
        return Suggestion(x=pick.x, max_epochs=pick.epochs, info={
            "source": "acquisition", "m0": fit.m0, "g0": fit.g0, "log_ei": pick.log_ei, "log_cost": pick.log_cost,
            "cost_weight": weight, "incumbent": float(best_f), "virtual_observations": fit.n_virtual,
            "pending": len(pending), "cost_unit": self.cost_unit, "t_shortest": shortest,
        })

    def _shortest(self, trials: list[Observation]) -> int:
        """The shortest training to suggest: ``t_shortest``, raised by ``max_overhead_share`` when it is set."""
        share = self.max_overhead_share
        measured = [o for o in trials if o.seconds > 0 and o.epochs_done > 0]
        # The last max(refit_every, 3) timed suggestions: about one full fit and the cheap refits between (when
        # trials end one at a time; with many workers the window may miss the full fit and read low).
        chosen = [o.suggest_seconds for o in trials if o.suggest_seconds > 0][-max(self.refit_every, 3):]
        if share is None or not chosen or not measured:
            return self.t_shortest
        overhead = sum(chosen) / len(chosen)
        seconds_per_epoch = sum(o.seconds for o in measured) / sum(o.epochs_done for o in measured)
        needed = math.ceil(overhead / seconds_per_epoch * (1.0 - share) / share - 1e-9)
        return min(self.t_max, max(self.t_shortest, needed))

    # -- plots ------------------------------------------------------------------------------------

    def posterior_mean(self, points: Tensor) -> Tensor:
        """The GP's mean score (normalised, higher is better) at ``points`` ``(n, d + 1)`` = ``[x, t / t_max]``.

        Raises:
            RuntimeError: before the first fit (fewer than ``initial_random`` trials seen).
            ValueError: if ``points`` has the wrong number of columns.
        """
        if self._fit is None:
            raise RuntimeError("BOILCore has no fitted GP yet: call `suggest` once past the initial random trials.")
        points = torch.as_tensor(points, dtype=torch.float64)
        if points.dim() != 2 or points.shape[-1] != self.dims + 1:
            raise ValueError(f"`points` must have shape (n, dims + 1 = {self.dims + 1}), got {tuple(points.shape)}.")
        with torch.no_grad():
            return self._fit.model.posterior(points).mean.squeeze(-1)

    def recommend(self, observations: Sequence[Observation]) -> int | None:
        """The index of the observed configuration whose score the GP predicts best at ``T_max``
        (by ``mean - recommend_kappa * sd``).

        Fitted on every curve passed (with the last full fit's hyperparameters when there is one,
        else by a fresh fit that is not kept), so calling it does not change later suggestions.

        Returns:
            An index into ``observations``, or ``None`` while the GP would not be fitted yet (fewer
            than ``initial_random`` trials, or fewer than 2 with a point), when its fit fails, or
            when the trial it picks has no finite value (a diverged run has nothing to recommend).

        Raises:
            ValueError: if a trial's ``x``, ``max_epochs`` or epochs do not fit this core.
        """
        observations = list(observations)
        self._check(observations, "observations")
        with_points = [i for i, o in enumerate(observations) if o.curve]
        if len(observations) < self.initial_random or len(with_points) < 2:
            return None
        # deterministic, the caller's RNG untouched; callable from a Trainer's hooks (no_grad or inference mode)
        with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
            torch.manual_seed(self.seed * 1_000_003 + len(observations))
            x, curves = self._gp_inputs([observations[i] for i in with_points])
            try:
                if self._fit is not None:
                    fit = refit_with_previous(x, curves, self._fit, self.virtual, source="reused")
                else:  # e.g. a resumed study's result(): no fit in this process yet
                    fit = self._full_fit(x, curves, self.m0, self.g0)
                with torch.no_grad():
                    posterior = fit.model.posterior(torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], -1))
                    value = posterior.mean.squeeze(-1)
                    if self.recommend_kappa:
                        value = value - self.recommend_kappa * posterior.variance.squeeze(-1).clamp_min(0).sqrt()
            except Exception as err:  # noqa: BLE001 - no recommendation is better than a crash
                log.warning("BOILCore: no model recommendation: %s: %s", type(err).__name__, err)
                return None
        pick = with_points[int(value.argmax())]
        return pick if any(math.isfinite(v) for _, v in observations[pick].curve) else None

    def compression_weights(self) -> list[float]:
        """The weight of each epoch ``1..t_max`` in a curve's score, under the current ``(m0, g0)``."""
        m0, g0 = (self._fit.m0, self._fit.g0) if self._fit is not None else (self.m0, self.g0)
        return epoch_weights(self.t_max, m0, g0)
