"""Per-layer training dynamics between two decisions, turned into the features agents observe."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ganno_lightning.layerwise.features import (
    ALL_FEATURE_NAMES,
    FEATURE_CLIP,
    FEATURE_NAMES,
    GLOBAL_FEATURES,
    LR_PROBE_FEATURES,
    LR_PROBE_MULTIPLIERS,
    resolve_feature_names,
)
from ganno_lightning.layerwise.partition import LayerPartition
from ganno_lightning.layerwise.step_hooks import OutermostStepHooks

_COLUMN = {name: i for i, name in enumerate(ALL_FEATURE_NAMES)}
# A row is [measured per layer | fixed per layer | run-wide]; `features` builds it from these parts.
_MEASURED = ("log_scale", "log_lr", "log_weight_rms", "log_grad_rms", "log_update_ratio", "grad_consistency")
_FIXED = slice(len(_MEASURED), len(FEATURE_NAMES) - len(GLOBAL_FEATURES))
assert FEATURE_NAMES[:len(_MEASURED)] == _MEASURED and FEATURE_NAMES[_FIXED.stop:] == GLOBAL_FEATURES
_TINY = 1e-30
_LOG_FLOOR = 1e-12


class LayerObserver:
    """Accumulates each agent's statistics over an interval and computes its features.

    Everything is accumulated on the parameters' device without host synchronisation; the only
    sync is the single transfer in :meth:`features`. Every statistic (weight and gradient RMS,
    update size, gradient consistency) is measured on a fixed random *sketch* of at most
    ``sketch_size`` positions per agent: exact for layers smaller than that, an estimate within a
    few percent for larger ones. So no buffer and no per-step cost grow with the model: the
    callback never reads a whole layer (measured: a full pass over a 10M-parameter model's
    gradients cost more than the whole 1% overhead budget on CPU).

    Gradients are read right after ``optimizer.step()`` (after unscaling and clipping, so they are
    the gradients actually applied), on ``grad_samples`` evenly spaced steps of each interval. When
    ``update_grad_cos`` is observed, the weights' sketch is also read after the two steps before
    each sample (from their difference, the update that preceded the sampled gradient).

    Args:
        partition: The agents.
        interval: Optimizer steps between decisions.
        total_steps: Optimizer steps of the whole run, or ``None`` when unknown.
        grad_samples: Optimizer steps per interval whose gradients are measured.
        sketch_size: Weights per agent tracked for update size and gradient consistency.
        loss_ema: Smoothing of the interval-mean loss for the ``log_loss`` feature.
        seed: Seed of the sketch's random positions (the same seed gives the same features).
        feature_names: The features :meth:`features` returns, in order: a set's name or a list of
            :data:`~ganno_lightning.layerwise.features.ALL_FEATURE_NAMES` (default: the default set).

    Example::

        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> observer = LayerObserver(LayerPartition.from_module(model), interval=2)
        >>> _ = observer.attach(opt)
        >>> for _ in range(2):
        ...     loss = model(torch.randn(8, 3)).pow(2).mean()
        ...     opt.zero_grad(); loss.backward(); opt.step(); observer.record_loss(loss.detach())
        >>> observer.features(scales=[1.0, 1.0], lrs=[0.1, 0.1]).shape
        torch.Size([2, 23])
    """

    def __init__(
        self,
        partition: LayerPartition,
        *,
        interval: int,
        total_steps: int | None = None,
        grad_samples: int = 2,
        sketch_size: int = 1024,
        loss_ema: float = 0.9,
        seed: int = 0,
        feature_names: str | Sequence[str] | None = None,
    ) -> None:
        if not isinstance(interval, int) or interval <= 0:
            raise ValueError(f"`interval` must be a positive int, got {interval!r}.")
        if not isinstance(grad_samples, int) or grad_samples <= 0:
            raise ValueError(f"`grad_samples` must be a positive int, got {grad_samples!r}.")
        if not isinstance(sketch_size, int) or sketch_size <= 0:
            raise ValueError(f"`sketch_size` must be a positive int, got {sketch_size!r}.")
        if total_steps is not None and total_steps <= 0:
            raise ValueError(f"`total_steps` must be a positive int or None, got {total_steps!r}.")
        self.partition = partition
        self.interval = interval
        self.total_steps = total_steps
        self.loss_ema = loss_ema
        self.feature_names = resolve_feature_names(feature_names, "feature_names")
        self._columns = None if self.feature_names == ALL_FEATURE_NAMES else [_COLUMN[f] for f in self.feature_names]
        self._measures_hypergradient = "update_grad_cos" in self.feature_names
        #: Whether a step-0 probe should also measure :data:`LR_PROBE_FEATURES` (see :meth:`record_lr_probe`).
        self.measures_lr_probe = any(name in self.feature_names for name in LR_PROBE_FEATURES)
        n = len(partition)
        self._params = [p for layer in partition for p in layer.params]
        self.device = self._params[0].device
        self.grad_samples = grad_samples
        self._sketch_index, sketch_agent = _sketch_positions(partition, sketch_size, seed)
        self._sketch_agent = torch.tensor(sketch_agent, dtype=torch.long, device=self.device)
        # Positions come agent by agent, so per-agent sums of a [4, positions] table are segment sums
        # (2x faster than index_add_ along dim 1, and the same float sums).
        in_agent_order = bool((self._sketch_agent[1:] >= self._sketch_agent[:-1]).all())
        assert in_agent_order, "sketch positions must come agent by agent"
        positions_per_agent = torch.bincount(self._sketch_agent, minlength=n)
        self._sketch_lengths = positions_per_agent
        self._sketch_counts = [float(c) for c in positions_per_agent.tolist()]
        self._fixed_rows = [row[_FIXED] for row in _static_table(partition).tolist()]
        self._zeros = torch.zeros(n, device=self.device)

        self.step = 0  # optimizer steps taken since the start of the run
        self.steps_in_interval = 0
        self._prev_loss: float | None = None
        self._initial_loss: float | None = None
        self._smoothed_loss: float | None = None
        self._val_loss: Tensor | None = None
        self._lr_probe = torch.zeros(len(LR_PROBE_MULTIPLIERS) + 1, device=self.device)  # L_0, then L_m; 0: none
        self.start_interval()

    # -- recording ----------------------------------------------------------------------------
    def attach(self, optimizer: torch.optim.Optimizer) -> OutermostStepHooks:
        """Measure gradients and count steps after every ``optimizer.step()``.

        After, not before: Lightning (and any closure-based loop) computes the gradients inside
        ``step(closure)``, so they exist only once the step has run; they are still the gradients
        that were applied (unscaled and clipped), since ``zero_grad`` comes later.
        """
        return OutermostStepHooks(optimizer, post=self.after_step)

    def after_step(self, applied: bool = True) -> None:
        """Count one optimizer step; measure its gradients if a gradient sample is due.

        A step the optimizer skipped (``applied=False``: a GradScaler found inf/NaN gradients and
        did not update) is counted, so decisions stay every ``interval`` optimizer steps as the
        trainer counts them, but its gradients are not read: they are not the ones applied. A
        sample due on a skipped step is taken on the next applied step of the interval.
        """
        self.step += 1
        self.steps_in_interval += 1
        if applied and self._grad_count < self._samples_due[min(self.steps_in_interval, self.interval_length)]:
            self.sample_gradients()
        roles = self._update_roles.get(self.steps_in_interval)
        if roles:  # after the sample: a step can end one update pair and start the next
            weights = self._gather(lambda i: self._params[i].detach())
            if "end" in roles and self._update_start is not None:
                self._last_update = weights - self._update_start
            self._update_start = weights if "start" in roles else None

    def sample_gradients(self) -> None:
        """Measure the parameters' current gradients into this interval's statistics.

        Called after the sampling steps of an interval, and by a probe (a forward/backward without
        an update, see :meth:`LayerwiseController.probe
        <ganno_lightning.layerwise.controller.LayerwiseController.probe>`).
        """
        grads = [p.grad for p in self._params]
        if all(g is None for g in grads):
            return
        self._grad_count += 1
        sketch = self._gather(lambda i: None if grads[i] is None else _dense(grads[i]))
        self._grad_sketch_sum += sketch
        if self._last_update is not None:  # the update right before this gradient: hypergradient terms
            update, self._last_update = self._last_update, None
            self._hypergradient_sums += self._per_agent_sums(torch.stack([update * sketch, update.square(),
                                                                         sketch.square()]))
        if self.device.type == "cuda":  # index_add_ sums with atomics there, in an order that varies run to run
            self._grad_sketch_sq += torch.segment_reduce(sketch.square(), "sum", lengths=self._sketch_lengths,
                                                         unsafe=True)
        else:  # in order on the CPU; the shipped agent's pinned decisions were recorded with these sums
            self._grad_sketch_sq.index_add_(0, self._sketch_agent, sketch.square())

    def record_loss(self, loss: Tensor | float) -> None:
        """Record one (micro-)batch's training loss; no host sync."""
        if not (isinstance(loss, Tensor) and loss.dim() == 0 and loss.device == self.device):
            loss = torch.as_tensor(loss).reshape(()).to(self.device)
        self._losses.append(loss.detach() if loss.requires_grad else loss)  # callers usually detach already

    def record_lr_probe(self, losses: Sequence[Tensor]) -> None:
        """Record the probe batch's loss before the first update, then after it scaled by each of
        :data:`~ganno_lightning.layerwise.features.LR_PROBE_MULTIPLIERS`; kept for the rest of the run. No host sync."""
        if len(losses) != len(LR_PROBE_MULTIPLIERS) + 1:
            raise ValueError(f"`losses`: expected {len(LR_PROBE_MULTIPLIERS) + 1} (before, then one per multiplier "
                             f"{LR_PROBE_MULTIPLIERS}), got {len(losses)}.")
        self._lr_probe = torch.stack([torch.as_tensor(x).detach().float().reshape(()).to(self.device)
                                      for x in losses])

    def record_val_loss(self, loss: Tensor | float) -> None:
        """Record the latest validation loss (used until the next one is recorded)."""
        self._val_loss = torch.as_tensor(loss).detach().float().reshape(()).to(self.device)

    def start_interval(self, length: int | None = None) -> None:
        """Reset the interval's accumulators and snapshot the weights' sketch.

        Args:
            length: Optimizer steps until the next decision (``interval`` when ``None``); the
                gradients are measured on ``grad_samples`` evenly spaced steps of it.
        """
        self._set_interval_length(self.interval if length is None else length)
        self.steps_in_interval = 0
        self._losses: list[Tensor] = []
        self._grad_count = 0
        self._grad_sketch_sum = torch.zeros(len(self._sketch_agent), device=self.device)
        self._grad_sketch_sq = self._zeros.clone()
        self._hypergradient_sums = self._zeros.expand(3, -1).clone()  # sum u.g, sum |u|^2, sum |g|^2 per agent
        self._update_start: Tensor | None = None
        self._last_update: Tensor | None = None
        self._weight_sketch_start = self._gather(lambda i: self._params[i].detach())

    def _set_interval_length(self, length: int) -> None:
        self.interval_length = length
        k = min(self.grad_samples, length)
        self._sample_steps = {math.ceil((j + 1) * length / k) for j in range(k)}
        # Samples due by each step of the interval: a step samples while fewer have been taken.
        self._samples_due = [sum(s <= p for s in self._sample_steps) for p in range(length + 1)]
        # The weights are read after steps s-2 and s-1 of a sample at step s (s >= 3): their
        # difference is the update made just before the sampled gradient.
        self._update_roles: dict[int, set[str]] = {}
        if self._measures_hypergradient:
            for s in self._sample_steps:
                if s >= 3:
                    self._update_roles.setdefault(s - 2, set()).add("start")
                    self._update_roles.setdefault(s - 1, set()).add("end")

    # -- features -----------------------------------------------------------------------------
    def features(
        self,
        scales: Sequence[float],
        lrs: Sequence[float],
        reduce_fn: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """Compute the ``[num_agents, len(feature_names)]`` observation on the CPU, always finite.

        Args:
            scales: Each agent's current LR scale.
            lrs: Each agent's effective LR.
            reduce_fn: Averages a tensor over distributed ranks (e.g. ``strategy.reduce``), so that
                every rank observes the same values.
        """
        n = len(self.partition)
        start, now = self._weight_sketch_start, self._gather(lambda i: self._params[i].detach())
        sketch_terms = torch.stack([now, now - start, start, self._grad_sketch_sum]).square()
        per_agent = self._per_agent_sums(sketch_terms)
        val = self._val_loss if self._val_loss is not None else self._zeros[:1]
        losses = torch.stack(self._losses) if self._losses else self._zeros[:0]
        raw = torch.cat([per_agent.reshape(-1), self._grad_sketch_sq, self._hypergradient_sums.reshape(-1),
                         self._lr_probe, val.reshape(1).float(), losses.float()])
        if reduce_fn is not None:  # every rank records the same steps, so each step's loss is averaged
            raw = reduce_fn(raw)
        raw = raw.cpu().tolist()  # the one host sync of a decision (float32 -> float is exact)
        # Host side in plain floats: a few hundred numbers, far cheaper than tiny tensor ops.
        weight_sq, update_sq, start_sq, cons_num, grad_sq, hyper_dot, hyper_u_sq, hyper_g_sq = (
            raw[i * n:(i + 1) * n] for i in range(8))
        probe_end = 8 * n + len(self._lr_probe)
        lr_probe, val_loss, step_losses = raw[8 * n:probe_end], raw[probe_end], raw[probe_end + 1:]
        loss_sum, loss_sq_sum = sum(step_losses), sum(x * x for x in step_losses)
        k = max(self._grad_count, 1)
        per_layer = {
            "log_scale": [_log_scalar(x) for x in scales],
            "log_lr": [_log_scalar(x) for x in lrs],
            "log_weight_rms": [0.5 * _log_scalar(w / m) for w, m in zip(weight_sq, self._sketch_counts)],
            "log_grad_rms": [0.5 * _log_scalar(g / (m * k)) for g, m in zip(grad_sq, self._sketch_counts)],
            "log_update_ratio": [0.5 * _log_scalar(u / (s + _TINY)) for u, s in zip(update_sq, start_sq)],
            "grad_consistency": [min(max(c / (k * d + _TINY), 0.0), 1.0) if math.isfinite(c / (k * d + _TINY))
                                 else 0.0 for c, d in zip(cons_num, grad_sq)],
            "update_grad_cos": [_cosine(d, u, g) for d, u, g in zip(hyper_dot, hyper_u_sq, hyper_g_sq)],
        }

        count = len(self._losses)
        total = self.total_steps
        loss = loss_sum / count if count else (self._prev_loss if self._prev_loss is not None else 0.0)
        if count and math.isfinite(loss):
            self._smoothed_loss = loss if self._smoothed_loss is None else (
                self.loss_ema * self._smoothed_loss + (1 - self.loss_ema) * loss)
        smoothed = self._smoothed_loss if self._smoothed_loss is not None else loss
        if self._initial_loss is None and count and math.isfinite(loss):
            self._initial_loss = loss
        variance = max(loss_sq_sum / count - loss * loss, 0.0) if count > 1 else 0.0
        has_val = self._val_loss is not None
        run = {
            "progress": min(self.step / total, 1.0) if total else 0.0,
            "progress_unknown": 0.0 if total else 1.0,
            "log_loss": _log_scalar(smoothed),
            "log_loss_ratio": (_log_scalar(loss) - _log_scalar(self._prev_loss) if math.isfinite(loss) else FEATURE_CLIP)
            if self._prev_loss is not None and count else 0.0,
            "loss_volatility": math.sqrt(variance) / max(abs(loss), _LOG_FLOOR) if count > 1 else 0.0,
            "log_val_loss_ratio": _log_scalar(val_loss) - _log_scalar(smoothed) if has_val else 0.0,
            "has_val_loss": float(has_val),
            "net_log_grad_rms": _mean(per_layer["log_grad_rms"]),
            "net_log_update_ratio": _mean(per_layer["log_update_ratio"]),
            "log_loss_vs_initial": _log_scalar(smoothed) - _log_scalar(self._initial_loss)
            if self._initial_loss is not None else 0.0,
        }
        if count and math.isfinite(loss):
            self._prev_loss = loss
        self.last_interval_loss = loss if count else float("nan")
        self.last_interval_loss_count = count
        run_part = [_finite(run[name]) for name in GLOBAL_FEATURES]
        measured = zip(*([_finite(x) for x in per_layer[name]] for name in _MEASURED))
        probe_part = _lr_probe_changes(lr_probe)
        log_total_steps = _finite(math.log(total)) if total else 0.0
        # in ALL_FEATURE_NAMES' order (a test checks the row's length against it)
        rows = [[*own, *fixed, *run_part, _finite(cos), _finite(run["log_loss_vs_initial"]), *probe_part,
                 log_total_steps]
                for own, fixed, cos in zip(measured, self._fixed_rows, per_layer["update_grad_cos"], strict=True)]
        if self._columns is not None:
            rows = [[row[c] for c in self._columns] for row in rows]
        return torch.tensor(rows, dtype=torch.float32)

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # Copies, also on the CPU: the accumulators change in place as training goes on after a save.
        return {
            "step": self.step,
            "steps_in_interval": self.steps_in_interval,
            "interval_length": self.interval_length,
            "prev_loss": self._prev_loss,
            "initial_loss": self._initial_loss,
            "smoothed_loss": self._smoothed_loss,
            "val_loss": None if self._val_loss is None else self._val_loss.to("cpu", copy=True),
            "lr_probe": self._lr_probe.to("cpu", copy=True),
            "losses": torch.stack(self._losses).to("cpu", copy=True) if self._losses else torch.zeros(0),
            "grad_count": self._grad_count,
            "grad_sketch_sum": self._grad_sketch_sum.to("cpu", copy=True),
            "grad_sketch_sq": self._grad_sketch_sq.to("cpu", copy=True),
            "weight_sketch_start": self._weight_sketch_start.to("cpu", copy=True),
            "hypergradient_sums": self._hypergradient_sums.to("cpu", copy=True),
            "update_start": None if self._update_start is None else self._update_start.to("cpu", copy=True),
            "last_update": None if self._last_update is None else self._last_update.to("cpu", copy=True),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("weight_sketch_start") is not None and len(state["weight_sketch_start"]) != len(self._sketch_agent):
            raise ValueError("Observer state does not match this model: the weight sketch has a different size.")
        to = lambda t: t.to(self.device, copy=True)  # noqa: E731  (the caller keeps its state unchanged)
        self.step = int(state.get("step", 0))
        self.steps_in_interval = int(state.get("steps_in_interval", 0))
        self._set_interval_length(int(state.get("interval_length", self.interval)))
        self._prev_loss = state.get("prev_loss")
        self._initial_loss = state.get("initial_loss", self._prev_loss)  # older states: the closest there is
        self._smoothed_loss = state.get("smoothed_loss")
        self._val_loss = None if state.get("val_loss") is None else to(state["val_loss"])
        if state.get("lr_probe") is not None and len(state["lr_probe"]) == len(self._lr_probe):
            self._lr_probe = to(state["lr_probe"])
        self._losses = [to(x) for x in state.get("losses", torch.zeros(0))]
        self._grad_count = int(state.get("grad_count", 0))
        self._grad_sketch_sum = to(state.get("grad_sketch_sum", self._grad_sketch_sum))
        self._grad_sketch_sq = to(state.get("grad_sketch_sq", self._grad_sketch_sq))
        self._weight_sketch_start = to(state.get("weight_sketch_start", self._weight_sketch_start))
        self._hypergradient_sums = to(state.get("hypergradient_sums", self._hypergradient_sums))
        self._update_start = None if state.get("update_start") is None else to(state["update_start"])
        self._last_update = None if state.get("last_update") is None else to(state["last_update"])

    # -- helpers ------------------------------------------------------------------------------
    def _per_agent_sums(self, rows: Tensor) -> Tensor:
        """``[r, positions]`` -> ``[r, num_agents]``: each row summed over each agent's sketch positions."""
        if self.device.type in ("cpu", "cuda"):  # the devices segment_reduce has kernels for; a fixed order
            lengths = self._sketch_lengths.expand(len(rows), -1).contiguous()
            # unsafe: the lengths were checked at construction; the check would sync with the host on CUDA
            return torch.segment_reduce(rows, "sum", lengths=lengths, axis=1, unsafe=True)
        return torch.zeros(len(rows), len(self.partition), device=self.device).index_add_(1, self._sketch_agent, rows)

    def _gather(self, tensor_of: Callable[[int], Tensor | None]) -> Tensor:
        """The sketch positions of ``tensor_of(param_index)`` for every parameter, concatenated."""
        pieces = []
        for i, index, whole in self._sketch_index:
            t = tensor_of(i)
            if t is None:
                pieces.append(torch.zeros(len(index), device=self.device))
            elif whole and t.dtype == torch.float32 and t.device == self.device:
                pieces.append(t.reshape(-1))  # the sketch is the whole tensor: cat copies it once
            else:
                pieces.append(t.reshape(-1).index_select(0, index).float().to(self.device))
        return torch.cat(pieces) if pieces else torch.zeros(0, device=self.device)


def _sketch_positions(
    partition: LayerPartition, size: int, seed: int
) -> tuple[list[tuple[int, Tensor, bool]], list[int]]:
    """Fixed random positions (at most ``size`` per agent) into each parameter's flat view.

    Returns ``(param_index, positions, whole)`` per sketched parameter (``whole``: every position,
    in order) and the agent of each sketch position.
    """
    per_param: list[tuple[int, Tensor, bool]] = []
    agent_of_position: list[int] = []
    param_index = 0
    for agent, layer in enumerate(partition):
        numel = layer.numel
        if numel <= size:
            chosen = torch.arange(numel)
        else:
            generator = torch.Generator().manual_seed(seed * 100_003 + agent)
            chosen = torch.randint(0, numel, (size,), generator=generator).unique()
        offset = 0
        for p in layer.params:
            local = chosen[(chosen >= offset) & (chosen < offset + p.numel())] - offset
            if len(local):
                whole = len(local) == p.numel() and numel <= size
                per_param.append((param_index, local.to(p.device), whole))
                agent_of_position += [agent] * len(local)
            offset += p.numel()
            param_index += 1
    return per_param, agent_of_position


def _static_table(partition: LayerPartition) -> Tensor:
    """A ``[num_agents, num_features]`` float64 table with the features that never change filled in."""
    n = len(partition)
    table = torch.zeros(n, len(FEATURE_NAMES), dtype=torch.float64)
    table[:, _COLUMN["depth"]] = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    table[:, _COLUMN["log_param_count"]] = torch.tensor([math.log(layer.numel) for layer in partition],
                                                        dtype=torch.float64)
    for i, layer in enumerate(partition):
        table[i, _COLUMN[f"kind_{layer.kind}"]] = 1.0
    return table


def _dense(grad: Tensor) -> Tensor:
    return grad.to_dense() if grad.is_sparse else grad


def _log_scalar(x: float | None) -> float:
    """log(x) floored at log(1e-12); +inf stays +inf (clipped later), NaN and None read as 0."""
    if x is None or x != x:
        return 0.0
    return math.log(max(x, _LOG_FLOOR)) if x != math.inf else math.inf


def _cosine(dot: float, u_sq: float, g_sq: float) -> float:
    """``dot / (|u| |g|)`` in [-1, 1]; 0 without both vectors."""
    norm = math.sqrt(u_sq * g_sq)
    return min(max(dot / norm, -1.0), 1.0) if norm > _TINY and math.isfinite(dot / norm) else 0.0


def _lr_probe_changes(losses: Sequence[float]) -> list[float]:
    """``(L_m - L_0) / |L_0|`` per probe multiplier, in [-1, 3]; 3 for a non-finite L_m; zeros without a probe."""
    before, after = losses[0], losses[1:]
    if before == 0.0 or not math.isfinite(before):  # no probe was recorded (or it saw no usable loss)
        return [0.0] * len(after)
    return [min(max((x - before) / abs(before), -1.0), 3.0) if math.isfinite(x) else 3.0 for x in after]


def _mean(values: Sequence[float]) -> float:
    """The mean of the finite-clipped ``values`` (0 for none)."""
    return sum(_finite(x) for x in values) / len(values) if values else 0.0


def _finite(x: float) -> float:
    if x != x:
        return 0.0
    return min(max(x, -FEATURE_CLIP), FEATURE_CLIP)
