"""Choose the LR level a fit starts from by short trials: a few steps at each candidate, all undone after.

GANNO's agents correct the LR a user gave; from an LR far from the task's best they move it only
part of the way, and a prior schedule (cosine decay) started at a wrong level anneals the wrong
level. An *initial LR search* sets the level first: from the fit's initial weights it trains
``steps`` optimizer steps at each factor of ``factors`` times the user's LR (the same batches for
each), scores each trial by the loss on ``held_batches`` batches it did not train on, and keeps the
factor with the lowest score. Every trial starts from the same weights, buffers, optimizer state and
RNG state, and all of them are put back afterwards: the fit then starts exactly as it would have,
at the chosen LR. The user's LR (factor 1) is always a candidate, and a tie goes to the factor
nearest it.

On the dev suites (300-step runs) the shipped agent from the searched LR, acting around a cosine
prior, scores closer to the tuned cosine than from the user's LR; neither the search alone (with or
without the agent) nor the prior alone does (``benchmarks/results/initial_lr_search/``).

Cost: ``len(factors) * steps`` extra training steps and ``len(factors) * held_batches`` forwards
once per fit, and for their duration a copy of the weights, buffers and optimizer state in host
memory (none on the accelerator).

Example::

    >>> import torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Linear(4, 1)
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)   # far too low for this problem
    >>> x = torch.randn(64, 4); y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    >>> batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 64, 8)]
    >>> loss = lambda batch: torch.nn.functional.mse_loss(model(batch[0]).squeeze(-1), batch[1])
    >>> search = InitialLRSearch(steps=6, factors=(1.0, 10.0, 100.0, 1000.0), held_batches=2)
    >>> result = search.run(model, optimizer, loss, train_batches=batches[2:], held_batches=batches[:2])
    >>> result.factor, optimizer.param_groups[0]["lr"]
    (1000.0, 0.1)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["DEFAULT_FACTORS", "InitialLRSearch", "LRSearchResult", "check_lr_search", "collect_batches"]

#: Candidate factors of the user's LR: 0.1x to 10x in steps of about 3 (the evaluation's LR grid).
DEFAULT_FACTORS: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)


@dataclass(frozen=True)
class LRSearchResult:
    """What an initial LR search found.

    Attributes:
        factor: The chosen factor of the user's LR (1.0 when no trial could run).
        scores: Each factor's held-out loss (``inf`` for a trial that diverged).
        reason: Why no trial ran (``None`` when they did).
    """

    factor: float
    scores: dict[float, float] = field(default_factory=dict)
    reason: str | None = None


@dataclass(frozen=True)
class InitialLRSearch:
    """Short trials at candidate LR factors before a fit; the fit starts at the best one.

    Args:
        steps: Optimizer steps per trial (> 0).
        factors: Candidate multipliers of the user's LR; must include 1.0 (the user's LR).
        held_batches: Batches the trials are scored on (> 0), never trained on by the trials.

    Raises:
        ValueError: For a non-positive ``steps`` or ``held_batches``, a factor that is not a finite
            positive number, repeated factors, or factors without 1.0.
    """

    steps: int = 50
    factors: tuple[float, ...] = DEFAULT_FACTORS
    held_batches: int = 4

    def __post_init__(self) -> None:
        for name in ("steps", "held_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        factors = tuple(self.factors) if isinstance(self.factors, (list, tuple)) else None
        if not factors or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or f <= 0
                              for f in factors):
            raise ValueError(f"`factors` must be a non-empty sequence of finite numbers > 0 (multipliers of your LR, "
                             f"e.g. {list(DEFAULT_FACTORS)}), got {self.factors!r}.")
        if len(set(factors)) != len(factors) or 1.0 not in factors:
            raise ValueError(f"`factors` must be distinct and include 1.0 (your own LR is always a candidate), got "
                             f"{list(factors)}.")
        object.__setattr__(self, "factors", tuple(float(f) for f in factors))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (what an agent file stores)."""
        return {"steps": self.steps, "factors": list(self.factors), "held_batches": self.held_batches}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> InitialLRSearch:
        return cls(steps=int(values["steps"]), factors=tuple(values["factors"]),
                   held_batches=int(values["held_batches"]))

    def choose(self, scores: Mapping[float, float]) -> float:
        """The factor with the lowest finite score; a tie goes to the factor nearest 1, none finite to 1.

        Example::

            >>> InitialLRSearch().choose({0.1: 2.0, 0.3: 0.5, 1.0: 0.5, 3.0: float("inf")})
            1.0
        """
        finite = {f: s for f, s in scores.items() if math.isfinite(s)}
        if not finite:
            return 1.0
        return min(finite, key=lambda f: (finite[f], abs(math.log(f))))

    @torch.no_grad()
    def run(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_of: Callable[[Any], Tensor | None],
        train_batches: Sequence[Any],
        held_batches: Sequence[Any],
        reduce_fn: Callable[[Tensor], Tensor] | None = None,
    ) -> LRSearchResult:
        """Run the trials, put everything back, and multiply every param group's LR by the chosen factor.

        Args:
            model: The network (its parameters and buffers are restored after each trial).
            optimizer: Its optimizer at the user's LRs, before any step of the fit.
            loss_of: A batch's training loss with its graph (``None``: skip the batch). Called in
                train mode for trial steps and in eval mode, without gradients, for held batches.
            train_batches: Batches a trial trains on, cycled to ``steps`` steps.
            held_batches: Batches each trial is scored on (their mean loss).
            reduce_fn: Averages a score over processes (distributed runs), so every rank chooses alike.

        Returns:
            The :class:`LRSearchResult`; the optimizer's LRs are the user's times ``factor``.
        """
        if not train_batches or not held_batches:
            return LRSearchResult(1.0, reason="the training data gave too few batches to hold some out")
        tensors = [*model.parameters(), *model.buffers()]
        saved_tensors = [t.detach().to("cpu", copy=True) for t in tensors]
        saved_state = {p: {k: _HostCopy(v.detach().to("cpu", copy=True), v.device) if isinstance(v, Tensor) else v
                           for k, v in s.items()} for p, s in optimizer.state.items()}
        user_lrs = [group["lr"] for group in optimizer.param_groups]
        was_training = model.training
        devices = sorted({t.device.index for t in tensors if t.device.type == "cuda"})
        scores: dict[float, float] = {}
        try:
            with torch.random.fork_rng(devices=devices):
                rng = torch.random.get_rng_state()
                for factor in self.factors:
                    torch.random.set_rng_state(rng)  # every trial draws the same dropout masks
                    for group, lr in zip(optimizer.param_groups, user_lrs):
                        group["lr"] = lr * factor
                    scores[factor] = self._trial(model, optimizer, loss_of, train_batches, held_batches, reduce_fn)
                    _restore(tensors, saved_tensors, optimizer, saved_state)
        finally:
            _restore(tensors, saved_tensors, optimizer, saved_state)
            optimizer.zero_grad(set_to_none=True)
            model.train(was_training)
        factor = self.choose(scores)
        for group, lr in zip(optimizer.param_groups, user_lrs):
            group["lr"] = lr * factor
            if "initial_lr" in group:  # a scheduler created later starts from the chosen LR too
                group["initial_lr"] = group["initial_lr"] * factor
        return LRSearchResult(factor, scores)

    def _trial(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_of: Callable[[Any], Tensor | None],
               train_batches: Sequence[Any], held_batches: Sequence[Any],
               reduce_fn: Callable[[Tensor], Tensor] | None) -> float:
        model.train()
        for step in range(self.steps):
            optimizer.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss = loss_of(train_batches[step % len(train_batches)])
                if loss is None:
                    continue
                loss.backward()
            optimizer.step()  # no host sync per step: a diverged trial shows in its held loss
        model.eval()
        losses = [loss.detach().float() for loss in map(loss_of, held_batches) if loss is not None]
        if not losses:
            return math.inf
        score = torch.stack(losses).mean()
        if reduce_fn is not None:
            score = reduce_fn(score)
        score = float(score)  # the one host sync of a trial
        return score if math.isfinite(score) else math.inf


