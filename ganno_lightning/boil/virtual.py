"""Virtual observations: prefixes of a trial's curve, added where the GP is still unsure.

A trial trained for ``t`` epochs also tells what its configuration scored after ``k < t`` epochs:
the compressed prefix ``curve[:k]``. BOIL (section 3.3) adds such points at the trial's ``x`` while
the GP's posterior variance there stays high, so the model learns how curves grow in ``t`` without
inflating the kernel matrix with redundant, near-duplicate rows.

Here, per trial in the given order, the candidates are the curve's own epochs before its last point.
Greedily, the candidate of largest posterior variance (given the real points and the virtual points
chosen so far) is added while

- its posterior variance is at least ``variance_threshold`` (in the units of ``kernel``: for BOIL's GP,
  standardised targets, so ``0.01`` means a posterior standard deviation of a tenth of the scores'
  spread), and
- its Cholesky pivot, posterior variance plus noise, is at least ``min_pivot`` times the prior
  variance plus noise: the conditioning check. Every row added keeps the factor's pivots bounded
  below, so a near-duplicate input (same ``x``, close ``t``) can never make ``K`` ill-conditioned;
- the trial has fewer than ``per_trial`` virtual points and the whole set fewer than ``total``.

Only inputs are chosen here (posterior variance does not depend on targets); the caller computes
their targets under each ``(m0, g0)``. Nothing is stored: the set is re-derived at every refit.

Deviations from the paper's code (github.com/ntienvu/BOIL, ``boil.py``): the authors pick ``t`` in
the continuum ``[0, t]`` by maximising the variance and stop at ``log cond(K) > 15`` or variance below
noise + 1e-3, generating the points once when a trial ends and keeping them. Here ``t`` is one of the
epochs the curve actually has (its prefix score exists there), the stop rules are the pivot and
variance tests above, and the per-trial cap is shared fairly (``ceil(total / trials)``) so early
trials cannot use up the whole budget.

Example::

    >>> from gpytorch.kernels import RBFKernel
    >>> kernel = RBFKernel().double()
    >>> kernel.lengthscale = 0.3
    >>> real = torch.tensor([[0.2, 1.0]], dtype=torch.float64)          # one trial at x=0.2, t=T_max
    >>> chosen = select_virtual_points(lambda a, b: kernel(a, b).to_dense(), noise=1e-3, prior_variance=1.0,
    ...                                real_inputs=real, trial_x=real[:, :1],
    ...                                candidates=[torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])])
    >>> 0 < len(chosen) <= 10, all(trial == 0 for trial, _ in chosen)
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["select_virtual_points"]


@torch.no_grad()
def select_virtual_points(
    kernel: Callable[[Tensor, Tensor], Tensor],
    noise: float,
    prior_variance: float,
    real_inputs: Tensor,
    trial_x: Tensor,
    candidates: Sequence[Tensor],
    per_trial: int = 10,
    total: int = 100,
    variance_threshold: float = 0.01,
    min_pivot: float = 1e-4,
) -> list[tuple[int, int]]:
    """Choose which curve prefixes become virtual observations.

    Args:
        kernel: ``k(A, B)`` -> the dense covariance matrix between input rows ``A`` and ``B``.
        noise: the observation noise variance (same units as ``kernel``).
        prior_variance: ``k(z, z)``, the kernel's variance at any point (stationary kernel).
        real_inputs: ``(n, d + 1)`` the real observations' inputs ``[x, t / T_max]``.
        trial_x: ``(m, d)`` the configuration of each trial that may receive virtual points.
        candidates: per trial, the positions ``t / T_max`` it may receive a point at.
        per_trial: most virtual points for one trial.
        total: most virtual points in all.
        variance_threshold: stop a trial when its largest posterior variance falls below this
            (same units as ``kernel``; not relative to ``prior_variance``, which a long lengthscale inflates).
        min_pivot: skip a point whose Cholesky pivot falls below this fraction of the prior variance
            plus noise (the conditioning check).

    Returns:
        ``(trial, candidate)`` index pairs, in the order they were chosen.
    """
    if len(candidates) != trial_x.shape[0]:
        raise ValueError(f"`candidates` must have one entry per trial ({trial_x.shape[0]}), got {len(candidates)}.")
    chosen: list[tuple[int, int]] = []
    if total <= 0 or per_trial <= 0:
        return chosen
    active = [i for i, c in enumerate(candidates) if c.numel() > 0]
    # Share the budget: with many trials, each gets its fair part rather than the first ones all of it.
    cap = min(per_trial, math.ceil(total / max(1, len(active))))
    inputs = real_inputs.to(torch.float64)
    factor, info = torch.linalg.cholesky_ex(kernel(inputs, inputs) + noise * torch.eye(len(inputs), dtype=inputs.dtype))
    if info != 0:  # the real data alone is ill-conditioned: add nothing
        return chosen
    for trial in active:
        if len(chosen) >= total:
            break
        points = torch.cat([trial_x[trial].expand(candidates[trial].numel(), -1), candidates[trial][:, None]], dim=-1)
        points = points.to(inputs)
        n = inputs.shape[0]
        k_to_points = kernel(torch.cat([inputs, points]), points)  # [K(inputs, points); K(points, points)]
        # Joint posterior covariance of this trial's candidates given every input so far.
        cross = torch.linalg.solve_triangular(factor, k_to_points[:n], upper=False)
        posterior = k_to_points[n:] - cross.T @ cross
        cov = posterior
        taken: list[int] = []
        while len(taken) < cap and len(chosen) < total:
            variance = cov.diagonal().clone()
            variance[taken] = -math.inf
            best = int(variance.argmax())
            v = float(variance[best])
            if v < variance_threshold or v + noise < min_pivot * (prior_variance + noise):
                break
            taken.append(best)
            chosen.append((trial, best))
            # Condition the candidates' covariance on the new noisy observation (Schur complement).
            column = cov[:, best].clone()
            cov = cov - torch.outer(column, column) / (v + noise)
        if taken:
            # The factor of K(inputs + taken) + noise I grows by a block: the taken points' rows of L^-1 K, and
            # the factor of their posterior covariance plus noise (the pivots the loop above tested).
            index = torch.tensor(taken)
            corner, info = torch.linalg.cholesky_ex(posterior[index][:, index]
                                                    + noise * torch.eye(len(taken), dtype=inputs.dtype))
            if info != 0:  # cannot happen with the pivot check; stop rather than factor a bad matrix
                del chosen[len(chosen) - len(taken):]
                break
            factor = torch.cat([torch.cat([factor, factor.new_zeros(n, len(taken))], dim=1),
                                torch.cat([cross[:, index].T, corner], dim=1)])
            inputs = torch.cat([inputs, points[index]], dim=0)
    return chosen
