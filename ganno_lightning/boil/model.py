"""BOIL's surrogate: a GP over ``[x, t / T_max]`` whose targets are compressed curves.

The kernel is ``ScaleKernel(Matern52_ARD(x) * Matern52(t))``: configurations and training lengths
interact multiplicatively, as in the paper's product kernel. Inputs are already in the unit cube
(``t / T_max`` in ``(0, 1]``); targets are standardised (BoTorch's ``Standardize``). Priors: the
classic low-dimensional BO priors, ``Gamma(3, 6)`` on every lengthscale (mean 0.5) and ``Gamma(2, 0.15)``
on the outputscale (BoTorch's defaults before 0.12), and BoTorch's current LogNormal noise prior with
the noise kept at or above ``1e-4`` of the standardised variance. BoTorch's current dimension-scaled
lengthscale prior (median about ``5.8`` for ``d = 2``) is meant for high dimensions; on BOIL's few
hyperparameters it let the lengthscales outgrow the unit cube, and EI then kept re-sampling a corner
that a near-linear GP believed best (1 of 6 seeds of the synthetic test, 0 of 6 with ``Gamma(3, 6)``).

The prior mean is ``c + s (t / T_max - 1)``, a constant plus a trend in the training length, both
learned by marginal likelihood (:class:`LengthTrendMean`; ``t_trend=False`` keeps BoTorch's constant
mean). Curves improve with training, so short trials score lower; with a constant mean the GP forgets
that away from the data, where a 1-epoch trial of an unexplored configuration was then expected to
score as well as a ``T_max`` one, and cost-aware EI picked 1-epoch trials over and over (digits
benchmark: a median trial length of 1 to 6 epochs out of 30 and 50 to 160 trials in 450 epochs).

The compression ``(m0, g0)`` (:mod:`ganno_lightning.boil.compression`) is learned with the GP by
marginal likelihood, the targets recomputed for each ``(m0, g0)``:

1. fit the GP (L-BFGS, :func:`botorch.fit.fit_gpytorch_mll`) at the current ``(m0, g0)``, warm-started
   from the previous fit's hyperparameters; the closure it calls is :class:`MarginalLikelihoodClosure`,
   GPyTorch's ``ExactMarginalLogLikelihood`` (:func:`negative_mll` in plain torch) with the kernel's
   gradients and the priors in closed form (same value and gradients, tested). On these few hundred
   points GPyTorch's module and lazy-tensor bookkeeping, not the arithmetic, was most of a fit's time
   (2.5 ms per closure call against 1.6 ms in plain torch with autograd, 1.1 ms in closed form), and of
   every posterior call (about 4 ms), so the kernel (:func:`kernel_matrix`, :class:`KernelValues`) and
   the posterior the acquisition scores (:class:`FastPosterior`) are plain torch too, each tested equal
   to GPyTorch's and BoTorch's;
2. with those kernel hyperparameters fixed, score every ``(m0, g0)`` of a small grid by its marginal
   likelihood (one Cholesky factor serves the whole grid: only the targets change);
3. if another grid point wins, move there with the same kernel hyperparameters when its marginal
   likelihood is higher (the next full fit optimises the kernel at the new ``(m0, g0)``).

Virtual observations (:mod:`ganno_lightning.boil.virtual`) are chosen with the previous fit's kernel
(or, at the first fit, one fitted to the real points alone), then kept fixed through steps 1-3.

Deviations from the paper (section 3.2) and its code (github.com/ntienvu/BOIL,
``product_gaussian_process.py``), for speed and robustness:

- The authors maximise the marginal likelihood over ``(lengthscales, m0, g0)`` jointly with L-BFGS-B
  from the best of 20 random starts, every ``2 d`` iterations, with a fixed noise of ``5e-4``; here
  it is one round of the coordinate ascent above (a grid for ``(m0, g0)``, gradients for the GP), with
  learned noise, an outputscale and ARD lengthscales (the authors share one lengthscale over ``x``).
- The authors use a squared-exponential kernel; here Matern 5/2 on both factors.
- Optionally (``t_persistence``), the factor over ``t`` is :class:`PersistentLengthKernel`, a learned
  constant share plus Matern: part of a configuration's score is shared by every training length.
- The ``(m0, g0)`` grid is the authors' box. A wider grid (``m0`` from 0, ``g0`` from 1) let the
  likelihood pick ``m0 = 0, g0 = 1`` on the digits benchmark: nearly a plain mean of the curve, a score
  that changes little with ``t``, so the GP judged a 3-epoch trial as informative as a 30-epoch one
  (while the loss after 3 epochs ranks configurations with a rank correlation of 0.54 to the loss after 30).
- The authors' GP has a zero mean; their compression (the mean of ``weight x value``, not divided by
  the weights' sum) already pulls short curves' scores towards 0, which the trend in the mean does here.
- Both the authors and this module compare ``(m0, g0)`` by the likelihood of *standardised*
  targets, so a compression that merely shrinks the scores' spread gains nothing. No prior on
  ``(m0, g0)``: every grid point is equally likely a priori (the authors' box is uniform too).

Example::

    >>> curves = NormalisedCurves.from_points([[(1, 0.9), (2, 0.6), (4, 0.5)], [(1, 1.0), (2, 0.9)],
    ...                                        [(1, 0.7), (2, 0.4), (3, 0.3), (4, 0.2)]], t_max=4, mode="min")
    >>> x = torch.tensor([[0.1], [0.5], [0.9]], dtype=torch.float64)
    >>> fit = fit_curve_gp(x, curves, m0=0.5, g0=12.0)
    >>> fit.model.train_inputs[0].shape[-1], fit.n_real
    (2, 3)
    >>> sorted(fit.diagnostics())
    ['g0', 'length_persistence', 'lengthscale_t', 'lengthscales_x', 'm0', 'mean_slope_t', 'mll', 'n_real', 'n_virtual', 'noise', 'outputscale', 'seconds', 'source']
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.outcome import Standardize
from botorch.models.utils.gpytorch_modules import (
    get_gaussian_likelihood_with_lognormal_prior,
)
from botorch.optim.utils import get_parameters
from gpytorch.constraints import Interval
from gpytorch.kernels import MaternKernel, ScaleKernel
from gpytorch.means import ConstantMean, Mean
from gpytorch.mlls import ExactMarginalLogLikelihood
from gpytorch.priors import GammaPrior, LogNormalPrior
from linear_operator.utils.cholesky import psd_safe_cholesky
from linear_operator.utils.errors import NotPSDError
from torch import Tensor

from ganno_lightning.boil.compression import NormalisedCurves
from ganno_lightning.boil.virtual import select_virtual_points

__all__ = ["FIT_MAXITER", "G0_GRID", "M0_GRID", "CurveGPFit", "FastPosterior", "FitError", "KernelValues",
           "LengthTrendMean", "MarginalLikelihoodClosure", "PersistentLengthKernel", "VirtualSettings", "build_gp",
           "fit_curve_gp", "kernel_matrix", "length_correlation", "negative_mll", "refit_with_previous"]

#: The midpoints tried for the compression: the authors' box (``[-2, 3]`` on their scale, 1/3 to 3/4 on ours).
M0_GRID = (1 / 3, 0.5, 0.75)
#: The growths tried: the authors' box (``[0.5, 2]`` on their scale, 6 to 24 on ours).
G0_GRID = (6.0, 12.0, 24.0)
#: Most L-BFGS iterations per fit: fits are warm-started from the last one, so a few dozen suffice.
FIT_MAXITER = 20
_SQRT5 = math.sqrt(5.0)
#: Kept hyperparameters: everything but the outcome transform's statistics, which belong to the data.
_STATE_PREFIXES = ("covar_module.", "likelihood.", "mean_module.")


class FitError(RuntimeError):
    """The GP could not be fitted (an exception in the optimiser or a non-finite marginal likelihood)."""


class LengthTrendMean(Mean):
    """The prior mean ``constant + slope * (t - 1)`` on inputs whose last column is ``t = epochs / T_max``.

    ``constant`` is the mean at ``T_max``; a positive ``slope`` says shorter trainings score lower.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_parameter("constant", torch.nn.Parameter(torch.zeros(())))
        self.register_parameter("slope", torch.nn.Parameter(torch.zeros(())))

    def forward(self, x: Tensor) -> Tensor:
        return self.constant + self.slope * (x[..., -1] - 1.0)


