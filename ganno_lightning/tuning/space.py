"""A search space for hyperparameter tuners: one :class:`Hyperparameter` per name.

Shared by Population Based Training (``ganno_lightning.pbt``) and BOIL (``ganno_lightning.boil``):
bounds, log scale, integer and categorical (``choices``) dimensions, parsed from plain mappings
(YAML), sampled from the prior, perturbed, clipped, and mapped to and from the unit cube that a
Bayesian optimiser works in. Everything works on plain dicts and ``random.Random``; nothing here
imports torch or Lightning.

Example::

    >>> space = parse_space({"lr": {"low": 1e-4, "high": 0.1, "log": True}, "layers": {"low": 1, "high": 4, "integer": True}})
    >>> values = sample_values(space, random.Random(0))
    >>> sorted(values), 1e-4 <= values["lr"] <= 0.1
    (['layers', 'lr'], True)
    >>> clip_values(space, {"lr": 1.0, "layers": 2.6})
    {'lr': 0.1, 'layers': 3.0}
    >>> space = parse_space({"lr": {"low": 1e-4, "high": 0.1, "log": True}, "batch_size": {"choices": [32, 64, 128]}})
    >>> x = values_to_unit(space, {"lr": 1e-3, "batch_size": 64})
    >>> [round(u, 4) for u in x]
    [0.3333, 0.5]
    >>> unit_to_values(space, [0.0, 0.99])
    {'lr': 0.0001, 'batch_size': 128}
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["Hyperparameter", "HyperparameterSpec", "clip_values", "parse_space", "sample_values", "unit_to_values",
           "values_to_unit"]

#: What a categorical dimension may list: values that survive JSON and YAML unchanged.
_CHOICE_TYPES = (str, int, float, bool)


@dataclass
class HyperparameterSpec:
    """One dimension as a YAML config writes it (the omegaconf schema every tuner's config uses).

    Either a range (``low``, ``high``, optionally ``log`` / ``integer``) or ``choices``.
    """

    low: Optional[float] = None  # smallest value; every sampled or explored value is clipped to [low, high]
    high: Optional[float] = None  # largest value
    log: bool = False  # sample and perturb in log space (learning rates)
    integer: bool = False  # round to int (intervals)
    choices: Optional[list[Any]] = None  # categorical instead of a range: the values, in the order PBT steps through


@dataclass(frozen=True)
class Hyperparameter:
    """One dimension of a search space: a numeric range, or a list of ``choices``.

    Args:
        low: smallest allowed value; every sampled or perturbed value is clipped to ``[low, high]``.
        high: largest allowed value.
        log: sample and perturb in log space (learning rates, weight decay). Requires ``low > 0``.
        integer: round values to the nearest int after clipping (intervals, batch sizes).
        choices: a categorical dimension instead of a range: two or more distinct values (numbers,
            strings or booleans), in an order where neighbours are alike (PBT explores by moving
            to a neighbouring choice). Leave ``low`` and ``high`` unset.

    Raises:
        ValueError: if the range is empty, not finite, or not positive on a log scale, or the
            choices are fewer than two, repeated, or not plain values.

    Example::

        lr = Hyperparameter(1e-4, 1e-1, log=True)
        rng = random.Random(0)
        value = lr.sample(rng)          # log-uniform in [1e-4, 1e-1]
        lr.clip(value * 1.2)            # stays inside the bounds
        batch = Hyperparameter(choices=(32, 64, 128))
        batch.perturb(64, 1.2)          # 128: the next choice up
    """

    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    integer: bool = False
    choices: Optional[tuple[Any, ...]] = None

    def __post_init__(self) -> None:
        if self.choices is not None:
            self._check_choices()
            return
        if self.low is None or self.high is None:
            raise ValueError(
                f"A hyperparameter needs `low` and `high` (a range) or `choices`, got low={self.low!r}, high={self.high!r}."
            )
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

    def _check_choices(self) -> None:
        choices = self.choices
        if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence):
            raise ValueError(f"`choices` must be a list of values, got {choices!r}.")
        if self.low is not None or self.high is not None or self.log or self.integer:
            raise ValueError(
                f"A dimension with `choices` takes no `low`, `high`, `log` or `integer`, got low={self.low!r},"
                f" high={self.high!r}, log={self.log}, integer={self.integer}. Give either a range or choices."
            )
        bad = [c for c in choices if not isinstance(c, _CHOICE_TYPES) or (isinstance(c, float) and not math.isfinite(c))]
        if bad:
            raise ValueError(f"`choices` must be finite numbers, strings or booleans, got {bad[0]!r} in {list(choices)!r}.")
        if len(choices) < 2:
            raise ValueError(
                f"`choices` must list at least two values, got {list(choices)!r}."
                " To fix a value instead of tuning it, leave it out of the search space."
            )
        if len({(type(c) is bool, c) for c in choices}) < len(choices):
            raise ValueError(f"`choices` must be distinct, got {list(choices)!r}.")
        object.__setattr__(self, "choices", tuple(choices))

    def index(self, value: Any) -> int:
        """The position of ``value`` among the ``choices`` (a number not listed: the nearest numeric choice).

        Raises:
            ValueError: for a value that is neither listed nor a number near a numeric choice.
        """
        assert self.choices is not None, "only a categorical dimension has choices"
        for i, choice in enumerate(self.choices):
            if choice == value and isinstance(choice, bool) == isinstance(value, bool):
                return i
        numeric = [(i, c) for i, c in enumerate(self.choices) if isinstance(c, (int, float)) and not isinstance(c, bool)]
        if numeric and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return min(numeric, key=lambda item: abs(item[1] - value))[0]
        raise ValueError(f"{value!r} is not one of the choices {list(self.choices)!r}.")

    def clip(self, value: Any) -> Any:
        """Clip ``value`` into the bounds (and round it when ``integer``); a choice: the nearest listed value."""
        if self.choices is not None:
            return self.choices[self.index(value)]
        value = min(max(float(value), self.low), self.high)
        if self.integer:
            value = float(min(max(round(value), math.ceil(self.low)), math.floor(self.high)))
        return value

    def sample(self, rng: random.Random) -> Any:
        """Draw one value from the prior: uniform, log-uniform when ``log``, one of ``choices`` with equal odds."""
        if self.choices is not None:
            return self.choices[rng.randrange(len(self.choices))]
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return self.clip(value)

    def perturb(self, value: Any, factor: float) -> Any:
        """``value * factor`` clipped to the bounds; an integer dimension moves by at least one; a
        categorical one moves to the neighbouring choice (up for ``factor > 1``, down below 1).

        Example::

            >>> Hyperparameter(1e-4, 0.1, log=True).perturb(0.09, 2.0)  # 0.18, clipped
            0.1
            >>> Hyperparameter(1, 50, integer=True).perturb(2, 1.2)  # 2.4 rounds back to 2: step to 3
            3.0
            >>> Hyperparameter(choices=("sgd", "adam", "adamw")).perturb("adam", 0.8)
            'sgd'
        """
        if self.choices is not None:
            i = self.index(value) + (1 if factor > 1 else -1 if factor < 1 else 0)
            return self.choices[min(max(i, 0), len(self.choices) - 1)]
        new = value * factor
        if self.integer and round(new) == round(value):
            # a x1.2 step on a small integer would round back to itself forever
            new = value + (1 if factor > 1 else -1)
        return self.clip(new)

    # -- the unit cube ---------------------------------------------------------------------------
    def _unit_bounds(self) -> tuple[float, float]:
        low, high = float(self.low), float(self.high)  # type: ignore[arg-type]
        if self.integer:  # every integer gets an equal share of the unit interval
            low, high = math.ceil(low) - 0.5, math.floor(high) + 0.5
        return (math.log(low), math.log(high)) if self.log else (low, high)

    def to_unit(self, value: Any) -> float:
        """``value`` as a point of ``[0, 1]``: linear in the value (in its log when ``log``); the
        ``k``-th of ``n`` choices is the middle of the ``k``-th of ``n`` equal bins.

        Example::

            >>> round(Hyperparameter(1e-4, 1e-2, log=True).to_unit(1e-3), 12)
            0.5
            >>> Hyperparameter(choices=(32, 64, 128)).to_unit(128)
            0.8333333333333334
        """
        if self.choices is not None:
            return (self.index(value) + 0.5) / len(self.choices)
        low, high = self._unit_bounds()
        value = self.clip(value)
        position = ((math.log(value) if self.log else value) - low) / (high - low)
        return min(max(position, 0.0), 1.0)

    def from_unit(self, u: float) -> Any:
        """The value at ``u`` in ``[0, 1]`` (clipped into it): the inverse of :meth:`to_unit`.

        An integer dimension gives an ``int`` (a task factory takes it as is), a categorical one
        the choice itself.

        Example::

            >>> Hyperparameter(1, 4, integer=True).from_unit(0.3)
            2
        """
        u = min(max(float(u), 0.0), 1.0)
        if self.choices is not None:
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        low, high = self._unit_bounds()
        position = low + u * (high - low)
        value = self.clip(math.exp(position) if self.log else position)
        if not self.integer and u in (0.0, 1.0):  # the bounds exactly, not exp(log(low)) one ulp off
            value = float(self.low if u == 0.0 else self.high)  # type: ignore[arg-type]
        return int(value) if self.integer else value

    def to_dict(self) -> dict[str, Any]:
        """Plain values for a settings record: ``{low, high, log, integer}`` or ``{choices}``."""
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log, "integer": self.integer}


def parse_space(space: Mapping[str, Any]) -> dict[str, Hyperparameter]:
    """Turn ``{"lr": {"low": 1e-4, "high": 0.1, "log": True}, "batch_size": {"choices": [32, 64]}}`` into a space.

    Entries may also be :class:`Hyperparameter` values; a key set to ``None`` counts as absent
    (as a YAML config's unset :class:`HyperparameterSpec` fields are).

    Raises:
        ValueError: on an empty space, a non-string name, an entry that is not a mapping, or an
            entry that is neither a range nor a list of choices; the message names the entry.
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
                f"Hyperparameter `{name}` must be a mapping like {{low: 1e-4, high: 0.1, log: true}} or"
                f" {{choices: [32, 64, 128]}}, got {spec!r}."
            )
        unknown = set(spec) - {"low", "high", "log", "integer", "choices"}
        if unknown:
            raise ValueError(
                f"Hyperparameter `{name}` has unknown key(s) {sorted(unknown)}; allowed: low, high, log, integer, choices."
            )
        given = {key: value for key, value in spec.items() if value is not None}
        try:
            if "choices" in given:
                parsed[name] = Hyperparameter(
                    given.get("low"), given.get("high"), bool(given.get("log", False)),
                    bool(given.get("integer", False)), choices=given["choices"],
                )
                continue
            if "low" not in given or "high" not in given:
                raise ValueError(f"Hyperparameter `{name}` needs both `low` and `high` (or `choices`), got {dict(spec)!r}.")
            parsed[name] = Hyperparameter(
                float(given["low"]), float(given["high"]), bool(given.get("log", False)), bool(given.get("integer", False))
            )
        except (TypeError, ValueError) as err:
            message = str(err)
            raise ValueError(message if message.startswith(f"Hyperparameter `{name}`")
                             else f"Hyperparameter `{name}`: {message}") from err
    return parsed


def sample_values(space: Mapping[str, Hyperparameter], rng: random.Random) -> dict[str, Any]:
    """One value per dimension, drawn from its prior in the space's order."""
    return {name: dim.sample(rng) for name, dim in space.items()}


def _check_names(space: Mapping[str, Hyperparameter], values: Mapping[str, Any]) -> None:
    missing = set(space) - set(values)
    extra = set(values) - set(space)
    if missing or extra:
        raise ValueError(
            f"Hyperparameter values must match the search space {sorted(space)};"
            f" missing {sorted(missing)}, unknown {sorted(extra)}."
        )


def clip_values(space: Mapping[str, Hyperparameter], values: Mapping[str, Any]) -> dict[str, Any]:
    """Check that ``values`` assign exactly the space's names and clip each into its bounds.

    Raises:
        ValueError: if a name of the space is missing or a name is not in the space.
    """
    _check_names(space, values)
    return {name: space[name].clip(values[name]) for name in space}


def values_to_unit(space: Mapping[str, Hyperparameter], values: Mapping[str, Any]) -> list[float]:
    """``values`` as a point of the unit cube ``[0, 1]^d``, one coordinate per dimension in the space's order.

    Raises:
        ValueError: if the names do not match the space, or a value is not one of its choices.
    """
    _check_names(space, values)
    return [space[name].to_unit(values[name]) for name in space]


def unit_to_values(space: Mapping[str, Hyperparameter], x: Sequence[float]) -> dict[str, Any]:
    """The values at the unit-cube point ``x`` (the inverse of :func:`values_to_unit`).

    Raises:
        ValueError: if ``x`` does not have one coordinate per dimension.
    """
    if len(x) != len(space):
        raise ValueError(f"A point of this space needs {len(space)} coordinates ({', '.join(space)}), got {len(x)}.")
    return {name: dim.from_unit(u) for (name, dim), u in zip(space.items(), x)}
