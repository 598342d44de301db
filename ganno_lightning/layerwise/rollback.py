"""Recover from a loss spike instead of dying: put back the last good state and cut the LR."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ganno_lightning.config import optional_settings

#: Defaults of the spike rule: an interval mean above 3x the lowest so far; each rollback halves the LRs.
DEFAULT_SPIKE_FACTOR = 3.0
DEFAULT_SPIKE_LR_CUT = 0.5
#: Rollbacks in a row to one state before a finite loss level is accepted as the new normal: by then
#: the LRs are 2^8 = 256x lower (or at their bound), so a loss still that high is not the LR's doing.
MAX_ROLLBACKS_IN_A_ROW = 8


def check_spike_settings(spike_factor: float, spike_lr_cut: float, prefix: str = "",
                         factor_name: str = "spike_factor") -> tuple[float, float]:
    """``(spike_factor, spike_lr_cut)`` if valid, else a ``ValueError`` naming the argument
    (``prefix`` + ``factor_name`` for the factor: the env calls it ``env.divergence_factor``)."""
    if not (isinstance(spike_factor, (int, float)) and spike_factor > 1):
        raise ValueError(f"`{prefix}{factor_name}` must be a number > 1 (a loss above this times its lowest interval "
                         f"mean is a spike; e.g. 3.0), got {spike_factor!r}.")
    if not (isinstance(spike_lr_cut, (int, float)) and 0 < spike_lr_cut < 1):
        raise ValueError(f"`{prefix}spike_lr_cut` must be in (0, 1) (what a rollback multiplies every LR by; "
                         f"e.g. 0.5), got {spike_lr_cut!r}.")
    return float(spike_factor), float(spike_lr_cut)


#: Where a rollback keeps its copy: ``"host"`` (CPU memory; no accelerator memory) or ``"device"`` (beside the tensors).
ROLLBACK_MEMORY = ("host", "device")


def check_rollback_memory(memory: Any, name: str = "rollback_memory") -> str:
    """``memory`` if it is one of :data:`ROLLBACK_MEMORY`, else a ``ValueError`` naming ``name``."""
    if memory not in ROLLBACK_MEMORY:
        raise ValueError(f"`{name}` must be one of {list(ROLLBACK_MEMORY)} (where the copy of weights and optimizer "
                         f"state is kept), got {memory!r}.")
    return memory


@dataclass(frozen=True)
class SpikeRule:
    """The spike rule an agent file records for its deployed fits (:class:`GANNOCallback` applies it by default).

    Args:
        spike_factor: An interval mean above this times the lowest so far is a spike (> 1).
        spike_lr_cut: What a rollback multiplies every LR by, in (0, 1).

    Raises:
        ValueError: For a factor <= 1 or a cut outside (0, 1), naming the field.
    """

    spike_factor: float = DEFAULT_SPIKE_FACTOR
    spike_lr_cut: float = DEFAULT_SPIKE_LR_CUT

    def __post_init__(self) -> None:
        factor, cut = check_spike_settings(self.spike_factor, self.spike_lr_cut)
        object.__setattr__(self, "spike_factor", factor)
        object.__setattr__(self, "spike_lr_cut", cut)

    def to_dict(self) -> dict[str, float]:
        """Plain values (what an agent file stores; :func:`check_spike_rule` reads them back)."""
        return asdict(self)


def check_spike_rule(value: Any, name: str = "recover_on_spike") -> SpikeRule | None:
    """``value`` as a :class:`SpikeRule` (``True``: the defaults; a mapping: its fields), or ``None`` for off.

    Example::

        >>> check_spike_rule(True).spike_factor, check_spike_rule(False), check_spike_rule({"spike_factor": 5})
        (3.0, None, SpikeRule(spike_factor=5.0, spike_lr_cut=0.5))
    """
    return optional_settings(value, SpikeRule, name)


class SpikeRollback:
    """The weights, buffers and optimizer state of the last good decision, put back after a spike.

    An interval spikes when its mean training loss is non-finite or above ``spike_factor`` times the
    lowest loss so far: the lowest interval mean, or the run's first recorded loss
    (:meth:`record_first_loss`), so a run that blows up within its first interval spikes too.
    :meth:`check` is called once per decision with the interval's loss: after a good interval it
    copies the state (the rollback point); after a spike it copies the rollback point back in place
    (parameters keep their identity, so optimizers, DDP buckets and hooks stay valid) and returns
    True, and the caller cuts the LRs. The param groups' own
    hyperparameters (the scheduler's LR) are not rolled back: the schedule goes on. If a finite
    loss level spikes :data:`MAX_ROLLBACKS_IN_A_ROW` times in a row against one rollback point, it
    is accepted as the new normal (a loss that rises for good, not a blow-up); a non-finite loss is
    never accepted.

    Memory: one more copy of the model's parameters, buffers and optimizer state (a
    :class:`TrainingStateCopy`): on their devices (``memory="device"``), or in host memory (``"host"``,
    the default), where the tensors cost no accelerator memory; on a GPU the host copy takes the
    transfer's time (about 12 bytes per parameter for Adam at PCIe speed, once per decision).

    Args:
        model: The network; all its parameters and buffers are saved.
        optimizer: Its optimizer; the per-parameter state (moments, step counts) is saved.
        spike_factor: A loss above this times the lowest interval mean so far is a spike (> 1); while
            that lowest loss is not positive, only a non-finite loss is.
        spike_lr_cut: What the caller multiplies every LR by after a rollback, in (0, 1).
        memory: Where the copy lives, one of :data:`ROLLBACK_MEMORY`.

    Example::

        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> rollback = SpikeRollback(model, opt)
        >>> rollback.check(1.0)            # a good interval: the rollback point moves here
        False
        >>> saved = model.weight.detach().clone()
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(1e6)
        >>> rollback.check(float("nan"))   # a blow-up: the weights of the last good decision come back
        True
        >>> torch.equal(model.weight, saved)
        True
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 spike_factor: float = DEFAULT_SPIKE_FACTOR, spike_lr_cut: float = DEFAULT_SPIKE_LR_CUT,
                 memory: str = "host") -> None:
        self.spike_factor, self.lr_cut = check_spike_settings(spike_factor, spike_lr_cut)
        # the state before any update: a first interval that blows up comes back here (the copy checks `memory`)
        self._copy = TrainingStateCopy(model, optimizer, memory)
        self.memory = memory
        self.lowest_loss = math.inf
        self.rollbacks = 0  # in this run
        self._in_a_row = 0
        self._first_loss: Tensor | float | None = None

    def record_first_loss(self, loss: Tensor | float) -> None:
        """The loss of the run's first step (kept as given: a device tensor is read at the next :meth:`check`)."""
        if self._first_loss is None:
            self._first_loss = loss.detach().clone() if isinstance(loss, Tensor) else float(loss)

    def is_spike(self, loss: float) -> bool:
        """Whether an interval mean of ``loss`` is non-finite or above ``spike_factor`` x the lowest so far.

        A multiple of the lowest loss is a spike's threshold only while that loss is positive: a loss
        that can be negative (a Gaussian NLL, an ELBO, a contrastive loss) has no scale to multiply, so
        there only a non-finite loss rolls back.
        """
        if not math.isfinite(loss):
            return True
        return self.lowest_loss > 0 and loss > self.spike_factor * self.lowest_loss

    def check(self, loss: float, reduce_fn: Callable[[Tensor], Tensor] | None = None) -> bool:
        """After an interval with mean training loss ``loss``: roll back (True) or move the rollback point here.

        ``reduce_fn`` averages the first loss over processes (as the interval's ``loss`` was), so
        every rank takes the same decision.
        """
        if self._first_loss is not None:  # one host read (and one reduction) per run
            first = torch.as_tensor(self._first_loss, dtype=torch.float32)
            first, self._first_loss = float(reduce_fn(first) if reduce_fn is not None else first), None
            if math.isfinite(first):
                self.lowest_loss = min(self.lowest_loss, first)
        if self.is_spike(loss) and (not math.isfinite(loss) or self._in_a_row < MAX_ROLLBACKS_IN_A_ROW):
            self._copy.restore()
            self._in_a_row += 1
            self.rollbacks += 1
            return True
        if self._in_a_row >= MAX_ROLLBACKS_IN_A_ROW:
            self.lowest_loss = loss  # the accepted new level
        self.lowest_loss = min(self.lowest_loss, loss)
        self._in_a_row = 0
        self._copy.save()
        return False

    def state_dict(self) -> dict[str, Any]:
        """The spike rule's memory (not the saved tensors: a resumed run's first decision saves anew)."""
        return {"lowest_loss": self.lowest_loss, "rollbacks": self.rollbacks, "in_a_row": self._in_a_row}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lowest_loss = float(state.get("lowest_loss", math.inf))
        self.rollbacks = int(state.get("rollbacks", 0))
        self._in_a_row = int(state.get("in_a_row", 0))  # a resumed series of rollbacks still ends at the cap
        self._copy.save()  # the restored run's state is the rollback point