class PersistentLengthKernel(MaternKernel):
    """The kernel over ``t``: ``w + (1 - w) Matern52(t, t')``, the persistent share ``w`` in ``[0, 1]`` learned.

    ``w`` is the part of a configuration's score that every training length shares: the correlation
    between the scores after ``t`` and after ``T_max`` epochs never falls below it. With Matern alone
    (``w = 0``) one lengthscale had to explain both how a score moves along its own curve and how much a
    short curve says about the final score; on the digits task it fitted a correlation of 0.40 between
    10 and 30 epochs, where the validation losses after 10 and 30 epochs rank configurations with a
    rank correlation of 0.94 (16 Sobol configurations). Starts at ``w = 0.5``; no prior.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(nu=2.5, **kwargs)
        self.register_parameter("raw_persistence", torch.nn.Parameter(torch.zeros(*self.batch_shape, 1, 1)))
        self.register_constraint("raw_persistence", Interval(0.0, 1.0))

    @property
    def persistence(self) -> Tensor:
        return self.raw_persistence_constraint.transform(self.raw_persistence)

    def forward(self, x1: Tensor, x2: Tensor, diag: bool = False, **params: Any) -> Tensor:
        share = self.persistence if not diag else self.persistence.squeeze(-1)
        return share + (1.0 - share) * super().forward(x1, x2, diag=diag, **params)


def _persistence(t_kernel: MaternKernel) -> Tensor | float:
    """``w`` of a :class:`PersistentLengthKernel`, 0 for a plain Matern kernel."""
    return t_kernel.persistence.reshape(()) if isinstance(t_kernel, PersistentLengthKernel) else 0.0


@dataclass(frozen=True)
class VirtualSettings:
    """How many virtual observations to add, and when to stop (see :mod:`ganno_lightning.boil.virtual`).

    Args:
        per_trial: most virtual observations at one trial's configuration.
        total: most virtual observations in all.
        variance_threshold: least posterior variance (standardised scores) worth a virtual observation.
        min_pivot: least Cholesky pivot, relative to the prior variance plus noise (conditioning check).
    """

    per_trial: int = 10
    total: int = 100
    variance_threshold: float = 0.01
    min_pivot: float = 1e-4


@dataclass
class CurveGPFit:
    """A fitted surrogate and how it was obtained.

    Args:
        model: the GP, in eval mode, on inputs ``[x, t / T_max]`` and compressed-score targets.
        m0: the compression midpoint its targets use.
        g0: the compression growth its targets use.
        mll: the marginal log likelihood per point (with the hyperparameter priors), as GPyTorch's
            ``ExactMarginalLogLikelihood`` computes it (:func:`negative_mll`, tested equal).
        n_real: real observations (one per trial with at least one point).
        n_virtual: virtual observations (curve prefixes) among the inputs.
        seconds: wall-clock seconds the fit took.
        source: ``"fit"`` (hyperparameters optimised now), ``"reused"`` (the last full fit's, between two
            full fits) or ``"previous"`` (reused after a failed fit).
    """

    model: SingleTaskGP
    m0: float
    g0: float
    mll: float
    n_real: int
    n_virtual: int
    seconds: float
    source: str = "fit"

    def state(self) -> dict[str, Tensor]:
        """The kernel, noise and mean hyperparameters, to warm-start or replace a later fit."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items() if k.startswith(_STATE_PREFIXES)}

    def diagnostics(self) -> dict[str, Any]:
        """Plain values for logs: ``m0``, ``g0``, lengthscales, outputscale, the mean's trend in ``t``, noise, mll,
        counts, seconds."""
        scale = self.model.covar_module
        x_kernel, t_kernel = scale.base_kernel.kernels
        return {
            "m0": self.m0,
            "g0": self.g0,
            "lengthscales_x": x_kernel.lengthscale.detach().flatten().tolist(),
            "lengthscale_t": float(t_kernel.lengthscale.detach()),
            "length_persistence": float(_persistence(t_kernel)),
            "outputscale": float(scale.outputscale.detach()),
            "mean_slope_t": float(getattr(self.model.mean_module, "slope", torch.zeros(())).detach()),
            "noise": float(self.model.likelihood.noise.detach()),
            "mll": self.mll,
            "n_real": self.n_real,
            "n_virtual": self.n_virtual,
            "seconds": self.seconds,
            "source": self.source,
        }


