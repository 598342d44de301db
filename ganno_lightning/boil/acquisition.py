"""Where to train next and for how long: log expected improvement per log second.

BOIL (section 3.4) picks ``(x, t)`` maximising ``log EI(x, t) - log cost(x, t)``: a short training
is worth it when the GP expects nearly as much from it as from a long one. EI is BoTorch's
numerically stable :class:`~botorch.acquisition.LogExpectedImprovement` (its ``_log_ei_helper``)
on the curve GP's posterior (:mod:`ganno_lightning.boil.model`; computed by its
:class:`~ganno_lightning.boil.model.FastPosterior`, equal to ``model.posterior`` and tested against
``LogExpectedImprovement``); the cost is :class:`~ganno_lightning.boil.cost.CostModel`.

- The incumbent is the best posterior mean at ``t = T_max`` over the configurations already tried:
  the authors' "ei_mu_max" choice, restricted to tried ``x`` (they maximise the mean over the whole
  space). A posterior mean rather than an observed score, because observed scores come from curves of
  different lengths and would make a short, lucky curve the bar to beat.
- ``gain="target"`` (:class:`~ganno_lightning.boil.core.BOILCore`'s default, a deviation from the
  paper): the gain of training ``x`` for ``t`` epochs is the EI of its score at ``T_max`` times
  ``rho^2``, ``rho`` the kernel's correlation between the scores at ``t`` and at ``T_max``
  (:func:`~ganno_lightning.boil.model.length_correlation`): the share of the variance at
  ``(x, T_max)`` that observing ``(x, t)`` would remove. This is the "augmented EI" of Huang et al.
  (2006) for multi-fidelity kriging, who weigh by ``rho``; ``rho^2`` because with ``rho`` a trial of
  ``T_max / 10`` epochs won whenever ``rho > 0.1`` (digits, seed 1: 100 of 103 trials were 3 epochs
  long, at ``rho`` about 0.2, and none of them ever became the best configuration). The paper's
  ``EI(x, t)`` measures improvement of the score at ``t`` over the incumbent at ``T_max``; away from
  the data the GP expects a short curve to score as well as a long one, and priced per epoch a
  3-epoch trial was bought over and over (digits, seed 0: 90 trials of 3 epochs in a 450-epoch budget).
  Here the improvement is always of what the tuner is judged on, and a short trial is worth what it
  tells about it, as the GP has learned from the curves. A known weakness: the chosen length,
  ``argmax rho(t)^2 / t`` under an epochs price, depends only on the learned ``t`` lengthscale, so it
  jumps between the shortest allowed trial and nearly ``T_max``. With a floor of 3 epochs, 3 of 30
  benchmark studies bought 12 to 33 consecutive 3-epoch trials, each costing a suggestion for 0.1 s
  of training; the core's floor is now 6 of 30 epochs (``t_floor=0.2``), and one study in 30 still
  ends its budget on 18 trials of 6 epochs (``benchmarks/results/boil_vs_asha.md``; issue #19).
  A second weakness: ``rho`` is the kernel's *prior* correlation, so a configuration already trained
  for ``t`` epochs looks as worth another ``t``-epoch trial as an unseen one.
- ``gain="lookahead"``: the value of observing ``(x, t)`` is the expected improvement over the
  incumbent of the posterior mean at ``(x, T_max)`` after the observation. That mean moves by a normal
  variable whose standard deviation is the posterior covariance of the two scores over the
  predictive standard deviation at ``(x, t)`` (:meth:`~ganno_lightning.boil.model.FastPosterior.lookahead`),
  so the gain is LogEI with that spread. It is the knowledge gradient restricted to ``x``'s own
  mean (the other tried configurations' means are held fixed). Unlike the target gain, it reads the
  posterior: a repeat of what was observed is worth only its noise, and a configuration seen briefly
  that looks good is worth a full trial (tested).
- ``cost_weight`` scales the log cost (1: the paper). A tuner may fade it as its budget is spent
  (``cost_cooling``): near the end, only improvement matters.
- The optimiser (:func:`maximise`) scores ``raw_samples`` scrambled Sobol points of the box
  ``[0, 1]^d x [t_min / T_max, 1]``, then refines the best ``num_restarts`` of them with Gaussian
  clouds of shrinking radius (:data:`SEARCH_RADII`), each round one batched call without gradients.
  The authors (and BoTorch's ``optimize_acqf``) run L-BFGS-B from random starts: dozens of
  sequential posterior calls with gradients, 0.1 s per suggestion on the digits benchmark, where a few
  batched calls cost about 0.01 s and match a dense grid (tested). With the ``target`` gain the value
  separates, ``log EI(x, T_max) - w b.x`` plus ``2 log rho(t) - w c log t``, so ``x`` is searched at
  ``T_max`` and ``t`` is the best whole epoch, found exactly; with the other gains ``t`` is searched
  with ``x``, then the best whole epoch at that ``x`` is chosen.

Example::

    >>> from ganno_lightning.boil.cost import CostModel
    >>> from ganno_lightning.boil.model import build_gp
    >>> train_x = torch.tensor([[0.1, 1.0], [0.5, 0.5], [0.9, 1.0]], dtype=torch.float64)
    >>> model = build_gp(train_x, torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)).eval()
    >>> cost = CostModel(intercept=0.0, slopes=torch.zeros(1, dtype=torch.float64), log_t_slope=1.0)
    >>> acq = CostAwareLogEI(model, best_f=incumbent(model, train_x[:, :1]), cost=cost, t_max=10)
    >>> pick = maximise(acq, dims=1, t_max=10, t_min=1)
    >>> 1 <= pick.epochs <= 10, len(pick.x)
    (True, 1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.analytic import _log_ei_helper
from botorch.models import SingleTaskGP
from botorch.utils.transforms import t_batch_mode_transform
from torch import Tensor
from torch.quasirandom import SobolEngine

from ganno_lightning.boil.cost import CostModel
from ganno_lightning.boil.model import FastPosterior, length_correlation

__all__ = ["GAINS", "SEARCH_RADII", "CostAwareLogEI", "Pick", "incumbent", "maximise"]

#: What a trial ``(x, t)`` can be judged by (:class:`CostAwareLogEI`'s ``gain``).
GAINS = ("curve", "target", "lookahead")


def incumbent(model: SingleTaskGP, tried_x: Tensor) -> Tensor:
    """The best posterior mean at ``t = T_max`` (normalised ``t = 1``) over the tried configurations ``(n, d)``.

    ``model`` is a GP from :func:`~ganno_lightning.boil.model.build_gp`; its mean is computed by
    :class:`~ganno_lightning.boil.model.FastPosterior` (``model.posterior`` cost a tenth of a suggestion).
    """
    points = torch.cat([tried_x, torch.ones(tried_x.shape[0], 1, dtype=tried_x.dtype)], dim=-1)
    with torch.no_grad():
        return FastPosterior(model)(points)[0].max()


class CostAwareLogEI(AcquisitionFunction):
    """``log gain(x, t) - cost_weight * log cost(x, t)`` for one candidate ``[x, t / T_max]`` at a time.

    Args:
        model: the curve GP from :func:`~ganno_lightning.boil.model.build_gp` (or conditioned from one: a
            kriging believer), inputs ``[x, t / T_max]``, higher is better.
        best_f: the incumbent (see :func:`incumbent`).
        cost: the fitted cost model (seconds, or epochs: :meth:`CostModel.per_epoch`).
        t_max: the tuner's longest training, to turn ``t / T_max`` back into epochs for the cost.
        cost_weight: the weight of the log cost; 0 ignores cost.
        gain: what training ``x`` for ``t`` epochs is worth (see the module): ``"curve"``, ``EI(x, t)`` (the
            paper's); ``"target"``, ``EI(x, T_max) x corr(t, T_max)^2``; ``"lookahead"``, the expected
            improvement of the posterior mean at ``(x, T_max)`` once ``(x, t)`` is observed.
    """

    def __init__(self, model: SingleTaskGP, best_f: float | Tensor, cost: CostModel, t_max: int,
                 cost_weight: float = 1.0, gain: str = "curve") -> None:
        if gain not in GAINS:
            raise ValueError(f"`gain` must be one of {', '.join(map(repr, GAINS))}, got {gain!r}.")
        super().__init__(model=model)
        self.best_f = torch.as_tensor(best_f, dtype=torch.float64)
        self.posterior = FastPosterior(model)
        self.cost = cost
        self.t_max = t_max
        self.cost_weight = cost_weight
        self.gain = gain

    @property
    def separable(self) -> bool:
        """Whether the gain is a term in ``x`` plus a term in ``t`` (``"target"``), so they can be searched apart."""
        return self.gain == "target"

    def log_ei(self, X: Tensor) -> Tensor:
        """The log gain at points ``(..., 1, d + 1)`` (see ``gain``)."""
        points = X.reshape(-1, X.shape[-1])  # any batch shape, scored as one batch of rows
        if self.gain == "curve":
            return self.log_ei_curve(points).reshape(X.shape[:-2])
        at_target = points.clone()
        at_target[:, -1] = 1.0
        if self.gain == "lookahead":
            mean, spread = self.posterior.lookahead(points, at_target)
            return (_log_ei_helper((mean - self.best_f) / spread) + spread.log()).reshape(X.shape[:-2])
        correlation = length_correlation(self.model, points).clamp_min(1e-12)
        return (self.log_ei_curve(at_target) + 2.0 * correlation.log()).reshape(X.shape[:-2])

    def log_ei_curve(self, points: Tensor) -> Tensor:
        """BoTorch's LogEI of the score at ``points`` ``(b, d + 1)``, on the plain-torch posterior.

        The posterior is :class:`~ganno_lightning.boil.model.FastPosterior`, built once per acquisition.
        """
        mean, sigma = self.posterior(points)
        return _log_ei_helper((mean - self.best_f) / sigma) + sigma.log()

    def log_cost(self, X: Tensor) -> Tensor:
        """Predicted log seconds at points ``(..., d + 1)``."""
        return self.cost.log_seconds(X[..., :-1], X[..., -1] * self.t_max)

    @t_batch_mode_transform(expected_q=1)
    def forward(self, X: Tensor) -> Tensor:
        return self.log_ei(X) - self.cost_weight * self.log_cost(X.squeeze(-2))


@dataclass(frozen=True)
class Pick:
    """The acquisition's choice: configuration, whole epochs, and the terms of its value there."""

    x: list[float]
    epochs: int
    log_ei: float
    log_cost: float


#: Local search radii, as fractions of each box side: each round samples around the best points so far.
SEARCH_RADII = (0.1, 0.03, 0.01)


@torch.no_grad()
def _search(acq: CostAwareLogEI, bounds: Tensor, fixed: dict[int, float], num_starts: int, raw_samples: int,
            per_start: int) -> Tensor:
    """The best point found by scoring quasi-random points, then Gaussian clouds around the best few.

    Every round is one batched call of ``acq``, without gradients (see the module for why not L-BFGS-B).
    """
    width = bounds[1] - bounds[0]

    def fix(points: Tensor) -> Tensor:
        points = points.clamp(bounds[0], bounds[1])
        for column, value in fixed.items():
            points[:, column] = value
        return points

    def score(points: Tensor) -> Tensor:
        return torch.nan_to_num(acq(points[:, None, :]), nan=-math.inf)

    seed = int(torch.randint(0, 2**31 - 1, (1,)))  # the caller's (forked) RNG makes the draw reproducible
    sobol = SobolEngine(bounds.shape[1], scramble=True, seed=seed).draw(raw_samples, dtype=bounds.dtype)
    points = fix(bounds[0] + width * sobol)
    values = score(points)
    top = values.topk(min(num_starts, raw_samples))
    starts, best = points[top.indices], top.values
    for radius in SEARCH_RADII:
        noise = torch.randn(len(starts), per_start, bounds.shape[1], dtype=bounds.dtype)
        cloud = fix((starts[:, None, :] + radius * width * noise).reshape(-1, bounds.shape[1]))
        cloud_values = score(cloud).reshape(len(starts), per_start)
        winner = cloud_values.max(dim=-1)
        better = winner.values > best
        chosen = cloud.reshape(len(starts), per_start, -1)[torch.arange(len(starts)), winner.indices]
        starts = torch.where(better[:, None], chosen, starts)
        best = torch.where(better, winner.values, best)
    return starts[int(best.argmax())]


def maximise(acq: CostAwareLogEI, dims: int, t_max: int, t_min: int = 1, fixed_t: bool = False,
             num_restarts: int = 4, raw_samples: int = 512, per_start: int = 64) -> Pick:
    """Maximise ``acq`` over ``[0, 1]^dims x [t_min / t_max, 1]`` and round ``t`` to whole epochs.

    With the ``target`` gain (or ``fixed_t``) the value separates into a term in ``x`` and a term in ``t``
    (``log EI(x, T_max) - w b.x`` and ``2 log rho(t) - w c log t``: the cost model is log-linear), so
    ``x`` is searched at ``t = T_max`` and ``t`` is then chosen exactly among the whole epochs.
    Otherwise ``(x, t)`` are searched together, then ``t`` is the best whole epoch at the chosen ``x``.

    Args:
        acq: the acquisition function.
        dims: configuration dimensions ``d``.
        t_max: the longest training in epochs.
        t_min: the shortest training in epochs.
        fixed_t: always train for ``t_max`` (the "no learning-curve trade-off" ablation).
        num_restarts: local searches, started from the best raw samples.
        raw_samples: quasi-random points scored first.
        per_start: points sampled around each local search's best, per round.

    Draws from torch's global RNG (:class:`~ganno_lightning.boil.core.BOILCore` forks it per suggestion).

    Raises:
        ValueError: if ``num_restarts``, ``raw_samples`` or ``per_start`` is not a positive int.
    """
    for name, value in (("num_restarts", num_restarts), ("raw_samples", raw_samples), ("per_start", per_start)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    bounds = torch.zeros(2, dims + 1, dtype=torch.float64)
    bounds[1] = 1.0
    bounds[0, -1] = t_min / t_max
    separable = acq.separable or fixed_t
    point = _search(acq, bounds, {dims: 1.0} if separable else {}, num_restarts, raw_samples, per_start)
    # Then the best whole epoch at the chosen x: exact when the gain separates, a last refinement when not.
    options = [t_max] if fixed_t else list(range(t_min, t_max + 1))
    rows = point.expand(len(options), -1).clone()
    rows[:, -1] = torch.tensor(options, dtype=torch.float64) / t_max
    with torch.no_grad():
        values = acq(rows[:, None, :])
        best = int(values.argmax())
        log_ei = float(acq.log_ei(rows[best : best + 1, None, :]))
        log_cost = float(acq.log_cost(rows[best]))
    return Pick(x=point[:-1].tolist(), epochs=options[best], log_ei=log_ei, log_cost=log_cost)
