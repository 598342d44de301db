"""Population Based Training, free of Lightning: search space, ready criterion, exploit, explore.

The pieces follow Jaderberg et al. (2017), "Population Based Training of Neural Networks":

- The search space (:class:`~ganno_lightning.tuning.space.Hyperparameter`) lives in
  :mod:`ganno_lightning.tuning.space`, shared with the other tuners.
- :class:`ReadyCriterion` says when a member has trained long enough since its last decision.
- :class:`TruncationSelection` / :class:`BinaryTournament` pick a donor (exploit).
- :class:`Explorer` perturbs or resamples the donor's hyperparameters (explore).
- :class:`PBTStrategy` combines them into one decision per ready member.

Everything here works on plain dicts and ``random.Random`` so the statistics can be tested without
training anything; the callback only reads the trainer, calls :meth:`PBTStrategy.decide` and applies
the result.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ganno_lightning.tuning.space import Hyperparameter, clip_values, parse_space, sample_values

__all__ = [
    "BinaryTournament",
    "ExploitDecision",
    "Explorer",
    "LineageEvent",
    "NoExploit",
    "PBTStrategy",
    "ReadyCriterion",
    "TruncationSelection",
    "make_exploiter",
]


@dataclass(frozen=True)
class ReadyCriterion:
    """A member is ready for exploit/explore every ``interval`` optimizer steps or epochs.

    Args:
        interval: how many units must pass between two decisions of the same member.
        unit: ``"step"`` (optimizer steps, ``trainer.global_step``) or ``"epoch"``.

    Example::

        ready = ReadyCriterion(interval=2, unit="epoch")
        ready.is_ready(progress=4, last_ready=2)  # True
    """

    interval: int = 1
    unit: str = "epoch"

    def __post_init__(self) -> None:
        if not isinstance(self.interval, int) or isinstance(self.interval, bool) or self.interval < 1:
            raise ValueError(f"`ready_interval` must be a positive int, got {self.interval!r}.")
        if self.unit not in ("step", "epoch"):
            raise ValueError(f"`ready_unit` must be 'step' or 'epoch', got {self.unit!r}.")

    def is_ready(self, progress: int, last_ready: int) -> bool:
        return progress - last_ready >= self.interval


def _better(mode: str, a: float, b: float) -> bool:
    return a < b if mode == "min" else a > b


def _ranked(scores: Mapping[int, float], mode: str) -> list[int]:
    """Member ids from best to worst; non-finite scores rank last; ties by id for determinism."""

    def key(item: tuple[int, float]) -> tuple[int, float, int]:
        member, score = item
        if not math.isfinite(score):
            return (1, 0.0, member)
        return (0, score if mode == "min" else -score, member)

    return [member for member, _ in sorted(scores.items(), key=key)]


@dataclass(frozen=True)
class TruncationSelection:
    """Truncation selection: a member in the bottom ``quantile`` copies a random member of the top ``quantile``.

    With fewer members than ``1 / quantile`` the bottom and top each still hold one member, so a
    population of two exploits its worse member. Members with a non-finite score are always bottom.
    """

    quantile: float = 0.25

    def __post_init__(self) -> None:
        if not 0 < self.quantile <= 0.5:
            raise ValueError(f"`quantile` must be in (0, 0.5], got {self.quantile!r}.")

    def select_donor(self, member: int, scores: Mapping[int, float], mode: str, rng: random.Random) -> int | None:
        if member not in scores or len(scores) < 2:
            return None
        ranked = _ranked(scores, mode)
        k = max(1, int(math.floor(len(ranked) * self.quantile)))
        if member not in ranked[-k:] and math.isfinite(scores[member]):
            return None
        top = [m for m in ranked[:k] if m != member and math.isfinite(scores[m])]
        return rng.choice(top) if top else None


@dataclass(frozen=True)
class BinaryTournament:
    """Binary tournament: compare with one random other member and copy it if it is strictly better."""

    def select_donor(self, member: int, scores: Mapping[int, float], mode: str, rng: random.Random) -> int | None:
        others = sorted(m for m in scores if m != member)
        if member not in scores or not others:
            return None
        rival = rng.choice(others)
        mine, theirs = scores[member], scores[rival]
        if not math.isfinite(theirs):
            return None
        if not math.isfinite(mine) or _better(mode, theirs, mine):
            return rival
        return None


@dataclass(frozen=True)
class NoExploit:
    """Never copy anyone: members train independently (the random-search baseline at equal compute)."""

    def select_donor(self, member: int, scores: Mapping[int, float], mode: str, rng: random.Random) -> int | None:
        return None


def make_exploiter(method: str, quantile: float = 0.25) -> TruncationSelection | BinaryTournament | NoExploit:
    """Build an exploit rule by name: ``"truncation"``, ``"tournament"`` or ``"none"``."""
    if method == "truncation":
        return TruncationSelection(quantile)
    if method == "tournament":
        return BinaryTournament()
    if method == "none":
        return NoExploit()
    raise ValueError(f"`exploit` must be 'truncation', 'tournament' or 'none', got {method!r}.")


@dataclass(frozen=True)
class Explorer:
    """Explore: resample a hyperparameter from its prior with ``resample_probability``, else multiply it by a factor.

    Each hyperparameter is explored independently. Perturbation multiplies the value by one of
    ``perturb_factors`` chosen uniformly (on a log scale that is a symmetric step in log space), then
    clips it to the bounds, so no value ever leaves its range.

    Args:
        perturb_factors: two positive multipliers, conventionally ``(0.8, 1.2)``.
        resample_probability: probability of drawing a fresh value from the prior instead.
    """

    perturb_factors: tuple[float, float] = (0.8, 1.2)
    resample_probability: float = 0.25

    def __post_init__(self) -> None:
        factors = tuple(self.perturb_factors)
        if len(factors) != 2 or not all(isinstance(f, (int, float)) and f > 0 and math.isfinite(f) for f in factors):
            raise ValueError(f"`perturb_factors` must be two positive floats, got {self.perturb_factors!r}.")
        object.__setattr__(self, "perturb_factors", (float(factors[0]), float(factors[1])))
        if not 0.0 <= self.resample_probability <= 1.0:
            raise ValueError(f"`resample_probability` must be in [0, 1], got {self.resample_probability!r}.")

    def explore(
        self, values: Mapping[str, float], space: Mapping[str, Hyperparameter], rng: random.Random
    ) -> dict[str, float]:
        new: dict[str, float] = {}
        for name, dim in space.items():
            if rng.random() < self.resample_probability:
                new[name] = dim.sample(rng)
                continue
            new[name] = dim.perturb(values[name], rng.choice(self.perturb_factors))
        return new


@dataclass
class ExploitDecision:
    """What a ready member should do: copy ``donor`` (its checkpoint) and continue with ``hyperparameters``."""

    donor: int
    hyperparameters: dict[str, float]


@dataclass
class LineageEvent:
    """One exploit/explore event: ``member`` copied ``donor`` at ``step`` and moved from old to new values."""

    member: int
    step: int
    donor: int
    donor_step: int
    score: float
    donor_score: float
    old_hyperparameters: dict[str, float]
    new_hyperparameters: dict[str, float]
    time: float = field(default=0.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON; unknown or non-finite scores become ``None`` (strict JSON has no NaN)."""
        out = asdict(self)
        for key in ("score", "donor_score"):
            if out[key] is None or not math.isfinite(out[key]):
                out[key] = None
        return out


