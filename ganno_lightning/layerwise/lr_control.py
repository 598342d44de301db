"""Per-layer learning-rate control on any ``torch.optim`` optimizer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ganno_lightning.layerwise.actions import (
    DEFAULT_SCALE_BOUNDS,
    apply_multipliers,
    check_scale_bounds,
    clip_scales,
)
from ganno_lightning.layerwise.partition import LayerPartition
from ganno_lightning.layerwise.step_hooks import OutermostStepHooks

#: LR-scheduler attributes (and state-dict keys) that hold one entry per param group. They are
#: expanded when groups are split so that the scheduler keeps driving every new group.
PER_GROUP_SCHEDULER_KEYS = ("base_lrs", "_last_lr", "lr_lambdas", "min_lrs", "max_lrs", "base_momentums", "max_momentums")

#: Marks the param groups this package created; useful to anyone inspecting the optimizer.
AGENT_KEY = "ganno_agent"

#: The param-group key Lightning's ``LearningRateMonitor`` names a group's series after
#: (``lr-<Optimizer>/<name>``); split groups are named after their layer.
NAME_KEY = "name"


class LayerwiseLR:
    """Gives each agent its own param group(s) and an LR *scale* applied on top of the scheduler.

    The user's param groups are split so that every agent owns its own group(s); every
    hyperparameter the user set (weight decay, betas, momentum, custom keys) is copied, and the
    optimizer state, which is keyed by parameter, is untouched. Parameters that no agent controls
    stay in groups of their own with the original settings.

    Each split group is named (its ``"name"`` key, which Lightning's ``LearningRateMonitor`` uses)
    after its layer: ``"net.0"``; ``"<name>/net.0"`` where the original group had a ``"name"``,
    ``"pg<i>/net.0"`` where there are several unnamed original groups. A group of uncontrolled
    parameters keeps the original group's name (``"pg<i>"`` if it had none and there are several).

    The scale is applied only *during* ``optimizer.step()`` through step hooks: the group's
    ``"lr"`` is the scheduler's LR outside the step, so any LR scheduler keeps working and the
    effective LR is ``scheduler_lr * scale``. LR schedulers that keep per-group lists (``base_lrs``
    and friends) have them expanded to the new groups; :meth:`merged_optimizer_state` and
    :meth:`merged_scheduler_state` fold state dicts back into the user's original group structure,
    so checkpoints stay loadable with or without this class.

    Where the user left the implementation to torch (``foreach`` and ``fused`` both ``None``), each
    split group gets torch's default pinned, except Adam and AdamW on a GPU, whose split groups run
    torch's fused kernel: 2 launches per group, so four layers' groups launch about as many kernels
    as the one foreach group they replace (see :func:`_resolved_implementation`).

    Args:
        optimizer: Any ``torch.optim.Optimizer``.
        partition: The agents; parameters outside it are left alone.
        scale_bounds: ``(low, high)``; every scale is clipped to it.
        lr_schedulers: Schedulers attached to ``optimizer`` whose per-group lists must follow the split.
        install_hooks: Register the step hooks that apply the scales. Pass ``False`` when the caller
            calls :meth:`scale_lrs` / :meth:`unscale_lrs` from hooks of its own.

    Raises:
        ValueError: For bounds that are not ``0 < low <= 1 <= high``.

    Example::

        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> control = LayerwiseLR(opt, LayerPartition.from_module(model))
        >>> control.multiply([2.0, 0.5])
        >>> control.effective_lrs()
        [0.2, 0.05]
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        partition: LayerPartition,
        *,
        scale_bounds: tuple[float, float] = DEFAULT_SCALE_BOUNDS,
        lr_schedulers: Sequence[Any] = (),
        install_hooks: bool = True,
    ) -> None:
        self.scale_bounds = check_scale_bounds(scale_bounds)
        self.optimizer = optimizer
        self.partition = partition
        self.scales: list[float] = [1.0] * len(partition)
        #: Multiplier of every group's LR under the scales: an LR prior's factor at this step (see
        #: :class:`~ganno_lightning.layerwise.prior.LRPrior`), 1 without one.
        self.prior_factor = 1.0
        self._schedulers = list(lr_schedulers)
        self._original_params = [list(g["params"]) for g in optimizer.param_groups]
        self._original_hyper = [_hyper(g) for g in optimizer.param_groups]

        new_groups: list[dict[str, Any]] = []
        self.group_origin: list[int] = []  # original group index of each new group
        self.group_agent: list[int | None] = []  # agent of each new group (None: not controlled)
        self._auto_fused: list[bool] = []  # whether each new group runs torch's fused kernel in place of its default
        several = len(optimizer.param_groups) > 1
        for origin, group in enumerate(optimizer.param_groups):
            rest, by_agent = [], {}
            for p in group["params"]:
                agent = partition.agent_of(p)
                (rest if agent is None else by_agent.setdefault(agent, [])).append(p)
            pieces = ([(None, rest)] if rest or not by_agent else []) + sorted(by_agent.items())
            # One layer's parameters can sit in several groups (weights with decay, biases without):
            # the original group's name, or its position, keeps the names unique.
            prefix = group.get(NAME_KEY) or (f"pg{origin + 1}" if several else None)
            for agent, params in pieces:
                implementation = _resolved_implementation(optimizer, group, params)
                hyper = {**_hyper(group), **implementation}
                name = prefix if agent is None else "/".join(map(str, filter(None, (prefix, partition.names[agent]))))
                new_groups.append({**hyper, "params": params, **({} if name is None else {NAME_KEY: name}),
                                   **({} if agent is None else {AGENT_KEY: agent})})
                self.group_origin.append(origin)
                self.group_agent.append(agent)
                self._auto_fused.append(bool(implementation.get("fused")))
        missing = [layer.name for i, layer in enumerate(partition) if i not in self.group_agent]
        if missing:
            raise ValueError(
                f"Agents {missing} own no parameter of the optimizer. Build the partition from the optimizer's "
                "parameters (`LayerPartition.from_module(model, params=...)`)."
            )
        optimizer.param_groups[:] = new_groups
        self._place_fused_steps(on_device=True)
        for scheduler in self._schedulers:
            _remap_per_group(vars(scheduler), len(self._original_params), self.group_origin)
        self._first_group_of_agent = [self.group_agent.index(i) for i in range(len(partition))]
        self._unscaled_lrs: list[Any] | None = None
        self._hooks = OutermostStepHooks(optimizer, self.scale_lrs, self.unscale_lrs) if install_hooks else None

    # -- scales -----------------------------------------------------------------------------------
    def set_scales(self, scales: Sequence[float]) -> None:
        """Set every agent's scale, clipped to ``scale_bounds``."""
        if len(scales) != len(self.scales):
            raise ValueError(f"Expected {len(self.scales)} scales (one per agent), got {len(scales)}.")
        self.scales = clip_scales(scales, self.scale_bounds)

    def multiply(self, multipliers: Sequence[float]) -> None:
        """Multiply every agent's scale by its multiplier (cumulative actions), then clip."""
        self.scales = apply_multipliers(self.scales, multipliers, self.scale_bounds)

    def base_lrs(self) -> list[float]:
        """The scheduler's (unscaled) LR of each agent's first param group."""
        return [float(self.optimizer.param_groups[g]["lr"]) for g in self._first_group_of_agent]

    def effective_lrs(self) -> list[float]:
        """The LR each agent's first param group steps with: ``scheduler_lr * scale`` (``* prior_factor`` first, if set)."""
        prior = self.prior_factor
        if prior != 1.0:
            return [lr * prior * s for lr, s in zip(self.base_lrs(), self.scales)]
        return self.anchor_lrs()

    def anchor_lrs(self) -> list[float]:
        """``scheduler_lr * scale`` per agent: the LR a prior decays from (the effective LR when there is none)."""
        return [lr * s for lr, s in zip(self.base_lrs(), self.scales)]

    # -- step hooks -------------------------------------------------------------------------------
    def scale_lrs(self) -> None:
        """Multiply each agent's group LRs by its scale, and every group's by ``prior_factor`` (right before the update)."""
        if self._unscaled_lrs is not None:  # the previous step raised before the post-hook ran
            self.unscale_lrs()
        groups = self.optimizer.param_groups
        self._unscaled_lrs = [g["lr"] for g in groups]
        prior = self.prior_factor
        for group, agent in zip(groups, self.group_agent):
            if agent is not None:
                # the same products, in the same order, as `effective_lrs`
                group["lr"] = (group["lr"] * prior if prior != 1.0 else group["lr"]) * self.scales[agent]
            elif prior != 1.0:  # a prior stands in for the user's missing scheduler: for every group
                group["lr"] = group["lr"] * prior

    def unscale_lrs(self) -> None:
        """Give the groups back the scheduler's LRs (right after the update)."""
        if self._unscaled_lrs is None:
            return
        for group, lr in zip(self.optimizer.param_groups, self._unscaled_lrs):
            group["lr"] = lr
        self._unscaled_lrs = None

    def _place_fused_steps(self, on_device: bool) -> None:
        """Move the ``step`` counters of the groups switched to the fused kernel to the parameters'
        device (where that kernel keeps them) or back to the CPU (where torch's foreach and
        single-tensor Adam keep them: on a GPU they would cost a host sync per parameter per step)."""
        if not any(self._auto_fused):
            return
        dtype = _scalar_dtype(fused=on_device)
        for group, auto in zip(self.optimizer.param_groups, self._auto_fused):
            for p in group["params"] if auto else ():
                state = self.optimizer.state.get(p)
                if state and torch.is_tensor(state.get("step")):
                    state["step"] = state["step"].to(device=p.device if on_device else "cpu", dtype=dtype)

    # -- checkpoints ------------------------------------------------------------------------------
    def merged_optimizer_state(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """Fold a state dict of the split optimizer back into the user's original param groups.

        Groups added after the split (e.g. by ``BackboneFinetuning``) are kept as they are, after
        the original ones; a step interrupted by an exception does not leak scaled LRs.
        """
        groups = state_dict["param_groups"]
        if len(groups) != len(self.optimizer.param_groups):
            raise ValueError(
                f"Optimizer state has {len(groups)} param groups, the split optimizer has "
                f"{len(self.optimizer.param_groups)}; it was not produced by this optimizer."
            )
        if self._unscaled_lrs is not None:
            groups = [{**g, "lr": lr} for g, lr in zip(groups, self._unscaled_lrs)]
        saved_index = {
            id(p): idx
            for group, saved in zip(self.optimizer.param_groups, groups)
            for p, idx in zip(group["params"], saved["params"])
        }
        # step counters of groups switched to the fused kernel go back to the CPU, where the user's own groups keep them
        fused_index = {idx for saved, auto in zip(groups, self._auto_fused) if auto for idx in saved["params"]}
        split = len(self.group_origin)
        extra = [(list(g["params"]), _hyper(saved)) for g, saved in zip(self.optimizer.param_groups[split:], groups[split:])]
        state, merged_groups, next_index = {}, [], 0
        for params, hyper in [*zip(self._original_params, self._merged_hypers(groups[:split])), *extra]:
            indices = []
            for p in params:
                old = saved_index[id(p)]
                if old in state_dict["state"]:
                    param_state = state_dict["state"][old]
                    if old in fused_index and torch.is_tensor(param_state.get("step")):
                        param_state = {**param_state, "step": param_state["step"].to("cpu", _scalar_dtype(fused=False))}
                    state[next_index] = param_state
                indices.append(next_index)
                next_index += 1
            merged_groups.append({**hyper, "params": indices})
        return {"state": state, "param_groups": merged_groups}

    def _merged_hypers(self, split_groups: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each original group's hyperparameters, as its first split group now holds them."""
        hypers = []
        for origin in range(len(self._original_params)):
            first = next((g for g, o in zip(split_groups, self.group_origin) if o == origin), None)
            hyper = _hyper(first) if first is not None else dict(self._original_hyper[origin])
            hyper.pop(AGENT_KEY, None)
            hyper.pop(NAME_KEY, None)
            if NAME_KEY in self._original_hyper[origin]:
                hyper[NAME_KEY] = self._original_hyper[origin][NAME_KEY]
            for key in ("foreach", "fused"):  # undo _resolved_implementation: a resumed checkpoint picks its own
                if key in hyper and self._original_hyper[origin].get(key, False) is None:
                    hyper[key] = None
            hypers.append(hyper)
        return hypers

    def merged_scheduler_state(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """Fold a scheduler state dict's per-group lists back to the original param groups."""
        merged = dict(state_dict)
        _remap_per_group(merged, len(self.group_origin), self._first_group_of_origin(), copy=True)
        return merged

    def _first_group_of_origin(self) -> list[int]:
        return [self.group_origin.index(origin) for origin in range(len(self._original_params))]

    def close(self) -> None:
        """Remove the hooks and give the optimizer and schedulers back their original groups."""
        self.unscale_lrs()  # a step that raised may have left scaled LRs behind
        self._place_fused_steps(on_device=False)
        if self._hooks is not None:
            self._hooks.remove()
            self._hooks = None
        groups = self.optimizer.param_groups
        split = len(self.group_origin)
        restored = [{**hyper, "params": params}
                    for params, hyper in zip(self._original_params, self._merged_hypers(groups[:split]))]
        first_of_origin = self._first_group_of_origin()
        for scheduler in self._schedulers:
            _remap_per_group(vars(scheduler), split, first_of_origin)
        groups[:] = restored + groups[split:]


# torch optimizers whose functional API resolves ``foreach=None`` (with ``fused`` unset) through
# ``_default_to_fused_or_foreach`` on every step. Others (Adafactor: None means off) are left alone.
_FOREACH_DEFAULT_OPTIMIZERS = tuple(
    getattr(torch.optim, name) for name in ("SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "Adamax", "ASGD",
                                            "NAdam", "RAdam", "RMSprop", "Rprop") if hasattr(torch.optim, name))

#: Optimizers whose split groups run torch's fused kernel, on :data:`FUSED_DEVICE_TYPES`, where the
#: user left both ``foreach`` and ``fused`` at ``None`` (see :func:`_resolved_implementation`).
_FUSED_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW)
FUSED_DEVICE_TYPES: tuple[str, ...] = ("cuda",)


def _resolved_implementation(optimizer: torch.optim.Optimizer, group: dict[str, Any],
                             params: Sequence[torch.Tensor]) -> dict[str, Any]:
    """The implementation a split group runs, where a torch optimizer's group left ``foreach`` and ``fused`` at ``None``.

    Splitting one group into one per layer multiplies the per-group cost of ``step()``:

    - With ``foreach=None`` torch resolves the implementation on every ``step()`` of every group
      (on a 4-layer MLP ~7 of the split's ~12 us per step on a CPU). The default depends only on
      where the parameters live, so it is resolved once here: ``{"foreach": <torch's default>}``.
    - On a GPU torch's default is foreach Adam: 7 kernel launches and 5 host-side ops per group, and
      a small-batch GPU step is launch-bound (an H200 stepped a 10.5M-parameter 4-layer MLP 40%
      slower with GANNOCallback; counted in aten ops, the 3 extra groups are 36 of its 41 extra ops
      per step). There, Adam and AdamW groups run torch's fused kernel instead,
      ``{"foreach": False, "fused": True}``: 2 launches per group and no host-side op, so four
      groups cost about what the one foreach group did. Same algorithm and hyperparameters; the
      float rounding differs from foreach in the last bits. The CPU keeps torch's default (results
      there are unchanged).

    :meth:`LayerwiseLR._merged_hypers` writes ``None`` back into checkpoints. Empty unless the
    optimizer is one of :data:`_FOREACH_DEFAULT_OPTIMIZERS` (not a subclass) whose group leaves
    both ``foreach`` and ``fused`` at ``None``, and torch's rule cannot differ (a differentiable
    optimizer, a tensor LR).
    """
    if (type(optimizer) not in _FOREACH_DEFAULT_OPTIMIZERS or "foreach" not in group or group["foreach"] is not None
            or group.get("fused") is not None or group.get("differentiable")
            or isinstance(group.get("lr"), torch.Tensor) or not params):
        return {}
    try:
        from torch.optim.optimizer import _default_to_fused_or_foreach
    except ImportError:  # a torch without the helper: leave the group as it is
        return {}
    if (type(optimizer) in _FUSED_OPTIMIZERS and "fused" in group and not group.get("capturable")
            and all(p.device.type in FUSED_DEVICE_TYPES for p in params)
            and _default_to_fused_or_foreach(list(params), differentiable=False, use_fused=True)[0]):
        return {"foreach": False, "fused": True}
    _, foreach = _default_to_fused_or_foreach(list(params), differentiable=False, use_fused=False)
    return {"foreach": bool(foreach)}


def _scalar_dtype(fused: bool) -> torch.dtype:
    """The dtype torch's Adam keeps its ``step`` counter in (float32 for the fused kernel)."""
    try:
        from torch.optim.optimizer import _get_scalar_dtype
    except ImportError:
        return torch.float32
    return _get_scalar_dtype(is_fused=fused or None)


def _hyper(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k != "params"}


def _remap_per_group(attrs: dict[str, Any], n_from: int, index: Sequence[int], copy: bool = False) -> None:
    """Re-index every per-group list in a scheduler's ``vars()`` or state dict, recursing into
    ``_schedulers`` (SequentialLR, ChainedScheduler)."""
    for key in PER_GROUP_SCHEDULER_KEYS:
        value = attrs.get(key)
        if isinstance(value, (list, tuple)) and len(value) == n_from:
            attrs[key] = type(value)(value[i] for i in index)
    children = attrs.get("_schedulers")
    if isinstance(children, (list, tuple)):
        remapped = []
        for child in children:
            if isinstance(child, dict):
                child = dict(child) if copy else child
                _remap_per_group(child, n_from, index, copy)
            else:
                _remap_per_group(vars(child), n_from, index, copy)
            remapped.append(child)
        attrs["_schedulers"] = type(children)(remapped)
