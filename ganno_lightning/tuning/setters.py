"""How a hyperparameter value reaches training: one setter per name.

Built-in names act on every param group of every optimizer:

- ``lr``: the *base* learning rate. With an LR scheduler the group's current LR is rescaled by
  ``new_base / old_base`` and the scheduler's ``base_lrs`` (and the group's ``initial_lr``) are set,
  so the schedule's shape continues from the new base. Without a scheduler the group's LR is the value.
  A callback that multiplies the LR only inside ``optimizer.step`` (GANNOCallback) sits on top of it.
- ``weight_decay``, ``momentum`` (``betas[0]`` for Adam-style optimizers), ``beta1``, ``beta2``, ``eps``.

Anything else is one registered setter away:

- :class:`ModuleAttribute` sets an attribute of the LightningModule (dotted path allowed).
- :class:`CallbackAttribute` sets an attribute of a callback found by class name, e.g.
  ``CallbackAttribute("GANNOCallback", "interval")``, without importing that callback.
- :class:`FunctionSetter` wraps any ``fn(trainer, pl_module, value)``.

In YAML (tuner configs, e.g. the PBT runner's) the strings ``"module:dropout.p"`` and
``"callback:GANNOCallback.interval"`` build the first two.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = [
    "BUILTIN_SETTERS",
    "CallbackAttribute",
    "FunctionSetter",
    "HyperparameterSetter",
    "ModuleAttribute",
    "OptimizerHyperparameter",
    "resolve_setters",
]


@runtime_checkable
class HyperparameterSetter(Protocol):
    """Applies one hyperparameter to a running fit: ``validate`` before training, ``apply`` at every change."""

    def validate(self, trainer: Any, pl_module: Any, name: str) -> None: ...

    def apply(self, trainer: Any, pl_module: Any, value: float) -> None: ...

    def read(self, trainer: Any, pl_module: Any) -> float | None: ...


def _set_group_value(group: dict[str, Any], key: str, value: float) -> None:
    current = group[key]
    if isinstance(current, torch.Tensor):
        current.fill_(value)  # capturable/fused optimizers keep hyperparameters as tensors
    else:
        group[key] = value


def _as_float(value: Any) -> float:
    return float(value.item() if isinstance(value, torch.Tensor) else value)


class OptimizerHyperparameter:
    """Set ``key`` (or ``key[index]``) in every param group of every optimizer; ``lr`` also updates schedulers.

    Args:
        key: the param-group key, e.g. ``"weight_decay"`` or ``"betas"``.
        index: position inside a tuple-valued key (``betas``).
        fallback: another ``(key, index)`` to use when ``key`` is absent (``momentum`` -> ``betas[0]``).
    """

    def __init__(self, key: str, index: int | None = None, fallback: tuple[str, int | None] | None = None) -> None:
        self.key, self.index, self.fallback = key, index, fallback

    def _resolve(self, group: Mapping[str, Any]) -> tuple[str, int | None] | None:
        if self.key in group:
            return self.key, self.index
        if self.fallback and self.fallback[0] in group:
            return self.fallback
        return None

    def validate(self, trainer: Any, pl_module: Any, name: str) -> None:
        if not trainer.optimizers:
            raise ValueError(f"Hyperparameter `{name}` needs an optimizer, but `configure_optimizers` returned none.")
        for i, optimizer in enumerate(trainer.optimizers):
            for j, group in enumerate(optimizer.param_groups):
                if self._resolve(group) is None:
                    wanted = self.key + (f" or {self.fallback[0]}" if self.fallback else "")
                    raise ValueError(
                        f"Hyperparameter `{name}` sets param-group key `{wanted}`, but group {j} of optimizer {i}"
                        f" ({type(optimizer).__name__}) has keys {sorted(k for k in group if k != 'params')}."
                        " Remove it from the search space or register a setter for it."
                    )

    def apply(self, trainer: Any, pl_module: Any, value: float) -> None:
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                key, index = self._resolve(group)  # type: ignore[misc]
                if index is None:
                    _set_group_value(group, key, value)
                else:
                    items = list(group[key])
                    items[index] = value
                    group[key] = tuple(items)

    def read(self, trainer: Any, pl_module: Any) -> float | None:
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                resolved = self._resolve(group)
                if resolved:
                    key, index = resolved
                    return _as_float(group[key] if index is None else group[key][index])
        return None


class LearningRate(OptimizerHyperparameter):
    """The base LR of every param group, kept consistent with every LR scheduler's ``base_lrs``."""

    def __init__(self) -> None:
        super().__init__("lr")

    def apply(self, trainer: Any, pl_module: Any, value: float) -> None:
        scheduled: set[int] = set()
        for config in getattr(trainer, "lr_scheduler_configs", []) or []:
            scheduler = config.scheduler
            groups = scheduler.optimizer.param_groups
            base_lrs = getattr(scheduler, "base_lrs", None)
            if base_lrs is None:
                continue  # ReduceLROnPlateau and friends: no base, the group LR is set below
            for i, group in enumerate(groups):
                old_base = _as_float(base_lrs[i])
                # keep the schedule's current factor: lr_now = base * f(t) -> new_base * f(t)
                factor = _as_float(group["lr"]) / old_base if old_base > 0 else 1.0
                _set_group_value(group, "lr", value * factor)
                group["initial_lr"] = value
                base_lrs[i] = value
                scheduled.add(id(group))
            if hasattr(scheduler, "_last_lr"):
                scheduler._last_lr = [_as_float(g["lr"]) for g in groups]
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                if id(group) not in scheduled:
                    _set_group_value(group, "lr", value)
                    if "initial_lr" in group:
                        group["initial_lr"] = value

    def read(self, trainer: Any, pl_module: Any) -> float | None:
        """The base LR: the first scheduler's ``base_lrs[0]`` if one has it, else group 0's ``lr``."""
        for config in getattr(trainer, "lr_scheduler_configs", []) or []:
            base_lrs = getattr(config.scheduler, "base_lrs", None)
            if base_lrs:
                return _as_float(base_lrs[0])
        return super().read(trainer, pl_module)