class PBTStrategy:
    """Exploit then explore, as one decision per ready member.

    Args:
        space: the search space, name to :class:`Hyperparameter`.
        mode: ``"min"`` or ``"max"`` for the monitored score.
        exploit: a donor-selection rule (:class:`TruncationSelection` by default).
        explorer: the :class:`Explorer` applied to the donor's hyperparameters.

    Example::

        strategy = PBTStrategy({"lr": Hyperparameter(1e-4, 1e-1, log=True)}, mode="min")
        scores = {0: 0.9, 1: 0.3, 2: 0.5, 3: 0.7}
        hparams = {m: {"lr": 0.01} for m in scores}
        decision = strategy.decide(0, scores, hparams, random.Random(0))
        decision.donor  # 1: the best member
    """

    def __init__(
        self,
        space: Mapping[str, Hyperparameter],
        mode: str = "min",
        exploit: TruncationSelection | BinaryTournament | NoExploit | None = None,
        explorer: Explorer | None = None,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"`mode` must be 'min' or 'max', got {mode!r}.")
        self.space = dict(parse_space(space))
        self.mode = mode
        self.exploit = exploit if exploit is not None else TruncationSelection()
        self.explorer = explorer if explorer is not None else Explorer()

    def sample(self, rng: random.Random) -> dict[str, float]:
        """Initial hyperparameters of a new member, from the prior."""
        return sample_values(self.space, rng)

    def decide(
        self,
        member: int,
        scores: Mapping[int, float],
        hyperparameters: Mapping[int, Mapping[str, float]],
        rng: random.Random,
    ) -> ExploitDecision | None:
        """An :class:`ExploitDecision` if ``member`` should exploit, else ``None`` (keep training as is)."""
        donor = self.exploit.select_donor(member, scores, self.mode, rng)
        if donor is None or donor == member:
            return None
        return ExploitDecision(donor, self.explorer.explore(hyperparameters[donor], self.space, rng))

    def validate_values(self, values: Mapping[str, float]) -> dict[str, float]:
        """Check a full assignment of the space and clip it; names must match the space exactly."""
        return clip_values(self.space, values)


def ranked_members(scores: Mapping[int, float], mode: str) -> Sequence[int]:
    """Member ids best first (non-finite scores last)."""
    return _ranked(scores, mode)