def build_gp(train_x: Tensor, train_y: Tensor, state: dict[str, Tensor] | None = None,
             t_trend: bool = True, t_persistence: bool = False) -> SingleTaskGP:
    """The product-kernel GP on ``train_x`` (``(n, d + 1)``, last column ``t / T_max``) and ``train_y`` (``(n,)``).

    Args:
        train_x: inputs in the unit cube, float64.
        train_y: targets (any scale: they are standardised).
        state: hyperparameters from :meth:`CurveGPFit.state` to start from (same ``d``, ``t_trend`` and
            ``t_persistence``).
        t_trend: the prior mean has a trend in ``t`` (:class:`LengthTrendMean`); off, a constant.
        t_persistence: the kernel over ``t`` is :class:`PersistentLengthKernel`; off, Matern alone (the paper's).
    """
    dims = train_x.shape[-1] - 1
    x_kernel = MaternKernel(nu=2.5, ard_num_dims=dims, active_dims=range(dims), lengthscale_prior=GammaPrior(3.0, 6.0))
    t_kind = PersistentLengthKernel if t_persistence else partial(MaternKernel, nu=2.5)
    t_kernel = t_kind(ard_num_dims=1, active_dims=[dims], lengthscale_prior=GammaPrior(3.0, 6.0))
    covar = ScaleKernel(x_kernel * t_kernel, outputscale_prior=GammaPrior(2.0, 0.15))
    model = SingleTaskGP(train_x, train_y.reshape(-1, 1), likelihood=get_gaussian_likelihood_with_lognormal_prior(),
                         covar_module=covar, mean_module=LengthTrendMean() if t_trend else ConstantMean(),
                         outcome_transform=Standardize(m=1))
    model = model.to(torch.float64)
    if state is not None:
        model.load_state_dict(state, strict=False)
    return model


