"""Hyperparameter ranges of a task family, their validation and their sampling.

A family has two :class:`TaskRanges`: ``train`` (meta-training) and ``heldout`` (generalisation
tests). Ranges come from Python or from an omegaconf YAML section such as::

    family:
      name: mlp_digits
      train: {depth: [1, 3], width: [16, 64], lr: [3.0e-4, 3.0e-2], optimizers: [adam, sgd]}

Every check names the field by its full dotted path, shows the value received and says how to
fix it. Every random choice is drawn from a caller-supplied ``torch.Generator``, never from
Python's ``random``, numpy or torch's global RNG, so a task is a pure function of the generator's
state.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from ganno_lightning.config import unknown_key_error

#: Optimizer names a range may list: ``"adam"``, ``"sgd"`` (SGD with momentum :data:`SGD_MOMENTUM`),
#: ``"adamw"`` (AdamW with weight decay :data:`ADAMW_WEIGHT_DECAY`) and ``"sgd_plain"`` (no momentum).
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd", "adamw", "sgd_plain")
#: The optimizers of the four original families and the default of :class:`TaskRanges`: keeping
#: them (and their order) keeps those families' tasks, meta-training and evaluations unchanged.
ADAM_AND_MOMENTUM_SGD: tuple[str, ...] = ("adam", "sgd")
SGD_MOMENTUM = 0.9
#: AdamW's usual decoupled weight decay; with LRs of 1e-4..1e-2 over a few thousand steps it shrinks
#: weights by a few percent at most, enough to make AdamW differ from Adam without dominating.
ADAMW_WEIGHT_DECAY = 0.01

#: Upper end (exclusive) of the per-task seed drawn by :func:`draw_seed`; fits every RNG's seed type.
_SEED_LIMIT = 2**31 - 1


def _show(value: Any) -> str:
    """Render a received value the way a user wrote it in YAML: sequences as ``[a, b]``."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but `depth: true` is a typo, not a depth.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator, dtype=torch.float64))


# --- Field rules: how one field is checked and sampled. -------------------------------------------


@dataclass(frozen=True)
class IntRange:
    """``[low, high]`` integers with ``minimum <= low <= high``, sampled inclusively.

    Args:
        minimum: Smallest allowed ``low``.
        log: Sample log-uniformly (for sizes spanning octaves, e.g. batch sizes) instead of uniformly.
    """

    minimum: int = 1
    log: bool = False

    def check(self, path: str, value: Any, example: Any) -> tuple[int, int]:
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) for v in value)
        if not ok or not self.minimum <= value[0] <= value[1]:
            raise ValueError(
                f"`{path}` must be [low, high] with integers {self.minimum} <= low <= high, got {_show(value)}. "
                f"Give the bounds in increasing order, e.g. {_show(example)}."
            )
        return (int(value[0]), int(value[1]))

    def draw(self, generator: torch.Generator, value: tuple[int, int]) -> int:
        low, high = value
        u = _uniform(generator)  # one draw even when low == high keeps later draws aligned
        if self.log:
            # Log-uniform over [low, high + 1) then floored: each octave is equally likely.
            return min(high, int(math.exp(math.log(low) + u * (math.log(high + 1) - math.log(low)))))
        return min(high, low + int(u * (high - low + 1)))


@dataclass(frozen=True)
class FloatRange:
    """``[low, high]`` finite floats, sampled uniformly, or log-uniformly when ``log`` is set.

    Args:
        minimum: Smallest allowed ``low`` (exclusive when ``log``, since log-uniform needs ``low > 0``).
        log: Sample log-uniformly (learning rates).
    """

    minimum: float = 0.0
    log: bool = False

    def check(self, path: str, value: Any, example: Any) -> tuple[float, float]:
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_real(v) for v in value)
        low_ok = ok and (value[0] > self.minimum if self.log else value[0] >= self.minimum)
        if not low_ok or not value[0] <= value[1]:
            bound = f"{self.minimum:g} < low <= high" if self.log else f"{self.minimum:g} <= low <= high"
            raise ValueError(
                f"`{path}` must be [low, high] with finite numbers {bound}, got {_show(value)}. "
                f"Give the bounds in increasing order, e.g. {_show(example)}."
            )
        return (float(value[0]), float(value[1]))

    def draw(self, generator: torch.Generator, value: tuple[float, float]) -> float:
        low, high = value
        u = _uniform(generator)
        if self.log:
            return min(high, max(low, math.exp(math.log(low) + u * (math.log(high) - math.log(low)))))
        return low + u * (high - low)