def check_lr_search(value: Any, name: str = "lr_search") -> InitialLRSearch | None:
    """``value`` as an :class:`InitialLRSearch` (``True``: the defaults; a mapping: its fields), or ``None`` for off.

    Example::

        >>> check_lr_search(True).factors, check_lr_search(False), check_lr_search({"steps": 20}).steps
        ((0.1, 0.3, 1.0, 3.0, 10.0), None, 20)
    """
    if value is None or value is False:
        return None
    if value is True:
        return InitialLRSearch()
    if isinstance(value, InitialLRSearch):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - {"steps", "factors", "held_batches"}
        if unknown:
            raise ValueError(f"`{name}` has unknown keys {sorted(unknown)}; it takes steps, factors and held_batches.")
        try:
            return InitialLRSearch(**{k: tuple(v) if k == "factors" and isinstance(v, Iterable) and not isinstance(v, str)
                                      else v for k, v in value.items()})
        except ValueError as err:
            raise ValueError(f"`{name}`: {err}") from None
    raise ValueError(f"`{name}` must be True, False/None, an InitialLRSearch or a mapping of its fields "
                     f"(steps, factors, held_batches), got {value!r}.")


def collect_batches(batches: Iterable[Any], held: int, train: int) -> tuple[list[Any], list[Any]]:
    """``(held, train)``: the first ``held`` batches of ``batches``, then up to ``train`` more.

    Fewer than ``held + 1`` batches leave nothing to train on: ``train`` is then empty. Batches are
    kept as the loader gives them (on the host, for a typical loader), not moved to a device.
    """
    held_out: list[Any] = []
    to_train: list[Any] = []
    for batch in batches:
        if len(held_out) < held:
            held_out.append(batch)
        else:
            to_train.append(batch)
            if len(to_train) == train:
                break
    return held_out, to_train


class _HostCopy(NamedTuple):
    """A host copy of an optimizer-state tensor and the device it goes back to."""

    tensor: Tensor
    device: torch.device


@torch.no_grad()
def _restore(tensors: list[Tensor], saved: list[Tensor], optimizer: torch.optim.Optimizer,
             saved_state: dict[Tensor, dict[str, Any]]) -> None:
    """Put back the weights, buffers and optimizer state a search copied to the host (tensors to their devices)."""
    for tensor, copy in zip(tensors, saved):
        tensor.copy_(copy)  # in place: parameters keep their identity (optimizer, DDP buckets, hooks)
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p in saved_state:
                optimizer.state[p] = {k: v.tensor.to(v.device, copy=True) if isinstance(v, _HostCopy) else v
                                      for k, v in saved_state[p].items()}
            else:
                optimizer.state.pop(p, None)