def length_correlation(model: SingleTaskGP, X: Tensor) -> Tensor:
    """The kernel's correlation between a score after ``t`` and after ``T_max`` epochs at the same ``x``.

    The ``t`` factor of the product kernel at ``(t, 1)`` for each row of ``X`` (``(..., d + 1)``, last
    column ``t / T_max``): 1 at ``t = T_max``, falling with the distance over the learned ``t`` lengthscale.
    """
    t_kernel = model.covar_module.base_kernel.kernels[-1]
    share = _persistence(t_kernel)
    matern = _matern52_of(((1.0 - X[..., -1]) / t_kernel.lengthscale.reshape(())).abs().clamp_min(1e-15))
    return share + (1.0 - share) * matern


# -- the GP's arithmetic in plain torch (the module docstring says why; each piece is tested equal) ----------

def _matern52_of(distance: Tensor) -> Tensor:
    """Matern 5/2 of a scaled distance."""
    return (1.0 + _SQRT5 * distance + 5.0 / 3.0 * distance * distance) * torch.exp(-_SQRT5 * distance)


def _matern52_and_slope(distance: Tensor) -> tuple[Tensor, Tensor]:
    """Matern 5/2 of a scaled distance ``r``, and ``-dMatern/dr / r = 5/3 (1 + sqrt(5) r) exp(-sqrt(5) r)``."""
    decay = torch.exp(-_SQRT5 * distance)
    linear = 1.0 + _SQRT5 * distance
    return (linear + 5.0 / 3.0 * distance * distance) * decay, 5.0 / 3.0 * linear * decay


def _matern52(a: Tensor, b: Tensor, lengthscale: Tensor) -> Tensor:
    """GPyTorch's Matern 5/2 between rows of ``a`` and ``b``.

    The distances are computed from the differences, not by GPyTorch's expansion ``|a|^2 + |b|^2 - 2 a.b``
    (exact at zero distance; equal to GPyTorch's to 1e-12, tested); in one ``cdist`` call, a tenth of
    the time of the same arithmetic in four tensor operations over ``(b, n, d)``.
    """
    return _matern52_of(torch.cdist(a / lengthscale, b / lengthscale, compute_mode="donot_use_mm_for_euclid_dist"))


@dataclass(frozen=True)
class KernelValues:
    """:func:`build_gp`'s kernel hyperparameters, read once: ``k(a, b)`` for many calls.

    Every read of a GPyTorch hyperparameter runs its constraint's transform; the virtual selection and
    the acquisition evaluate the kernel dozens of times per suggestion with the same values.
    """

    lengthscale_x: Tensor
    lengthscale_t: Tensor
    share: Tensor | float
    outputscale: Tensor

    @classmethod
    def of(cls, model: SingleTaskGP) -> KernelValues:
        x_kernel, t_kernel = model.covar_module.base_kernel.kernels
        return cls(x_kernel.lengthscale.reshape(-1), t_kernel.lengthscale.reshape(-1), _persistence(t_kernel),
                   model.covar_module.outputscale)

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        """``k(a, b)`` between rows ``(n, d + 1)`` and ``(m, d + 1)``."""
        dims = a.shape[-1] - 1
        t_factor = self.share + (1.0 - self.share) * _matern52(a[:, dims:], b[:, dims:], self.lengthscale_t)
        return self.outputscale * _matern52(a[:, :dims], b[:, :dims], self.lengthscale_x) * t_factor


def kernel_matrix(model: SingleTaskGP, a: Tensor, b: Tensor) -> Tensor:
    """``k(a, b)`` of :func:`build_gp`'s product kernel between rows ``(n, d + 1)`` and ``(m, d + 1)``.

    Equal to ``model.covar_module(a, b).to_dense()`` (tested).
    """
    return KernelValues.of(model)(a, b)


def _train_factor(model: SingleTaskGP) -> Tensor:
    """The Cholesky factor of ``K(train, train) + noise I``, with GPyTorch's own jitter ladder.

    Raises:
        NotPSDError: if even the largest jitter leaves the matrix not positive definite.
    """
    x = model.train_inputs[0]
    covariance = kernel_matrix(model, x, x) + torch.diag_embed(model.likelihood.noise.reshape(-1).expand(x.shape[0]))
    return psd_safe_cholesky(covariance)


def negative_mll(model: SingleTaskGP) -> Tensor:
    """``-mll`` per point, priors included: ``ExactMarginalLogLikelihood``'s value and gradients (tested).

    The reference for :class:`MarginalLikelihoodClosure` (which L-BFGS calls) and the value of a finished fit.
    """
    x, y = model.train_inputs[0], model.train_targets
    n = x.shape[0]
    factor = _train_factor(model)
    residual = (y - model.mean_module(x))[:, None]
    value = (-0.5 * (residual * torch.cholesky_solve(residual, factor)).sum() - factor.diagonal().log().sum()
             - 0.5 * n * math.log(2 * math.pi))
    for _, module, prior, closure, _ in model.named_priors():
        value = value + prior.log_prob(closure(module)).sum()
    return -value / n