@dataclass(frozen=True)
class Choices:
    """A non-empty list drawn from ``options``; one element is sampled uniformly.

    Args:
        options: The allowed values (strings or bools).
        key: The name of the sampled value in the task's info (``optimizers`` -> ``optimizer``).
    """

    options: tuple[Any, ...]
    key: str

    def check(self, path: str, value: Any, example: Any) -> tuple[Any, ...]:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
            raise ValueError(
                f"`{path}` must be a non-empty list drawn from {_show(self.options)}, got {_show(value)}. "
                f"Example: {_show(example)}."
            )
        # `type(v) is type(o)` so that 1 does not pass for True, nor 0 for False.
        unknown = [v for v in value if not any(type(v) is type(o) and v == o for o in self.options)]
        if unknown:
            raise ValueError(
                f"`{path}` has unknown value(s) {_show(unknown)}; allowed: {_show(self.options)}, "
                f"got {_show(value)}. Example: {_show(example)}."
            )
        return tuple(value)

    def draw(self, generator: torch.Generator, value: tuple[Any, ...]) -> Any:
        return value[min(len(value) - 1, int(_uniform(generator) * len(value)))]


Rule = IntRange | FloatRange | Choices


# --- Ranges. --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskRanges:
    """The ranges a family samples a task's hyperparameters from.

    Families with extra knobs (noise level, sequence length) subclass this and add fields with a
    rule in ``RULES``. :meth:`validate` returns a normalised copy (tuples, floats) or raises.

    Attributes:
        depth: ``[low, high]`` hidden layers (MLP), conv layers (CNN) or recurrent layers (LSTM).
        width: ``[low, high]`` hidden units or channels.
        lr: ``[low, high]`` initial learning rate, sampled log-uniformly.
        batch_size: ``[low, high]`` batch size, sampled log-uniformly over integers.
        optimizers: Names from :data:`OPTIMIZERS`, one sampled uniformly per task; the default is
            :data:`ADAM_AND_MOMENTUM_SGD`.

    Example::

        >>> ranges = TaskRanges(depth=[2, 4], lr=[1e-3, 1e-2]).validate("family.train")
        >>> ranges.depth
        (2, 4)
        >>> hp = ranges.sample(torch.Generator().manual_seed(0))
        >>> sorted(hp)
        ['batch_size', 'depth', 'lr', 'optimizer', 'width']
        >>> 2 <= hp["depth"] <= 4 and 1e-3 <= hp["lr"] <= 1e-2
        True
        >>> TaskRanges(depth=[4, 2]).validate("family.train")
        Traceback (most recent call last):
        ...
        ValueError: `family.train.depth` must be [low, high] with integers 1 <= low <= high, got [4, 2]. ...
    """

    RULES: ClassVar[dict[str, Rule]] = {
        "depth": IntRange(minimum=1),
        "width": IntRange(minimum=1),
        "lr": FloatRange(minimum=0.0, log=True),
        "batch_size": IntRange(minimum=1, log=True),
        "optimizers": Choices(OPTIMIZERS, key="optimizer"),
    }

    depth: Sequence[int] = (1, 3)
    width: Sequence[int] = (16, 64)
    lr: Sequence[float] = (3e-4, 3e-2)
    batch_size: Sequence[int] = (32, 128)
    optimizers: Sequence[str] = ADAM_AND_MOMENTUM_SGD

    def validate(self, prefix: str = "ranges") -> TaskRanges:
        """Check every field; return a normalised copy.

        Args:
            prefix: Dotted path of this section in the config, used in messages (``family.train``).

        Raises:
            ValueError: Naming the first invalid field as ``<prefix>.<field>``, its value and a fix.
        """
        normalised = {}
        for f in dataclasses.fields(self):
            example = f.default if f.default is not dataclasses.MISSING else None
            normalised[f.name] = self.RULES[f.name].check(f"{prefix}.{f.name}", getattr(self, f.name), example)
        result = dataclasses.replace(self, **normalised)
        result._check_consistency(prefix)
        return result

    def _check_consistency(self, prefix: str) -> None:
        """Cross-field checks; subclasses override (called on the normalised copy)."""

    def sample(self, generator: torch.Generator) -> dict[str, Any]:
        """Draw one value per field, in field order, from ``generator``.

        Each field consumes exactly one draw, so narrowing one range never shifts the others'
        samples. Call on validated ranges.

        Returns:
            Plain-typed values keyed by field name, except choice fields, which use their singular
            key (``optimizers`` -> ``optimizer``).
        """
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            rule = self.RULES[f.name]
            key = rule.key if isinstance(rule, Choices) else f.name
            out[key] = rule.draw(generator, getattr(self, f.name))
        return out

    def to_dict(self) -> dict[str, list[Any]]:
        """Plain lists keyed by field name, ready for YAML, logs or ``from_config``."""
        return {f.name: list(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_config(
        cls,
        config: TaskRanges | Mapping[str, Any] | DictConfig | None,
        prefix: str,
        default: TaskRanges | None = None,
    ) -> TaskRanges:
        """Build validated ranges from a mapping (or omegaconf section) laid over ``default``.

        Keys missing from ``config`` keep ``default``'s value, so a YAML section may override only
        ``lr``. A :class:`TaskRanges` instance (of this class or a parent) is treated like the
        mapping of its fields.

        Args:
            config: ``None`` (take ``default``), a mapping, a ``DictConfig`` or a ``TaskRanges``.
            prefix: Dotted path of the section, for messages (``family.train``).
            default: Ranges the mapping is laid over; ``cls()`` when ``None``.

        Raises:
            ValueError: For an unknown key (naming ``<prefix>.<key>`` and the known keys) or an
                invalid value.
            TypeError: If ``config`` is none of the accepted types.

        Example::

            >>> r = TaskRanges.from_config({"lr": [1e-3, 1e-2]}, "family.train")
            >>> r.lr, r.depth
            ((0.001, 0.01), (1, 3))
            >>> TaskRanges.from_config({"dept": [1, 2]}, "family.train")
            Traceback (most recent call last):
            ...
            ValueError: Unknown config key `family.train.dept` (did you mean `depth`?). Known keys: depth, ...
        """
        base = default if default is not None else cls()
        if config is None:
            return base.validate(prefix)
        if isinstance(config, TaskRanges):
            if not isinstance(config, cls) and not issubclass(cls, type(config)):
                raise TypeError(
                    f"`{prefix}` must be a {cls.__name__} (or a mapping), got a {type(config).__name__}."
                )
            config = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        elif isinstance(config, (DictConfig, ListConfig)):
            config = OmegaConf.to_container(config, resolve=True)
        if not isinstance(config, Mapping):
            raise TypeError(
                f"`{prefix}` must be a mapping of ranges such as {{depth: [1, 3]}}, got {type(config).__name__}."
            )
        known = [f.name for f in dataclasses.fields(cls)]
        for key in config:
            if key not in known:
                raise unknown_key_error(f"{prefix}.{key}", known)
        values = {name: getattr(base, name) for name in known}
        values.update(_plain(config))
        return cls(**values).validate(prefix)


def _plain(config: Mapping[str, Any]) -> dict[str, Any]:
    """Mapping values with omegaconf containers turned into plain lists."""
    return {
        k: OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v
        for k, v in config.items()
    }


def draw_seed(generator: torch.Generator) -> int:
    """Draw a task seed (for data order, generated data) from ``generator``.

    Example::

        >>> draw_seed(torch.Generator().manual_seed(0)) == draw_seed(torch.Generator().manual_seed(0))
        True
    """
    return int(torch.randint(0, _SEED_LIMIT, (), generator=generator))
