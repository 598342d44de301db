"""A search space for hyperparameter tuners: one :class:`Hyperparameter` per name.

Shared by Population Based Training (``ganno_lightning.pbt``) and the other tuners: bounds, log
scale and integer dimensions, parsed from plain mappings (YAML), sampled from the prior, perturbed
and clipped. Everything works on plain dicts and ``random.Random``; nothing here imports torch or
Lightning.

Example::

    >>> space = parse_space({"lr": {"low": 1e-4, "high": 0.1, "log": True}, "layers": {"low": 1, "high": 4, "integer": True}})
    >>> values = sample_values(space, random.Random(0))
    >>> sorted(values), 1e-4 <= values["lr"] <= 0.1
    (['layers', 'lr'], True)
    >>> clip_values(space, {"lr": 1.0, "layers": 2.6})
    {'lr': 0.1, 'layers': 3.0}
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Hyperparameter", "clip_values", "parse_space", "sample_values"]


@dataclass(frozen=True)
class Hyperparameter:
    """One dimension of a search space.

    Args:
        low: smallest allowed value; every sampled or perturbed value is clipped to ``[low, high]``.
        high: largest allowed value.
        log: sample and perturb in log space (learning rates, weight decay). Requires ``low > 0``.
        integer: round values to the nearest int after clipping (intervals, batch sizes).

    Raises:
        ValueError: if the range is empty, not finite, or not positive on a log scale.

    Example::

        lr = Hyperparameter(1e-4, 1e-1, log=True)
        rng = random.Random(0)
        value = lr.sample(rng)          # log-uniform in [1e-4, 1e-1]
        lr.clip(value * 1.2)            # stays inside the bounds
    """

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.low, (int, float)) and isinstance(self.high, (int, float))):
            raise ValueError(f"`low` and `high` must be numbers, got low={self.low!r}, high={self.high!r}.")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"`low` and `high` must be finite, got [{self.low}, {self.high}].")
        if not self.low < self.high:
            raise ValueError(
                f"The range [{self.low}, {self.high}] is empty: `low` must be smaller than `high`."
                " To fix a value instead of tuning it, leave it out of the search space."
            )
        if self.log and self.low <= 0:
            raise ValueError(f"A log-scale range needs `low` > 0, got low={self.low}. Use log=False or a positive low.")
        if self.integer and math.floor(self.high) < math.ceil(self.low):
            raise ValueError(f"The integer range [{self.low}, {self.high}] contains no integer.")

    def clip(self, value: float) -> float:
        """Clip ``value`` into the bounds (and round it when ``integer``)."""
        value = min(max(float(value), self.low), self.high)
        if self.integer:
            value = float(min(max(round(value), math.ceil(self.low)), math.floor(self.high)))
        return value

    def sample(self, rng: random.Random) -> float:
        """Draw one value from the prior: uniform, or log-uniform when ``log``."""
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return self.clip(value)

    def perturb(self, value: float, factor: float) -> float:
        """``value * factor`` clipped to the bounds; an integer dimension moves by at least one.

        Example::

            >>> Hyperparameter(1e-4, 0.1, log=True).perturb(0.09, 2.0)  # 0.18, clipped
            0.1
            >>> Hyperparameter(1, 50, integer=True).perturb(2, 1.2)  # 2.4 rounds back to 2: step to 3
            3.0
        """
        new = value * factor
        if self.integer and round(new) == round(value):
            # a x1.2 step on a small integer would round back to itself forever
            new = value + (1 if factor > 1 else -1)
        return self.clip(new)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_space(space: Mapping[str, Any]) -> dict[str, Hyperparameter]:
    """Turn ``{"lr": {"low": 1e-4, "high": 0.1, "log": True}}`` (or Hyperparameter values) into a space.

    Raises:
        ValueError: on an empty space, a non-string name or an entry that is not a mapping.
    """
    if not space:
        raise ValueError("`hyperparameters` must name at least one hyperparameter to tune, got an empty mapping.")
    parsed: dict[str, Hyperparameter] = {}
    for name, spec in space.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"Hyperparameter names must be non-empty strings, got {name!r}.")
        if isinstance(spec, Hyperparameter):
            parsed[name] = spec
            continue
        if not isinstance(spec, Mapping):
            raise ValueError(
                f"Hyperparameter `{name}` must be a mapping like {{low: 1e-4, high: 0.1, log: true}}, got {spec!r}."
            )
        unknown = set(spec) - {"low", "high", "log", "integer"}
        if unknown:
            raise ValueError(
                f"Hyperparameter `{name}` has unknown key(s) {sorted(unknown)}; allowed: low, high, log, integer."
            )
        if "low" not in spec or "high" not in spec:
            raise ValueError(f"Hyperparameter `{name}` needs both `low` and `high`, got {dict(spec)!r}.")
        try:
            parsed[name] = Hyperparameter(
                float(spec["low"]), float(spec["high"]), bool(spec.get("log", False)), bool(spec.get("integer", False))
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"Hyperparameter `{name}`: {err}") from err
    return parsed


def sample_values(space: Mapping[str, Hyperparameter], rng: random.Random) -> dict[str, float]:
    """One value per dimension, drawn from its prior in the space's order."""
    return {name: dim.sample(rng) for name, dim in space.items()}


def clip_values(space: Mapping[str, Hyperparameter], values: Mapping[str, float]) -> dict[str, float]:
    """Check that ``values`` assign exactly the space's names and clip each into its bounds.

    Raises:
        ValueError: if a name of the space is missing or a name is not in the space.
    """
    missing = set(space) - set(values)
    extra = set(values) - set(space)
    if missing or extra:
        raise ValueError(
            f"Hyperparameter values must match the search space {sorted(space)};"
            f" missing {sorted(missing)}, unknown {sorted(extra)}."
        )
    return {name: space[name].clip(values[name]) for name in space}