class TrainingStateCopy:
    """A copy of a model's parameters and buffers and its optimizer's per-parameter state, put back in place.

    Parameters and buffers are copied back into themselves (they keep their identity, so optimizers,
    DDP buckets and hooks stay valid); a parameter that had no optimizer state when saved has none
    again. With ``memory="device"`` the copy is a clone beside each tensor; with ``"host"`` it is in
    host buffers allocated at the first :meth:`save` and reused (pinned for CUDA tensors, with each
    tensor's strides), copied on the current stream (:class:`_HostCopies`), and a restore writes
    into the optimizer's own state tensors where their shape and layout still match. Optimizer state
    that is not a tensor is deep-copied where it is.

    Example::

        >>> model = torch.nn.Linear(2, 1)
        >>> copy_ = TrainingStateCopy(model, torch.optim.SGD(model.parameters(), lr=0.1))
        >>> saved = model.weight.detach().clone()
        >>> with torch.no_grad():
        ...     _ = model.weight.add_(1.0)
        >>> copy_.restore(); torch.equal(model.weight, saved)
        True
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, memory: str = "host") -> None:
        self._params = list(model.parameters())
        self._buffers = list(model.buffers())
        self._optimizer = optimizer
        self._host = _HostCopies() if check_rollback_memory(memory, "memory") == "host" else None
        self.save()

    @torch.no_grad()
    def save(self) -> None:
        if self._host is None:
            self._saved_tensors = [t.detach().clone() for t in (*self._params, *self._buffers)]
            self._saved_state = save_optimizer_state(self._optimizer)
            return
        state_tensors: list[Tensor] = []
        self._saved_state = {}  # the layout, with a slot where each tensor's copy is
        for p, state in self._optimizer.state.items():
            self._saved_state[p] = {}
            for key, value in state.items():
                if isinstance(value, Tensor):
                    self._saved_state[p][key] = _Slot(len(state_tensors), value.device)
                    state_tensors.append(value)
                else:
                    self._saved_state[p][key] = copy.deepcopy(value)
        self._host.save("params", self._params)
        self._host.save("state", state_tensors)
        self._host.save("buffers", self._buffers)

    @torch.no_grad()
    def restore(self) -> None:
        if self._host is None:
            for tensor, saved in zip((*self._params, *self._buffers), self._saved_tensors):
                tensor.copy_(saved)
            restore_optimizer_state(self._optimizer, self._saved_state)
            return
        self._host.restore("params", self._params)
        self._host.restore("buffers", self._buffers)
        for group in self._optimizer.param_groups:  # as restore_optimizer_state does with its copy
            for p in group["params"]:
                if p not in self._saved_state:  # no state yet when saved (before the first step)
                    self._optimizer.state.pop(p, None)
                    continue
                current = self._optimizer.state.get(p, {})
                self._optimizer.state[p] = {
                    k: self._host.restored("state", v, current.get(k)) if isinstance(v, _Slot) else copy.deepcopy(v)
                    for k, v in self._saved_state[p].items()}


def save_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[Tensor, dict[str, Any]]:
    """A copy of ``optimizer``'s per-parameter state (moments, step counts), on their devices."""
    return {p: {k: copied(v) for k, v in state.items()} for p, state in optimizer.state.items()}