def _resolve_path(root: Any, path: str) -> tuple[Any, str]:
    *parents, last = path.split(".")
    obj = root
    for part in parents:
        obj = obj[part] if isinstance(obj, Mapping) else getattr(obj, part)
    return obj, last


def _cast_like(current: Any, value: float) -> Any:
    if isinstance(current, bool):
        return bool(value)
    if isinstance(current, int):
        return int(round(value))
    if isinstance(current, torch.Tensor):
        return torch.full_like(current, value)
    return float(value)


class ModuleAttribute:
    """Set ``pl_module.<path>`` (dotted, e.g. ``"dropout.p"`` or ``"hparams.alpha"``); ints stay ints.

    Example::

        PBTCallback(..., hyperparameters={"dropout": {"low": 0.0, "high": 0.5}},
                    setters={"dropout": ModuleAttribute("dropout.p")})
    """

    def __init__(self, path: str) -> None:
        if not isinstance(path, str) or not path:
            raise ValueError(f"`path` must be a non-empty attribute path, got {path!r}.")
        self.path = path

    def validate(self, trainer: Any, pl_module: Any, name: str) -> None:
        try:
            obj, last = _resolve_path(pl_module, self.path)
            obj[last] if isinstance(obj, Mapping) else getattr(obj, last)
        except (AttributeError, KeyError) as err:
            raise ValueError(
                f"Hyperparameter `{name}` sets `{type(pl_module).__name__}.{self.path}`, which does not exist ({err})."
                " Fix the attribute path of its ModuleAttribute setter."
            ) from err

    def apply(self, trainer: Any, pl_module: Any, value: float) -> None:
        obj, last = _resolve_path(pl_module, self.path)
        if isinstance(obj, Mapping):
            obj[last] = _cast_like(obj[last], value)  # type: ignore[index]
        else:
            setattr(obj, last, _cast_like(getattr(obj, last), value))

    def read(self, trainer: Any, pl_module: Any) -> float | None:
        obj, last = _resolve_path(pl_module, self.path)
        return _as_float(obj[last] if isinstance(obj, Mapping) else getattr(obj, last))


