"""What a trial will cost: seconds of training, predicted from the trials measured so far.

BOIL divides the expected improvement of training ``x`` for ``t`` epochs by the cost of doing so.
The cost is modelled as ``log(seconds) = a + b . x + c log(t)``, fitted by ridge regression on the
measured ``(x, epochs done, seconds)`` of every trial. The ridge pulls ``b`` towards 0 and ``c``
towards 1 (cost proportional to epochs), so with few trials the model degrades gracefully into
"seconds per epoch times epochs"; an exactly proportional cost is recovered exactly. With fewer than
``min_points`` measurements it *is* that fallback (``c = 1, b = 0``, ``a`` the mean log seconds per
epoch), and with none, one second per epoch.

When the tuner's budget counts epochs, the price of a trial is its epochs and nothing is fitted:
:meth:`CostModel.per_epoch` (the acquisition must price what the budget counts; seconds would make
a trial look cheaper or dearer than it is against that budget, e.g. through each trial's fixed
start-up time).

Deviations from the paper's code (github.com/ntienvu/BOIL, ``boil.py``): the authors fit an
unregularised linear regression of min-max-normalised seconds on ``[x, t / T_max]`` and clip its
prediction at 0 (plus 0.1) before taking the log; the log-linear model here is positive by
construction and extrapolates multiplicatively in ``t``.

Example::

    >>> model = CostModel.fit(x=torch.rand(6, 2, dtype=torch.float64),
    ...                       epochs=torch.tensor([1, 2, 4, 8, 3, 5]), seconds=torch.tensor([2.0, 4, 8, 16, 6, 10]))
    >>> round(model.seconds(torch.tensor([[0.5, 0.5]]), torch.tensor([10])).item(), 3)   # 2 s per epoch
    20.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CostModel"]


@dataclass(frozen=True)
class CostModel:
    """``log(seconds) = intercept + slopes . x + log_t_slope * log(epochs)``.

    Args:
        intercept: ``a``, log seconds of one epoch at ``x = 0``.
        slopes: ``b``, ``(d,)`` how the log cost changes along each configuration axis.
        log_t_slope: ``c``, the exponent of the epochs (1: cost proportional to epochs).
        n_points: how many measurements it was fitted on (0: no data).
    """

    intercept: float
    slopes: Tensor
    log_t_slope: float
    n_points: int = 0

    @classmethod
    def fit(cls, x: Tensor, epochs: Tensor, seconds: Tensor, ridge: float = 0.1, min_points: int | None = None) -> CostModel:
        """Fit on measured trials; rows with non-positive or non-finite seconds or epochs are ignored.

        Args:
            x: ``(n, d)`` configurations in the unit cube.
            epochs: ``(n,)`` epochs each trial trained.
            seconds: ``(n,)`` wall-clock seconds each took.
            ridge: penalty on ``b`` and on ``c - 1``: a fixed prior precision, so the data outweigh it as
                trials accumulate (with 40 trials it shrinks a slope by about 3%).
            min_points: fewer usable rows than this -> cost proportional to epochs (default ``d + 2``).
        """
        x = torch.as_tensor(x, dtype=torch.float64)
        dims = x.shape[-1]
        t = torch.as_tensor(epochs, dtype=torch.float64).flatten()
        s = torch.as_tensor(seconds, dtype=torch.float64).flatten()
        keep = torch.isfinite(s) & (s > 0) & torch.isfinite(t) & (t > 0) & torch.isfinite(x).all(-1)
        x, t, s = x[keep], t[keep], s[keep]
        n = int(keep.sum())
        if n == 0:
            return cls(intercept=0.0, slopes=torch.zeros(dims, dtype=torch.float64), log_t_slope=1.0, n_points=0)
        # Regress the log cost per epoch; c - 1 then measures how far from proportional the cost is.
        residual = s.log() - t.log()
        if n < (dims + 2 if min_points is None else min_points):
            return cls(intercept=float(residual.mean()), slopes=torch.zeros(dims, dtype=torch.float64), log_t_slope=1.0,
                       n_points=n)
        design = torch.cat([torch.ones(n, 1, dtype=torch.float64), x, t.log()[:, None]], dim=-1)
        penalty = torch.full((dims + 2,), ridge, dtype=torch.float64)
        penalty[0] = 0.0  # the intercept is not shrunk
        coef = torch.linalg.solve(design.T @ design + torch.diag(penalty), design.T @ residual)
        return cls(intercept=float(coef[0]), slopes=coef[1:-1].clone(), log_t_slope=1.0 + float(coef[-1]), n_points=n)

    @classmethod
    def per_epoch(cls, dims: int) -> CostModel:
        """A trial costs its epochs (one unit per epoch, whatever ``x``): the price under an epochs budget."""
        return cls(intercept=0.0, slopes=torch.zeros(dims, dtype=torch.float64), log_t_slope=1.0, n_points=0)

    def log_seconds(self, x: Tensor, epochs: Tensor) -> Tensor:
        """Predicted log seconds of training ``x`` (``(..., d)``) for ``epochs`` (``(...)``, may be fractional)."""
        epochs = torch.as_tensor(epochs, dtype=x.dtype, device=x.device)
        return self.intercept + x @ self.slopes.to(x) + self.log_t_slope * epochs.clamp_min(1e-6).log()

    def seconds(self, x: Tensor, epochs: Tensor) -> Tensor:
        """Predicted seconds of training ``x`` for ``epochs``."""
        return self.log_seconds(torch.as_tensor(x, dtype=torch.float64), epochs).exp()

    def describe(self) -> dict[str, float | int | list[float]]:
        """Plain values for logs."""
        return {"intercept": self.intercept, "slopes": self.slopes.tolist(), "log_t_slope": self.log_t_slope,
                "n_points": self.n_points, "seconds_per_epoch_at_center": math.exp(self.intercept + 0.5 * float(self.slopes.sum()))}
