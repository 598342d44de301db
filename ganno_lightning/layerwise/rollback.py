"""Recover from a loss spike instead of dying: put back the last good state and cut the LR."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

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

    Memory: one more copy of the model's parameters, buffers and optimizer state, on their devices.

    Args:
        model: The network; all its parameters and buffers are saved.
        optimizer: Its optimizer; the per-parameter state (moments, step counts) is saved.
        spike_factor: A loss above this times the lowest interval mean so far is a spike (> 1).
        spike_lr_cut: What the caller multiplies every LR by after a rollback, in (0, 1).

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
                 spike_factor: float = DEFAULT_SPIKE_FACTOR, spike_lr_cut: float = DEFAULT_SPIKE_LR_CUT) -> None:
        self.spike_factor, self.lr_cut = check_spike_settings(spike_factor, spike_lr_cut)
        self._tensors = [*model.parameters(), *model.buffers()]
        self._optimizer = optimizer
        self.lowest_loss = math.inf
        self.rollbacks = 0  # in this run
        self._in_a_row = 0
        self._first_loss: Tensor | float | None = None
        self._save()  # the state before any update: a first interval that blows up comes back here

    def record_first_loss(self, loss: Tensor | float) -> None:
        """The loss of the run's first step (kept as given: a device tensor is read at the next :meth:`check`)."""
        if self._first_loss is None:
            self._first_loss = loss.detach().clone() if isinstance(loss, Tensor) else float(loss)

    def is_spike(self, loss: float) -> bool:
        """Whether an interval mean of ``loss`` is non-finite or above ``spike_factor`` x the lowest so far."""
        return not math.isfinite(loss) or loss > self.spike_factor * self.lowest_loss

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
            self._restore()
            self._in_a_row += 1
            self.rollbacks += 1
            return True
        if self._in_a_row >= MAX_ROLLBACKS_IN_A_ROW:
            self.lowest_loss = loss  # the accepted new level
        self.lowest_loss = min(self.lowest_loss, loss)
        self._in_a_row = 0
        self._save()
        return False

    @torch.no_grad()
    def _save(self) -> None:
        self._saved_tensors = [t.detach().clone() for t in self._tensors]
        self._saved_state = save_optimizer_state(self._optimizer)

    @torch.no_grad()
    def _restore(self) -> None:
        for tensor, saved in zip(self._tensors, self._saved_tensors):
            tensor.copy_(saved)
        restore_optimizer_state(self._optimizer, self._saved_state)

    def state_dict(self) -> dict[str, Any]:
        """The spike rule's memory (not the saved tensors: a resumed run's first decision saves anew)."""
        return {"lowest_loss": self.lowest_loss, "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lowest_loss = float(state.get("lowest_loss", math.inf))
        self.rollbacks = int(state.get("rollbacks", 0))
        self._save()  # the restored run's state is the rollback point


def save_optimizer_state(optimizer: torch.optim.Optimizer, on_host: bool = False) -> dict[Tensor, dict[str, Any]]:
    """A copy of ``optimizer``'s per-parameter state (moments, step counts), on their devices, or in host memory
    with ``on_host`` (for a copy kept while something else needs the accelerator's memory)."""
    return {p: {k: copied(v, on_host) for k, v in state.items()} for p, state in optimizer.state.items()}


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
