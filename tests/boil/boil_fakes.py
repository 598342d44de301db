"""A stand-in for BOIL's core (same constructor, ``suggest``, ``posterior_mean`` and ``last_fit``), so the
store, tuner, callback, CLI, Ray searcher and report are tested without fitting a Gaussian process.

:func:`install` puts it where the tuner imports the core from (``ganno_lightning.boil.core``), with a
``compression`` module whose ``epoch_weights`` the report draws.
"""

from __future__ import annotations

import math
import random
import sys
import types

import torch

from ganno_lightning.boil.observations import Suggestion


class FakeBOILCore:
    """Uniform random ``x`` and ``t``; after ``initial_random`` trials it pretends to fit (m0, g0)."""

    instances: list["FakeBOILCore"] = []

    def __init__(self, dims: int, t_max: int, t_min: int = 1, mode: str = "min", seed: int = 0,
                 initial_random: int | None = None, virtual_observations: bool = True,
                 learn_compression: bool = True, fixed_t: bool = False, cost_cooling: bool = False) -> None:
        self.dims, self.t_max, self.t_min, self.mode = dims, t_max, t_min, mode
        self.initial_random = max(3, dims + 1) if initial_random is None else initial_random
        self.rng = random.Random(seed)
        self.calls: list[dict] = []
        self.last_fit: dict | None = None
        FakeBOILCore.instances.append(self)

    def suggest(self, observations, pending=(), spent_fraction: float = 0.0) -> Suggestion:
        self.calls.append({"observations": list(observations), "pending": list(pending),
                           "spent_fraction": spent_fraction})
        x = [self.rng.random() for _ in range(self.dims)]
        if len(observations) < self.initial_random:
            return Suggestion(x, self.t_max, {"source": "random", "reason": "initial design"})
        self.last_fit = {"m0": 0.5 + 0.01 * len(observations), "g0": 12.0, "noise": torch.tensor(1e-3),
                         "lengthscales_x": torch.ones(self.dims)}
        t = self.rng.randint(self.t_min, self.t_max)
        return Suggestion(x, t, {"source": "acquisition", "m0": self.last_fit["m0"], "g0": 12.0, "log_ei": -1.0,
                                 "log_cost": 0.0, "virtual_observations": 0})

    def posterior_mean(self, points: torch.Tensor) -> torch.Tensor:
        points = torch.as_tensor(points, dtype=torch.float64)
        return -(points[:, 0] - 0.3) ** 2 + 0.1 * points[:, -1]


def epoch_weights(t_max: int, m0: float, g0: float) -> list[float]:
    return [1.0 / (1.0 + math.exp(-g0 * (e / t_max - m0))) for e in range(1, t_max + 1)]


def install(monkeypatch) -> None:
    """Make ``from ganno_lightning.boil.core import BOILCore`` give the fake (for this test only)."""
    core = types.ModuleType("ganno_lightning.boil.core")
    core.BOILCore = FakeBOILCore
    compression = types.ModuleType("ganno_lightning.boil.compression")
    compression.epoch_weights = epoch_weights
    monkeypatch.setitem(sys.modules, "ganno_lightning.boil.core", core)
    monkeypatch.setitem(sys.modules, "ganno_lightning.boil.compression", compression)


def install_for_process() -> None:
    """The same for a subprocess (a driver killed in a test): no monkeypatch to undo."""
    core = types.ModuleType("ganno_lightning.boil.core")
    core.BOILCore = FakeBOILCore
    sys.modules["ganno_lightning.boil.core"] = core