class CallbackAttribute:
    """Set an attribute of the trainer's callback whose class is named ``callback`` (e.g. ``"GANNOCallback"``).

    Matching by class name lets PBT tune another callback (the GANNO agent's ``interval`` or scale
    bounds) without importing it. Exactly one such callback must be on the trainer.
    """

    def __init__(self, callback: str, path: str) -> None:
        if not callback or not path:
            raise ValueError(f"`callback` and `path` must be non-empty, got callback={callback!r}, path={path!r}.")
        self.callback, self.path = callback, path

    def _find(self, trainer: Any, name: str) -> Any:
        found = [cb for cb in trainer.callbacks if type(cb).__name__ == self.callback]
        if len(found) != 1:
            names = sorted({type(cb).__name__ for cb in trainer.callbacks})
            raise ValueError(
                f"Hyperparameter `{name}` sets `{self.callback}.{self.path}`, but the trainer has {len(found)}"
                f" callback(s) named `{self.callback}` (callbacks: {names}). Add exactly one, or fix the name."
            )
        return found[0]

    def validate(self, trainer: Any, pl_module: Any, name: str) -> None:
        ModuleAttribute(self.path).validate(trainer, self._find(trainer, name), name)

    def apply(self, trainer: Any, pl_module: Any, value: float) -> None:
        ModuleAttribute(self.path).apply(trainer, self._find(trainer, self.path), value)

    def read(self, trainer: Any, pl_module: Any) -> float | None:
        return ModuleAttribute(self.path).read(trainer, self._find(trainer, self.path))


class FunctionSetter:
    """Wrap ``apply(trainer, pl_module, value)`` (and optionally ``read(trainer, pl_module)``) as a setter."""

    def __init__(
        self,
        apply: Callable[[Any, Any, float], None],
        read: Callable[[Any, Any], float | None] | None = None,
    ) -> None:
        if not callable(apply):
            raise ValueError(f"`apply` must be callable, got {apply!r}.")
        self._apply, self._read = apply, read

    def validate(self, trainer: Any, pl_module: Any, name: str) -> None:
        return None

    def apply(self, trainer: Any, pl_module: Any, value: float) -> None:
        self._apply(trainer, pl_module, value)

    def read(self, trainer: Any, pl_module: Any) -> float | None:
        return None if self._read is None else self._read(trainer, pl_module)


BUILTIN_SETTERS: dict[str, Callable[[], HyperparameterSetter]] = {
    "lr": LearningRate,
    "weight_decay": lambda: OptimizerHyperparameter("weight_decay"),
    "momentum": lambda: OptimizerHyperparameter("momentum", fallback=("betas", 0)),
    "beta1": lambda: OptimizerHyperparameter("betas", 0),
    "beta2": lambda: OptimizerHyperparameter("betas", 1),
    "eps": lambda: OptimizerHyperparameter("eps"),
}


def _from_spec(name: str, spec: Any) -> HyperparameterSetter:
    if isinstance(spec, str):
        kind, _, target = spec.partition(":")
        if kind == "module" and target:
            return ModuleAttribute(target)
        if kind == "callback" and "." in target:
            callback, _, path = target.partition(".")
            return CallbackAttribute(callback, path)
        raise ValueError(
            f"Setter for `{name}` must look like 'module:attr.path' or 'callback:ClassName.attr', got {spec!r}."
        )
    if isinstance(spec, HyperparameterSetter):
        return spec
    if callable(spec):
        return FunctionSetter(spec)
    raise ValueError(f"Setter for `{name}` must be a setter object, a callable or a string, got {spec!r}.")


def resolve_setters(names: list[str], setters: Mapping[str, Any] | None = None) -> dict[str, HyperparameterSetter]:
    """One setter per hyperparameter name: registered ones first, then built-ins.

    Raises:
        ValueError: for a name with neither (listing the built-ins), or a setter for a name not tuned.
    """
    setters = dict(setters or {})
    stray = sorted(set(setters) - set(names))
    if stray:
        raise ValueError(f"`setters` names {stray}, which are not in `hyperparameters` {sorted(names)}.")
    resolved: dict[str, HyperparameterSetter] = {}
    for name in names:
        if name in setters:
            resolved[name] = _from_spec(name, setters[name])
        elif name in BUILTIN_SETTERS:
            resolved[name] = BUILTIN_SETTERS[name]()
        else:
            raise ValueError(
                f"Unknown hyperparameter `{name}`: it is not built in ({', '.join(sorted(BUILTIN_SETTERS))})"
                " and no setter is registered for it. Pass `setters={'"
                + name
                + "': ModuleAttribute('attr')}` or a CallbackAttribute/callable."
            )
    return resolved