@torch.no_grad()
def restore_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[Tensor, dict[str, Any]]) -> None:
    """Put back a :func:`save_optimizer_state` copy (copied again: ``saved`` stays reusable); a parameter that had
    no state then has none again."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p in saved:
                optimizer.state[p] = {k: copied(v) for k, v in saved[p].items()}
            else:  # no state yet when saved (before the first step)
                optimizer.state.pop(p, None)


class HostCopy(NamedTuple):
    """A host-memory copy of a tensor and the device it goes back to (:func:`copied` takes it back there)."""

    tensor: Tensor
    device: torch.device


def copied(value: Any, on_host: bool = False) -> Any:
    """A copy of a state value: a tensor on its device, or as a :class:`HostCopy` with ``on_host``; a
    :class:`HostCopy` back on its device; anything else deep-copied."""
    if isinstance(value, HostCopy):
        return value.tensor.to(value.device, copy=True)
    if isinstance(value, Tensor):
        return HostCopy(value.detach().to("cpu", copy=True), value.device) if on_host else value.detach().clone()
    return copy.deepcopy(value)


class _Slot(NamedTuple):
    """Where an optimizer state tensor's host copy is: its index among the saved tensors, and its device."""

    index: int
    device: torch.device


class _HostCopies:
    """Host-memory copies of lists of tensors, in buffers allocated once and reused (pinned for CUDA tensors).

    Copies of CUDA tensors are queued on the current stream (``non_blocking``): the host goes on at
    once, and anything queued after them on that stream (the next step, a restore, the next save)
    sees them done. Buffers keep their tensors' strides, so a restored tensor has its original layout.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, list[Tensor]] = {}

    def save(self, name: str, tensors: list[Tensor]) -> None:
        buffers = self._buffers.setdefault(name, [])
        del buffers[len(tensors):]
        for index, tensor in enumerate(tensors):
            if index == len(buffers):
                buffers.append(_host_buffer(tensor))
            elif not _fits(buffers[index], tensor):
                buffers[index] = _host_buffer(tensor)
            buffers[index].copy_(tensor.detach(), non_blocking=tensor.is_cuda)

    def restore(self, name: str, tensors: list[Tensor]) -> None:
        """Copy the saved values back into ``tensors``."""
        for tensor, buffer in zip(tensors, self._buffers[name]):
            tensor.copy_(buffer, non_blocking=tensor.is_cuda)

    def restored(self, name: str, slot: _Slot, current: Any = None) -> Tensor:
        """The saved value at ``slot``: copied into ``current`` where it is a tensor of the same shape, dtype,
        strides and device (an optimizer may hold on to its state tensors), else into a new tensor."""
        buffer = self._buffers[name][slot.index]
        if not (isinstance(current, Tensor) and current.device == slot.device and current.dtype == buffer.dtype
                and current.shape == buffer.shape and current.stride() == buffer.stride()):
            current = torch.empty_strided(buffer.shape, buffer.stride(), dtype=buffer.dtype, device=slot.device)
        return current.copy_(buffer, non_blocking=slot.device.type == "cuda")


def _fits(buffer: Tensor, tensor: Tensor) -> bool:
    return (buffer.shape == tensor.shape and buffer.dtype == tensor.dtype and buffer.stride() == tensor.stride()
            and buffer.is_pinned() == tensor.is_cuda)


def _host_buffer(tensor: Tensor) -> Tensor:
    try:
        return torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, pin_memory=tensor.is_cuda)
    except RuntimeError as err:  # pinned memory is a limited resource: say what to do instead
        raise RuntimeError(
            f"Could not allocate {tensor.numel() * tensor.element_size()} bytes of pinned host memory for a copy of "
            f"weights and optimizer state ({err}). For GANNOCallback's rollback pass `rollback_memory='device'` (the "
            "copy in accelerator memory) or `recover_on_spike=False`; for its initial LR search, `lr_search=False`."
            ) from err