#: Which hyperparameter of :class:`MarginalLikelihoodClosure` each of :func:`build_gp`'s priors is on.
_PRIOR_TARGETS = {
    "likelihood.noise_covar.noise_prior": "noise",
    "covar_module.outputscale_prior": "outputscale",
    "covar_module.base_kernel.kernels.0.lengthscale_prior": "lengthscale_x",
    "covar_module.base_kernel.kernels.1.lengthscale_prior": "lengthscale_t",
}


def _has_closed_form(prior: Any) -> bool:
    """A Gamma or LogNormal prior on the hyperparameter itself (GPyTorch's ``transform`` unset)."""
    return isinstance(prior, (GammaPrior, LogNormalPrior)) and getattr(prior, "_transform", None) is None


def _log_prior_and_slope(prior: GammaPrior | LogNormalPrior, value: Tensor) -> tuple[Tensor, Tensor]:
    """``log p(value)`` and its derivative, for a prior :func:`_has_closed_form` accepts."""
    log_value = value.log()
    if isinstance(prior, GammaPrior):
        a, b = prior.concentration, prior.rate
        return a * b.log() - torch.lgamma(a) + (a - 1.0) * log_value - b * value, (a - 1.0) / value - b
    z = (log_value - prior.loc) / prior.scale
    log_p = -log_value - prior.scale.log() - 0.5 * math.log(2 * math.pi) - 0.5 * z * z
    return log_p, -(1.0 + z / prior.scale) / value


class MarginalLikelihoodClosure:
    """:func:`negative_mll` and its gradients for L-BFGS, the kernel's part in closed form.

    The same value and gradients as ``negative_mll(model).backward()`` (tested), in about half the time
    (1.1 against 2.0 ms per call on 77 points): the inputs' squared differences per dimension are computed
    once per fit, and the gradient with respect to the kernel's hyperparameters is ``tr(W dK/dtheta)`` with
    ``W = (K^-1 - a a') / 2`` (``a = K^-1 (y - mean)``; Rasmussen & Williams, eq. 5.9), not a backward
    pass through the Cholesky factor. The constraint transforms and the mean are differentiated by
    autograd on a graph of a few scalars: ``sum(dL/dtheta * theta)`` has the raw parameters' gradients.
    The Gamma and LogNormal priors of :func:`build_gp` are in closed form too (GPyTorch's ``log_prob``
    was a third of a call); any other prior goes through autograd.

    Args:
        model: a GP from :func:`build_gp`, in train mode; its training data must not change.
        parameters: the parameters to return gradients for, in order (BoTorch's ``get_parameters``).

    Returns (when called):
        ``(value, gradients)``, the form ``fit_gpytorch_mll``'s ``closure`` takes.
    """

    def __init__(self, model: SingleTaskGP, parameters: dict[str, Tensor]) -> None:
        self.model = model
        self.parameters = list(parameters.values())
        x = model.train_inputs[0].detach()
        self.n = x.shape[0]
        dims = x.shape[-1] - 1
        differences = (x[:, None, :] - x[None, :, :]).pow(2)  # (n, n, d + 1), the inputs are fixed during a fit
        self.squared_x, self.squared_t = differences[..., :dims], differences[..., dims]
        self.x, self.y = x, model.train_targets.detach()
        # Priors on a hyperparameter below in closed form; any other (a user's subclass) through autograd.
        self.closed_form: list[tuple[str, Any]] = []
        self.generic: list[tuple[Any, Any, Any]] = []
        for name, module, prior, closure, _ in model.named_priors():
            if name in _PRIOR_TARGETS and _has_closed_form(prior):
                self.closed_form.append((_PRIOR_TARGETS[name], prior))
            else:
                self.generic.append((prior, closure, module))
        self.constant = 0.5 * self.n * math.log(2 * math.pi)

    def __call__(self, **_: Any) -> tuple[Tensor, tuple[Tensor | None, ...]]:
        scale = self.model.covar_module
        x_kernel, t_kernel = scale.base_kernel.kernels
        with torch.enable_grad():
            lengthscale_x = x_kernel.lengthscale.reshape(-1)
            lengthscale_t = t_kernel.lengthscale.reshape(())
            outputscale = scale.outputscale
            noise = self.model.likelihood.noise.reshape(-1)[0]
            share = _persistence(t_kernel)
            mean = self.model.mean_module(self.x)
        with torch.no_grad():
            lx, lt, share_value = lengthscale_x.detach(), lengthscale_t.detach(), float(share)
            matern_x, slope_x = _matern52_and_slope((self.squared_x @ lx.pow(-2)).clamp_min(1e-30).sqrt())
            matern_t, slope_t = _matern52_and_slope((self.squared_t / lt.pow(2)).clamp_min(1e-30).sqrt())
            factor_t = share_value + (1.0 - share_value) * matern_t
            covariance = outputscale.detach() * matern_x * factor_t
            covariance.diagonal().add_(noise.detach())
            chol = psd_safe_cholesky(covariance)
            residual = (self.y - mean.detach())[:, None]
            alpha = torch.cholesky_solve(residual, chol)
            value = 0.5 * (residual * alpha).sum() + chol.diagonal().log().sum() + self.constant
            # d(-mll)/dK, then the chain rule through each kernel factor (dMatern/dl = slope * d^2 / l^3).
            w = 0.5 * (torch.cholesky_inverse(chol) - alpha @ alpha.T)
            wk = w * outputscale.detach()
            gradients = {
                "noise": w.diagonal().sum(),
                "outputscale": (w * matern_x * factor_t).sum(),
                "lengthscale_x": torch.einsum("ij,ijk->k", wk * factor_t * slope_x, self.squared_x) / lx.pow(3),
                "lengthscale_t": (wk * matern_x * (1.0 - share_value) * slope_t * self.squared_t).sum() / lt.pow(3),
                "share": (wk * matern_x * (1.0 - matern_t)).sum(),
                "mean": -alpha.squeeze(-1),
            }
            values = {"noise": noise, "outputscale": outputscale, "lengthscale_x": lengthscale_x,
                      "lengthscale_t": lengthscale_t}
            for key, prior in self.closed_form:
                log_prior, slope = _log_prior_and_slope(prior, values[key].detach())
                value = value - log_prior.sum()
                gradients[key] = gradients[key] - slope
        with torch.enable_grad():
            surrogate = sum((gradients[key] * hyperparameter).sum() for key, hyperparameter in values.items())
            surrogate = surrogate + (gradients["mean"] * mean).sum()
            if isinstance(share, Tensor):
                surrogate = surrogate + gradients["share"] * share
            for prior, closure, module in self.generic:
                log_prior = prior.log_prob(closure(module)).sum()
                surrogate, value = surrogate - log_prior, value - log_prior.detach()
            surrogate = surrogate / self.n
            needed = [p for p in self.parameters if p.requires_grad]
            found = dict(zip(map(id, needed), torch.autograd.grad(surrogate, needed, allow_unused=True)))
        return value / self.n, tuple(found.get(id(p)) for p in self.parameters)


