"""LR-free and adaptive optimizers the evaluation compares agents against: what users pick instead of tuning.

A *peer* replaces a module's optimizer (and schedule) with one that sets or adapts its own step
size, registered by name in :data:`PEERS`:

- ``schedulefree_adamw``: schedule-free AdamW (Defazio et al. 2024, ``schedulefree``) at the
  module's LR, no schedule;
- ``prodigy``: Prodigy (Mishchenko & Defazio 2023, ``prodigyopt``) with ``lr=1.0`` as its
  authors recommend, constant;
- ``prodigy_cosine``: the same under a per-step cosine to the run's last step (as
  :func:`~ganno_lightning.agents.baselines.cosine`);
- ``dadapt_adam``: D-Adaptation Adam (Defazio & Mishchenko 2023, ``dadaptation``), ``lr=1.0``;
- ``adam_hd``: Adam with hypergradient descent on its LR (Baydin et al. 2018, :class:`AdamHD`,
  written here) from the module's LR.

The three packages are an optional extra: ``pip install "ganno-lightning[peers]"``.
:func:`with_peer` makes a LightningModule train with one of them, the way
:func:`~ganno_lightning.agents.baselines.with_schedule` gives it a schedule; the module keeps its
parameter groups and their weight decay.

Example::

    >>> from ganno_lightning.envs.tasks import DigitsMLP
    >>> model = with_peer(DigitsMLP(1, 8, 0.01, 32, "adam", 0), "adam_hd", total_steps=100)
    >>> optimizer = model.configure_optimizers()["optimizer"]
    >>> type(optimizer).__name__, optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["hypergrad_lr"]
    ('AdamHD', 0.01, 1e-07)
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from ganno_lightning.lr_schedules import ScheduleMultiplier, single_optimizer

__all__ = [
    "HYPERGRAD_LR",
    "LR_FREE_LR",
    "PEERS",
    "PEERS_EXTRA",
    "AdamHD",
    "OptimizerModes",
    "Peer",
    "missing_packages",
    "peer_version",
    "with_peer",
]

#: The hypergradient learning rate beta of Adam-HD in Baydin et al. (2018), section 5.
HYPERGRAD_LR = 1e-7
#: The ``lr`` of LR-free optimizers: a multiplier of the step size they estimate, 1 as their authors advise.
LR_FREE_LR = 1.0
#: How users install the peers' packages.
PEERS_EXTRA = 'pip install "ganno-lightning[peers]"'

_OVERRIDES = ("configure_optimizers", "configure_callbacks")
_MARK = "_peer"


class AdamHD(torch.optim.Adam):
    """Adam whose learning rate follows hypergradient descent (Adam-HD).

    Baydin, Cornish, Martinez Rubio, Schmidt and Wood, "Online Learning Rate Adaptation with
    Hypergradient Descent", ICLR 2018 (arXiv:1703.04782), Algorithm "Adam-HD". Before each Adam
    step, every parameter group's LR moves by ``hypergrad_lr`` times the dot product of the current
    gradient with the previous step's Adam direction ``m_hat / (sqrt(v_hat) + eps)``: the LR grows
    while successive steps agree and shrinks when a step overshoots. The LR is not bounded, as in
    the paper.

    Args:
        params: Parameters or parameter groups, as for :class:`torch.optim.Adam`.
        lr: Initial learning rate.
        betas: Adam's moment coefficients.
        eps: Adam's denominator term.
        weight_decay: L2 penalty, as in :class:`torch.optim.Adam` (part of the gradient the
            hypergradient sees).
        hypergrad_lr: The hypergradient learning rate beta (default: the paper's 1e-7 for Adam).

    Raises:
        ValueError: For a negative or non-finite ``hypergrad_lr`` (and Adam's own checks).

    Example::

        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> optimizer = AdamHD([w], lr=0.01, hypergrad_lr=1e-3)
        >>> for _ in range(3):
        ...     optimizer.zero_grad(); (0.5 * w.square().sum()).backward(); optimizer.step()
        >>> optimizer.param_groups[0]["lr"] > 0.01  # still far from the minimum: steps agree, LR grows
        True
    """

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, hypergrad_lr: float = HYPERGRAD_LR) -> None:
        if isinstance(hypergrad_lr, bool) or not isinstance(hypergrad_lr, (int, float)) \
                or not math.isfinite(hypergrad_lr) or hypergrad_lr < 0:
            raise ValueError(f"`hypergrad_lr` must be a finite number >= 0, got {hypergrad_lr!r}.")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.defaults["hypergrad_lr"] = float(hypergrad_lr)
        for group in self.param_groups:
            group.setdefault("hypergrad_lr", float(hypergrad_lr))

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            hypergradient = None
            for p in group["params"]:
                state = self.state.get(p, {})
                if p.grad is None or "exp_avg" not in state:
                    continue  # no previous step: nothing to compare the gradient with
                done = float(state["step"])
                grad = p.grad if group["weight_decay"] == 0 else p.grad.add(p, alpha=group["weight_decay"])
                # The previous update was lr * m_hat / (sqrt(v_hat) + eps), with Adam's bias corrections.
                direction = (state["exp_avg"] / (1 - beta1**done)) / (
                    state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**done) + group["eps"])
                dot = torch.dot(grad.flatten(), direction.flatten())
                hypergradient = dot if hypergradient is None else hypergradient + dot
            if hypergradient is not None:  # one host sync per group and step
                group["lr"] = group["lr"] + group["hypergrad_lr"] * float(hypergradient)
        super().step()
        return loss


class OptimizerModes(Callback):
    """Put schedule-free optimizers in train mode for training steps and in eval mode otherwise.

    Schedule-free optimizers take gradients at one point of their iterates and are evaluated at
    another (their averaged weights): ``optimizer.train()`` must precede training steps and
    ``optimizer.eval()`` validation, checkpoints and the end of training (schedulefree's README).
    The switch to train mode happens at the first training batch after a validation, so a
    checkpoint saved at validation end holds the evaluated weights too; fit ends in eval mode. Any
    optimizer of the trainer with ``optimizer.train()``/``optimizer.eval()`` methods is switched; others are left alone.

    BatchNorm statistics are those gathered at the training point, as in schedulefree's default use
    (its README suggests recomputing them at the evaluated weights; this callback does not).

    Example::

        from schedulefree import AdamWScheduleFree

        # configure_optimizers returns AdamWScheduleFree(self.parameters(), lr=1e-3)
        Trainer(max_steps=100, callbacks=[OptimizerModes()]).fit(model)
    """

    @staticmethod
    def _switch(trainer: Trainer, mode: str) -> None:
        for optimizer in trainer.optimizers:
            switch = getattr(optimizer, mode, None)
            if callable(switch):
                switch()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._switch(trainer, "train")

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._switch(trainer, "eval")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._switch(trainer, "eval")  # the weights fit leaves behind are the ones to evaluate


def _schedulefree_adamw(params: Any, lr: float) -> torch.optim.Optimizer:
    from schedulefree import AdamWScheduleFree

    return AdamWScheduleFree(params, lr=lr)


def _prodigy(params: Any, lr: float) -> torch.optim.Optimizer:
    from prodigyopt import Prodigy

    return Prodigy(params, lr=lr)


def _dadapt_adam(params: Any, lr: float) -> torch.optim.Optimizer:
    from dadaptation import DAdaptAdam

    return DAdaptAdam(params, lr=lr)


@dataclass(frozen=True)
class Peer:
    """How to build one peer for a module's parameters.

    Attributes:
        make: ``(params or param groups, lr) -> optimizer``.
        package: The distribution it imports (``None``: written here), for the missing-extra check.
        uses_lr: Starts from the given initial LR; otherwise LR-free (``lr`` is :data:`LR_FREE_LR`
            whatever it is given, so its runs do not depend on the user's LR).
        schedule: A :data:`~ganno_lightning.agents.baselines.SCHEDULES` name applied per step on top.
        modes: Needs ``optimizer.train()``/``optimizer.eval()`` around training (:class:`OptimizerModes`).
    """

    make: Callable[[Any, float], torch.optim.Optimizer]
    package: Optional[str] = None
    uses_lr: bool = True
    schedule: Optional[str] = None
    modes: bool = False

    def build(self, params: Iterable[Any], lr: float, total_steps: int):
        """The optimizer at initial LR ``lr`` and its per-step ``LambdaLR`` (``None`` without a schedule).

        ``params`` may be parameter groups: their ``weight_decay`` is kept; a group's own ``lr``
        is kept by peers that use the LR and replaced by :data:`LR_FREE_LR` by those that do not.
        """
        params = list(params)
        if not self.uses_lr:
            lr = LR_FREE_LR
            params = [{k: v for k, v in p.items() if k != "lr"} if isinstance(p, dict) else p for p in params]
        optimizer = self.make(params, lr)
        if self.schedule is None:
            return optimizer, None
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, ScheduleMultiplier(self.schedule, total_steps))


#: Peer name (as used in configs; reports show ``peer:<name>``) -> how to build it.
PEERS: dict[str, Peer] = {
    "schedulefree_adamw": Peer(_schedulefree_adamw, package="schedulefree", modes=True),
    "prodigy": Peer(_prodigy, package="prodigyopt", uses_lr=False),
    "prodigy_cosine": Peer(_prodigy, package="prodigyopt", uses_lr=False, schedule="cosine"),
    "dadapt_adam": Peer(_dadapt_adam, package="dadaptation", uses_lr=False),
    "adam_hd": Peer(AdamHD),
}


def missing_packages(names: Sequence[str]) -> list[str]:
    """The packages the peers ``names`` need that are not installed, in order, each once.

    Example::

        >>> missing_packages(["adam_hd"])
        []
    """
    packages = dict.fromkeys(PEERS[name].package for name in names if PEERS[name].package)
    return [p for p in packages if importlib.util.find_spec(p) is None]


def peer_version(name: str) -> Optional[str]:
    """``<package>==<version>`` of the package peer ``name`` runs, ``None`` for a peer written here.

    Part of an evaluation run's key, so a run is reused only under the same package version.
    """
    package = PEERS[name].package
    return None if package is None else f"{package}=={importlib.metadata.version(package)}"


def with_peer(module: LightningModule, name: str, total_steps: int) -> LightningModule:
    """Make ``module`` train with the peer ``name`` instead of its own optimizer.

    Like :func:`~ganno_lightning.agents.baselines.with_schedule`, this shadows
    ``configure_optimizers`` on this one instance (the class is untouched). The module's own
    optimizer is built once per call to read its parameter groups, initial LR and weight decay; the
    peer is built over the same groups. Peers that need train/eval modes also get
    :class:`OptimizerModes` through ``configure_callbacks`` (after the module's own callbacks), so a
    plain ``Trainer.fit`` does it right. Call it on a fresh module, before ``Trainer.fit``.

    Args:
        module: The LightningModule (modified in place and returned).
        name: A key of :data:`PEERS`.
        total_steps: Optimizer steps of the run (the horizon of ``prodigy_cosine``'s cosine).

    Returns:
        ``module`` itself.

    Raises:
        ValueError: For an unknown peer, a non-positive ``total_steps`` or an already wrapped module.
        ModuleNotFoundError: If the peer's package is missing (``pip install "ganno-lightning[peers]"``).
        TypeError: At ``configure_optimizers`` time, if the module returns several optimizers or
            its own scheduler.

    Example::

        >>> from ganno_lightning.envs.tasks import DigitsMLP
        >>> model = with_peer(DigitsMLP(1, 8, 0.01, 32, "adam", 0), "adam_hd", total_steps=100)
        >>> type(model.configure_optimizers()["optimizer"]).__name__, model.configure_callbacks()
        ('AdamHD', [])
    """
    if name not in PEERS:
        raise ValueError(f"Unknown peer {name!r}; known peers: {', '.join(PEERS)}.")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps <= 0:
        raise ValueError(f"`total_steps` must be a positive int, got {total_steps!r}.")
    if _MARK in vars(module):
        raise ValueError(f"{type(module).__name__} already trains with the peer {vars(module)[_MARK]!r}; "
                         "use a fresh module.")
    missing = missing_packages([name])
    if missing:
        raise ModuleNotFoundError(f"The peer {name!r} needs {', '.join(missing)}: {PEERS_EXTRA}.")
    peer = PEERS[name]
    owner = type(module).__name__
    original_optimizers, original_callbacks = module.configure_optimizers, module.configure_callbacks

    def configure_optimizers() -> dict[str, Any]:
        own = single_optimizer(original_optimizers(), owner)
        groups = [{"params": g["params"], "lr": g["lr"], "weight_decay": g.get("weight_decay", 0.0)}
                  for g in own.param_groups]
        optimizer, scheduler = peer.build(groups, groups[0]["lr"], total_steps)
        if scheduler is None:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def configure_callbacks() -> list[Callback]:
        own = original_callbacks()
        own = [] if not own else [own] if isinstance(own, Callback) else list(own)
        return [*own, OptimizerModes()] if peer.modes else own

    configure_optimizers.__doc__ = f"{owner}.configure_optimizers with the peer {name!r}."
    configure_callbacks.__doc__ = f"{owner}.configure_callbacks, plus what the peer {name!r} needs."
    for attribute, function in zip(_OVERRIDES, (configure_optimizers, configure_callbacks)):
        object.__setattr__(module, attribute, function)  # plain attributes, not submodules
    object.__setattr__(module, _MARK, name)
    return module
