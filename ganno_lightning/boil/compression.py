"""Curve compression: a learning curve becomes one score, later epochs weighing more.

BOIL (Nguyen, Schulze & Osborne, NeurIPS 2020, section 3.2) models a whole training curve through one
number: the curve averaged under a logistic preference ``l(u) = 1 / (1 + exp(-g0 (u - m0)))`` over
the position ``u`` of each point in training. Here ``u = epoch / T_max`` (the tuner's longest
training), so a point's weight depends on how far into a full-length training it lies, not on how
long its own trial was: prefixes of one curve and curves of different lengths share one scale.

Before compressing, the metric is made *higher is better* and put on a common scale:

- ``mode="min"`` flips the sign (a loss becomes a reward).
- Every observed point of every trial is normalised together, ``(v - median) / IQR`` (the standard
  deviation when the interquartile range is zero, 1 when both are), so one diverged run's huge value
  cannot squash the others.
- The bad side is clipped at Tukey's far fence ``q25 - 3 IQR``: a diverged run reads as "bad", not
  as "infinitely bad", and cannot dominate the GP's standardised targets.
- Non-finite values (a diverged run's NaN or inf, whatever their sign) are replaced by the worst
  finite value after clipping.
- Optionally (``log=True``), a positive metric is replaced by its logarithm first: a loss's good values
  crowd near zero (0.06-0.09 on the digits task, against 0.3-2.3 for poor configurations), where equal
  ratios should weigh alike. A metric with a finite value of zero or below cannot be logged; it is then
  normalised as it is, with a warning.

Deviations from the paper and its code (github.com/ntienvu/BOIL, ``curve_compression.py``):

- The score is the logistic-*weighted mean* ``sum(w r) / sum(w)``; the paper's ``mean(w r)``
  depends on the metric's offset (hence the authors' "add 500 when negative"). The weighted mean is
  affine-equivariant, so normalisation changes scores only by an affine map.
- The authors also drop the first ``(m + 4) / 12`` of the curve before averaging; here the logistic
  weights alone decide how much early points count.
- Positions: the authors place point ``i`` at ``-6 + 12 i / (T_max - 1)`` with ``m0`` in
  ``[-2, 3]`` and ``g0`` in ``[0.5, 2]``; on our unit scale that is ``m0`` in ``[1/3, 3/4]`` and
  ``g0`` in ``[6, 24]``, which the default grids of :mod:`ganno_lightning.boil.model` cover.

Example::

    >>> curves = NormalisedCurves.from_points([[(1, 0.9), (2, 0.5)], [(1, 0.8), (2, 0.7), (3, 0.6)]],
    ...                                       t_max=4, mode="min")
    >>> curves.values.shape, curves.lengths.tolist()
    (torch.Size([2, 3]), [2, 3])
    >>> scores = curves.scores(m0=0.5, g0=12.0)   # one score per curve, higher is better
    >>> bool(scores[0] > scores[1])                # trial 0 reached the lower loss
    True
    >>> logistic_weights(torch.tensor([0.25, 0.5, 1.0]), m0=0.5, g0=12.0)
    tensor([0.0474, 0.5000, 0.9975], dtype=torch.float64)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["NormalisedCurves", "epoch_weights", "logistic_weights", "normalise_values"]

#: Tukey's "far out" fence: how many interquartile ranges below the lower quartile a value may lie.
FENCE = 3.0


def _check_mode(mode: str) -> None:
    if mode not in ("min", "max"):
        raise ValueError(f"`mode` must be 'min' or 'max', got {mode!r}.")


def logistic_weights(positions: Tensor, m0: float | Tensor, g0: float | Tensor) -> Tensor:
    """The preference ``1 / (1 + exp(-g0 (u - m0)))`` of each position ``u`` in ``[0, 1]``.

    Args:
        positions: ``epoch / T_max`` of each point, any shape.
        m0: the midpoint: where a point weighs half of the latest ones.
        g0: the growth: how sharply weight rises past ``m0`` (near 0: a plain mean).

    Returns:
        Weights in ``(0, 1)``, float64, broadcast over ``positions``, ``m0`` and ``g0``.

    Example::

        >>> logistic_weights(torch.tensor([0.0, 1.0]), m0=0.5, g0=0.0)
        tensor([0.5000, 0.5000], dtype=torch.float64)
    """
    u = torch.as_tensor(positions, dtype=torch.float64)
    return torch.sigmoid(torch.as_tensor(g0, dtype=torch.float64) * (u - torch.as_tensor(m0, dtype=torch.float64)))


def normalise_values(values: Tensor, mode: str, log: bool = False) -> Tensor:
    """Orient a flat tensor of metric values (higher is better) and normalise it robustly.

    Args:
        values: every observed metric value, as logged; may hold NaN or inf.
        mode: ``"min"`` when lower is better (losses), ``"max"`` when higher is (accuracies).
        log: take the logarithm of the values first, when every finite one is positive (else warn and
            use the values as they are).

    Returns:
        ``(v - median) / IQR`` of the oriented values (std, then 1, when the IQR is zero), the bad
        side clipped at ``q25 - 3 IQR``, non-finite values replaced by the worst finite one (0 when
        none is finite). Invariant to positive affine maps of ``values``.

    Raises:
        ValueError: if ``mode`` is neither ``"min"`` nor ``"max"``.

    Example::

        >>> normalise_values(torch.tensor([1.0, 2.0, 3.0, float("nan")]), mode="max")
        tensor([-1.,  0.,  1., -1.], dtype=torch.float64)
    """
    _check_mode(mode)
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if log:
        v = _logged(v)
    v = -v if mode == "min" else v.clone()
    finite = torch.isfinite(v)
    if not finite.any():
        return torch.zeros_like(v)
    good = v[finite]
    q25, median, q75 = torch.quantile(good, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    scale = q75 - q25
    # An IQR of zero (most points equal) falls back to the spread of all points, then to no scaling.
    if not scale > 1e-12 * max(1.0, abs(median)):
        scale = float(good.std()) if good.numel() > 1 else 0.0
    if not scale > 1e-12 * max(1.0, abs(median)):
        scale = 1.0
    z = (v - median) / scale
    spread = q75 - q25 if q75 > q25 else scale
    floor = (q25 - FENCE * spread - median) / scale
    z = torch.where(finite, z.clamp_min(floor), z)
    return torch.where(finite, z, z[finite].min())


def _logged(values: Tensor) -> Tensor:
    """``log(values)`` (non-finite values stay non-finite), or ``values`` with a warning when a finite one is <= 0."""
    finite = torch.isfinite(values)
    if bool((values[finite] <= 0).any()):
        # a warning, not a log line: Python shows it once, where a study would log it at every fit
        warnings.warn(f"BOIL: the metric has values <= 0 (lowest {float(values[finite].min())}) and cannot be logged: "
                      "compressing it as it is. Use log_metric=False for a metric that can reach 0 or below.",
                      RuntimeWarning, stacklevel=2)
        return values
    return values.log()  # every finite value is positive; NaN and +-inf stay non-finite


@dataclass(frozen=True)
class NormalisedCurves:
    """Trials' curves, oriented and normalised together, padded into one matrix.

    Built with :meth:`from_points`. Row ``i`` holds trial ``i``'s points in order; columns past
    ``lengths[i]`` are padding (value 0, position 1) that no score reads.

    Args:
        values: ``(n, L)`` normalised values, higher is better.
        positions: ``(n, L)`` ``epoch / T_max`` of each point.
        lengths: ``(n,)`` how many points each trial has (at least 1).
    """

    values: Tensor
    positions: Tensor
    lengths: Tensor

    @classmethod
    def from_points(cls, curves: Sequence[Sequence[tuple[int, float]]], t_max: int, mode: str,
                    log: bool = False) -> NormalisedCurves:
        """Normalise ``(epoch, metric)`` curves over all their points (see :func:`normalise_values`).

        Args:
            curves: one non-empty list of ``(epoch, metric)`` points per trial.
            t_max: the tuner's longest training in epochs; positions are ``epoch / t_max``.
            mode: ``"min"`` or ``"max"``: the direction in which the metric improves.
            log: compress the logarithm of a positive metric (see :func:`normalise_values`).

        Raises:
            ValueError: if a curve is empty, ``t_max`` is not positive or ``mode`` is unknown.
        """
        _check_mode(mode)
        if not isinstance(t_max, int) or t_max < 1:
            raise ValueError(f"`t_max` must be a positive int, got {t_max!r}.")
        lengths = [len(curve) for curve in curves]
        if any(n == 0 for n in lengths):
            raise ValueError(f"every curve needs at least one point, got lengths {lengths}.")
        width = max(lengths, default=1)
        metric = torch.tensor([float(v) for curve in curves for _, v in curve], dtype=torch.float64)
        flat = normalise_values(metric, mode, log)
        values = torch.zeros(len(curves), width, dtype=torch.float64)
        positions = torch.ones(len(curves), width, dtype=torch.float64)
        start = 0
        for i, curve in enumerate(curves):
            values[i, : len(curve)] = flat[start : start + len(curve)]
            positions[i, : len(curve)] = torch.tensor([float(epoch) / t_max for epoch, _ in curve], dtype=torch.float64)
            start += len(curve)
        return cls(values=values, positions=positions, lengths=torch.tensor(lengths, dtype=torch.long))

    def prefix_scores(self, m0: float | Tensor, g0: float | Tensor) -> Tensor:
        """Score of every prefix: entry ``[..., i, k]`` compresses trial ``i``'s first ``k + 1`` points.

        ``m0`` and ``g0`` may be 1-d tensors of the same length ``G`` (candidates); the result is then
        ``(G, n, L)``, else ``(n, L)``. Padding columns hold the full curve's score.
        """
        m0 = torch.as_tensor(m0, dtype=torch.float64)
        g0 = torch.as_tensor(g0, dtype=torch.float64)
        batched = m0.dim() > 0
        w = logistic_weights(self.positions, m0.reshape(-1, 1, 1), g0.reshape(-1, 1, 1))
        # Zero weight past each curve's end, so the running sums stop there.
        mask = torch.arange(self.values.shape[1]) < self.lengths[:, None]
        w = w * mask
        # Weights span many orders of magnitude (g0 = 24: sigmoid(-24) ~ 4e-11); float64 ratios of
        # running sums stay exact enough, and a constant factor cancels.
        scores = torch.cumsum(w * self.values, dim=-1) / torch.cumsum(w, dim=-1).clamp_min(1e-300)
        return scores if batched else scores[0]

    def scores(self, m0: float | Tensor, g0: float | Tensor) -> Tensor:
        """Each whole curve's score: ``(n,)``, or ``(G, n)`` for ``G`` candidate ``(m0, g0)`` pairs."""
        prefix = self.prefix_scores(m0, g0)
        index = (self.lengths - 1).expand(*prefix.shape[:-1]).unsqueeze(-1)
        return prefix.gather(-1, index).squeeze(-1)


def epoch_weights(t_max: int, m0: float, g0: float) -> list[float]:
    """The weight of each epoch ``1..t_max`` under ``(m0, g0)``, as plain floats (for plots and logs).

    Example::

        >>> [round(w, 2) for w in epoch_weights(4, m0=0.5, g0=12.0)]
        [0.05, 0.5, 0.95, 1.0]
    """
    if not isinstance(t_max, int) or t_max < 1:
        raise ValueError(f"`t_max` must be a positive int, got {t_max!r}.")
    if not (math.isfinite(m0) and math.isfinite(g0)):
        raise ValueError(f"`m0` and `g0` must be finite, got m0={m0!r}, g0={g0!r}.")
    return logistic_weights(torch.arange(1, t_max + 1, dtype=torch.float64) / t_max, m0, g0).tolist()
