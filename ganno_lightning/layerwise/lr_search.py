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

With the shipped agent acting around a cosine prior, the search moved 300-step runs closer to the
tuned cosine on the dev suites and on confirm (1.24x -> 1.10x its loss there), but not confirm's
3000-step runs, so it is off by default (``benchmarks/results/initial_lr_search/``). Neither the
search alone nor the prior alone helped the agent on dev.

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
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from ganno_lightning.config import optional_settings
from ganno_lightning.layerwise.rollback import TrainingStateCopy, copied
from ganno_lightning.rng import replayable

__all__ = ["DEFAULT_FACTORS", "InitialLRSearch", "LRSearchResult", "check_lr_search", "collect_batches"]

#: Candidate factors of the user's LR: 0.1x to 10x in steps of about 3 (the evaluation's LR grid).
DEFAULT_FACTORS: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)


@dataclass(frozen=True)
class LRSearchResult:
    """What an initial LR search found.

    Attributes:
        factor: The chosen factor of the user's LR (1.0 when no trial could run).
        scores: Each factor's held-out loss (``inf`` for a trial that diverged).
        reason: Why no trial ran or none could be scored (``None`` when the choice stands on scores).
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
        """Plain values (what an agent file stores; :func:`check_lr_search` reads them back)."""
        return {f.name: list(getattr(self, f.name)) if f.name == "factors" else getattr(self, f.name)
                for f in fields(self)}

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
            model: The network (its parameters, buffers, gradients and each submodule's train/eval
                mode are restored after each trial).
            optimizer: Its optimizer at the user's LRs, before any step of the fit (its state and
                every param-group value are restored too).
            loss_of: A batch's training loss with its graph (``None``: skip the batch). Called with
                the model's own train/eval modes for trial steps, and in eval mode, without
                gradients, for held batches.
            train_batches: Batches a trial trains on, cycled to ``steps`` steps.
            held_batches: Batches each trial is scored on (their mean loss).
            reduce_fn: Averages a value over processes (distributed runs): every rank takes the same
                decisions, including skipping the search when one rank has no batches.

        Returns:
            The :class:`LRSearchResult`; the optimizer's LRs are the user's times ``factor``.
        """
        device = next((t.device for t in model.parameters()), torch.device("cpu"))
        ready = torch.tensor(float(bool(train_batches) and bool(held_batches)), device=device)
        if float(reduce_fn(ready) if reduce_fn is not None else ready) < 1:  # every rank returns here, or none
            return LRSearchResult(1.0, reason=f"too few batches: {len(held_batches)} to score on (of "
                                              f"held_batches={self.held_batches}) and {len(train_batches)} to train "
                                              "on (on this or another process)")
        snapshot = _Snapshot(model, optimizer)
        scores: dict[float, float] = {}
        try:
            with replayable(device) as replay:
                for factor in self.factors:
                    snapshot.restore()
                    replay()  # every trial draws the same random numbers (dropout masks)
                    _scale_lrs(optimizer, factor)
                    scores[factor] = self._trial(model, optimizer, loss_of, train_batches, held_batches, reduce_fn,
                                                 device)
        finally:
            snapshot.restore()
        if not any(math.isfinite(score) for score in scores.values()):
            return LRSearchResult(1.0, scores, reason="no trial could be scored: every trial's held-out loss was "
                                                      "non-finite, or the training step skipped every batch")
        factor = self.choose(scores)
        _scale_lrs(optimizer, factor)
        for group in optimizer.param_groups:
            if "initial_lr" in group:  # a scheduler created later starts from the chosen LR too
                group["initial_lr"] = group["initial_lr"] * factor
        return LRSearchResult(factor, scores)

    def _trial(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_of: Callable[[Any], Tensor | None],
               train_batches: Sequence[Any], held_batches: Sequence[Any],
               reduce_fn: Callable[[Tensor], Tensor] | None, device: torch.device) -> float:
        for step in range(self.steps):
            batch = train_batches[step % len(train_batches)]

            def closure(batch: Any = batch) -> Tensor | None:  # a closure, so LBFGS trains in the trials too
                optimizer.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    loss = loss_of(batch)
                    if loss is not None:  # a skipped batch leaves no gradients, so nothing moves
                        loss.backward()
                return loss

            optimizer.step(closure)  # no host sync per step: a diverged trial shows in its held loss
        model.eval()
        losses = [loss.detach().float() for loss in map(loss_of, held_batches) if loss is not None]
        # a value on every rank, so every rank joins the reduction (inf: nothing to score here)
        score = torch.stack(losses).mean() if losses else torch.tensor(math.inf, device=device)
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
    if isinstance(value, Mapping):  # factors from YAML come as a list
        value = {k: tuple(v) if k == "factors" and isinstance(v, Iterable) and not isinstance(v, str) else v
                 for k, v in value.items()}
    return optional_settings(value, InitialLRSearch, name, article="an")


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


class _Snapshot:
    """Everything a trial changes, copied to host memory once and put back after each trial.

    Weights and buffers (copied back in place: parameters keep their identity, so the optimizer, DDP
    buckets and hooks stay valid), gradients, each submodule's train/eval mode, the optimizer's
    per-parameter state (a parameter without state gets none again) and every param-group value
    but the parameters (the LR, and values optimizers update themselves, such as Prodigy's ``d``).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self.weights_and_state = TrainingStateCopy(model, optimizer, memory="host")
        self.grads = [p.grad for p in model.parameters()]  # references: the trials set fresh ones
        self.modes = [(module, module.training) for module in model.modules()]
        self.groups = [{k: copied(v, on_host=True) for k, v in group.items() if k != "params"}
                       for group in optimizer.param_groups]

    @torch.no_grad()
    def restore(self) -> None:
        self.weights_and_state.restore()
        for parameter, grad in zip(self.model.parameters(), self.grads):
            parameter.grad = grad
        for module, training in self.modes:
            module.training = training
        for group, saved in zip(self.optimizer.param_groups, self.groups):
            for key in [k for k in group if k != "params" and k not in saved]:  # added by a trial's steps
                del group[key]
            group.update({k: copied(v) for k, v in saved.items()})


def _scale_lrs(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Multiply every param group's LR (the user's, after a :meth:`_Snapshot.restore`) by ``factor``."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * factor