class FastPosterior:
    """The GP's posterior mean and standard deviation of the score at many points.

    Equal to ``model.posterior(X)`` (tested, for a fitted model and for a kriging believer from
    ``condition_on_observations``), from one Cholesky factor computed here: the acquisition scores
    thousands of points per suggestion.

    Args:
        model: a GP from :func:`build_gp` (or conditioned from one), in eval mode.
    """

    def __init__(self, model: SingleTaskGP) -> None:
        self.model = model
        self.train_x = model.train_inputs[0].detach()
        with torch.no_grad():
            self.kernel = KernelValues.of(model)
            self.factor = _train_factor(model)
            residual = (model.train_targets - model.mean_module(self.train_x))[:, None]
            self.alpha = torch.cholesky_solve(residual, self.factor)
        transform = model.outcome_transform  # Standardize: scores were fitted in standardised units
        self.shift, self.scale = transform.means.reshape(()), transform.stdvs.reshape(())

    def _latent(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """The standardised posterior mean at ``points`` ``(b, d + 1)`` and ``L^-1 k(train, points)`` ``(n, b)``."""
        cross = self.kernel(points, self.train_x)
        mean = self.model.mean_module(points) + (cross @ self.alpha).squeeze(-1)
        return mean, torch.linalg.solve_triangular(self.factor, cross.T, upper=False)

    def __call__(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation (latent, no observation noise) at ``points`` ``(b, d + 1)``."""
        mean, whitened = self._latent(points)
        variance = (self.kernel.outputscale - whitened.pow(2).sum(0)).clamp_min(1e-12)
        return mean * self.scale + self.shift, variance.sqrt() * self.scale

    def lookahead(self, observed: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """The mean at ``target`` and the standard deviation of its change once ``observed`` is observed.

        Rows pair up: ``target[i]`` is ``observed[i]`` (``(b, d + 1)``) with ``t = T_max`` (last column 1),
        so their prior covariance is the kernel's :func:`length_correlation` at ``observed``. Observing a
        noisy score ``y`` at ``observed[i]`` moves the posterior mean at ``target[i]`` by
        ``cov(target, observed) / (var(observed) + noise) (y - mean(observed))``, a normal variable of
        standard deviation ``cov / sqrt(var + noise)`` (posterior quantities, latent scores).
        """
        b = len(observed)
        mean, whitened = self._latent(torch.cat([observed, target]))  # one kernel and one solve for both
        at_observed, at_target = whitened[:, :b], whitened[:, b:]
        prior_variance = self.kernel.outputscale
        covariance = prior_variance * length_correlation(self.model, observed) - (at_observed * at_target).sum(0)
        variance = (prior_variance - at_observed.pow(2).sum(0)).clamp_min(1e-12)
        noise = self.model.likelihood.noise.reshape(-1)[0]
        spread = (covariance.clamp_min(0.0) / (variance + noise).sqrt()).clamp_min(1e-12)
        return mean[b:] * self.scale + self.shift, spread * self.scale


def _mll_value(model: SingleTaskGP) -> float:
    """The model's marginal log likelihood per point on its own training data (with priors)."""
    with torch.no_grad():
        return float(-negative_mll(model))


def _fit(train_x: Tensor, train_y: Tensor, state: dict[str, Tensor] | None, maxiter: int,
         t_trend: bool = True, t_persistence: bool = False) -> tuple[SingleTaskGP, float]:
    model = build_gp(train_x, train_y, state, t_trend, t_persistence)
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    closure = MarginalLikelihoodClosure(model, get_parameters(mll, requires_grad=True))
    try:
        # Two attempts: the warm start, then one restart from the priors if it hits a numerical error.
        fit_gpytorch_mll(mll, closure=closure, optimizer_kwargs={"options": {"maxiter": maxiter}}, max_attempts=2)
        value = _mll_value(model)
    except Exception as err:  # any optimiser or numerical failure means "no new fit"
        raise FitError(f"fit_gpytorch_mll failed: {type(err).__name__}: {err}") from err
    if not math.isfinite(value):
        raise FitError(f"the fitted GP has a non-finite marginal likelihood ({value}).")
    return model, value


def _grid_quadratic_forms(model: SingleTaskGP, targets: Tensor) -> Tensor:
    """``-0.5 (y - c)' K^-1 (y - c)`` for each row of ``targets`` (standardised), kernel fixed.

    The log-determinant is the same for every row, so this orders the rows as their marginal
    likelihoods would.
    """
    x = model.train_inputs[0]
    with torch.no_grad():
        try:
            factor = _train_factor(model)
        except NotPSDError:
            return torch.full((targets.shape[0],), -math.inf, dtype=x.dtype)
        std = targets.std(dim=-1, keepdim=True)
        standard = (targets - targets.mean(dim=-1, keepdim=True)) / torch.where(std > 1e-8, std, torch.ones_like(std))
        residual = (standard - model.mean_module(x).detach()).T
        alpha = torch.cholesky_solve(residual, factor)
        return -0.5 * (residual * alpha).sum(0)


@torch.no_grad()
def _inputs(x: Tensor, curves: NormalisedCurves, fit: SingleTaskGP | None, virtual: VirtualSettings | None
            ) -> tuple[Tensor, Tensor, Tensor]:
    """The GP inputs and, for each, which prefix of which trial its target compresses."""
    rows = torch.arange(x.shape[0])
    cols = curves.lengths - 1
    real = torch.cat([x, curves.positions[rows, cols][:, None]], dim=-1)
    if virtual is None or fit is None:
        return real, rows, cols
    scale = fit.covar_module
    candidates = [curves.positions[i, : int(n) - 1] for i, n in enumerate(curves.lengths)]
    chosen = select_virtual_points(
        KernelValues.of(fit), noise=float(fit.likelihood.noise),
        prior_variance=float(scale.outputscale),
        real_inputs=real, trial_x=x, candidates=candidates, per_trial=virtual.per_trial, total=virtual.total,
        variance_threshold=virtual.variance_threshold, min_pivot=virtual.min_pivot,
    )
    if not chosen:
        return real, rows, cols
    v_rows = torch.tensor([trial for trial, _ in chosen])
    v_cols = torch.tensor([k for _, k in chosen])
    inputs = torch.cat([real, torch.cat([x[v_rows], curves.positions[v_rows, v_cols][:, None]], dim=-1)])
    return inputs, torch.cat([rows, v_rows]), torch.cat([cols, v_cols])


def fit_curve_gp(
    x: Tensor,
    curves: NormalisedCurves,
    m0: float,
    g0: float,
    *,
    grid: tuple[Sequence[float], Sequence[float]] | None = (M0_GRID, G0_GRID),
    virtual: VirtualSettings | None = VirtualSettings(),
    previous: CurveGPFit | None = None,
    maxiter: int = FIT_MAXITER,
    t_trend: bool = True,
    t_persistence: bool = False,
) -> CurveGPFit:
    """Fit the GP and, when ``grid`` is given, the compression ``(m0, g0)`` by marginal likelihood.

    Args:
        x: ``(n, d)`` each trial's configuration in the unit cube, float64.
        curves: the trials' normalised curves, row ``i`` belonging to ``x[i]``.
        m0: the compression midpoint to start from (kept when ``grid`` is None).
        g0: the compression growth to start from (kept when ``grid`` is None).
        grid: candidate ``(m0 values, g0 values)``, tried as their product; None keeps ``(m0, g0)``.
        virtual: how to add virtual observations; None adds none.
        previous: the last fit, to warm-start from and to choose virtual observations with.
        maxiter: most L-BFGS iterations per GP fit.
        t_trend: the prior mean has a trend in ``t`` (:class:`LengthTrendMean`); off, a constant.
        t_persistence: the kernel over ``t`` is :class:`PersistentLengthKernel`; off, Matern alone.

    Raises:
        FitError: if a GP fit raises or ends with a non-finite marginal likelihood.
    """
    start = time.perf_counter()
    real_inputs = torch.cat([x, curves.positions[torch.arange(x.shape[0]), curves.lengths - 1][:, None]], dim=-1)
    state = previous.state() if previous is not None else None
    guide = None
    if virtual is not None:
        if state is None:  # first fit: learn a kernel on the real points to place the virtual ones
            guide, _ = _fit(real_inputs, curves.scores(m0, g0), None, maxiter, t_trend, t_persistence)
            state = {k: v for k, v in guide.state_dict().items() if k.startswith(_STATE_PREFIXES)}
        else:  # the previous fit's kernel: only its hyperparameters place the virtual points
            guide = previous.model
    inputs, rows, cols = _inputs(x, curves, guide, virtual)

    def targets(m: float | Tensor, g: float | Tensor) -> Tensor:
        return curves.prefix_scores(m, g)[..., rows, cols]

    model, value = _fit(inputs, targets(m0, g0), state, maxiter, t_trend, t_persistence)
    if grid is not None:
        pairs = torch.tensor(list(itertools.product(*grid)), dtype=torch.float64)
        quad = _grid_quadratic_forms(model, targets(pairs[:, 0], pairs[:, 1]))
        best = int(torch.nan_to_num(quad, nan=-math.inf).argmax())
        m_best, g_best = pairs[best].tolist()
        if (m_best, g_best) != (m0, g0) and math.isfinite(float(quad[best])):
            # One coordinate-ascent step: the kernel just fitted, on the better compression's targets. The next
            # full fit optimises the kernel there (a second L-BFGS run here doubled the cost of a fit).
            warm = {k: v for k, v in model.state_dict().items() if k.startswith(_STATE_PREFIXES)}
            try:
                other = build_gp(inputs, targets(m_best, g_best), warm, t_trend, t_persistence).eval()
                other_value = _mll_value(other)
            except (FitError, NotPSDError, RuntimeError):  # keep the fitted model
                other, other_value = None, -math.inf
            if other_value > value:
                model, value, m0, g0 = other, other_value, m_best, g_best
    return CurveGPFit(model=model, m0=float(m0), g0=float(g0), mll=value, n_real=x.shape[0],
                      n_virtual=inputs.shape[0] - x.shape[0], seconds=time.perf_counter() - start)


def refit_with_previous(x: Tensor, curves: NormalisedCurves, previous: CurveGPFit,
                        virtual: VirtualSettings | None = VirtualSettings(), source: str = "previous") -> CurveGPFit:
    """The previous hyperparameters and ``(m0, g0)`` on the current data, without optimising anything.

    The fallback after a failed fit (``source="previous"``), and the cheap update between two full
    fits (:class:`~ganno_lightning.boil.core.BOILCore`'s ``refit_every``, ``source="reused"``).

    Raises:
        FitError: if even that model has a non-finite marginal likelihood or cannot be built.
    """
    start = time.perf_counter()
    state = previous.state()
    t_trend = isinstance(previous.model.mean_module, LengthTrendMean)
    t_persistence = isinstance(previous.model.covar_module.base_kernel.kernels[-1], PersistentLengthKernel)
    try:
        inputs, rows, cols = _inputs(x, curves, previous.model, virtual)  # its kernel places the virtual points
        model = build_gp(inputs, curves.prefix_scores(previous.m0, previous.g0)[rows, cols], state, t_trend,
                         t_persistence)
        model.eval()
        value = _mll_value(model)
    except Exception as err:  # any numerical failure here means "no model at all"
        raise FitError(f"the previous hyperparameters failed on the current data: {type(err).__name__}: {err}") from err
    if not math.isfinite(value):
        raise FitError(f"the previous hyperparameters give a non-finite marginal likelihood ({value}).")
    return CurveGPFit(model=model, m0=previous.m0, g0=previous.g0, mll=value, n_real=x.shape[0],
                      n_virtual=inputs.shape[0] - x.shape[0], seconds=time.perf_counter() - start, source=source)
