"""Observe, then apply actions: the one code path shared by the environment and the callback."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ganno_lightning.layerwise.actions import DEFAULT_SCALE_BOUNDS, ActionSet
from ganno_lightning.layerwise.decisions import DecisionSteps
from ganno_lightning.layerwise.features import LR_PROBE_FEATURES, LR_PROBE_MULTIPLIERS
from ganno_lightning.layerwise.lr_control import LayerwiseLR
from ganno_lightning.layerwise.observer import LayerObserver
from ganno_lightning.layerwise.partition import GroupSpec, LayerPartition
from ganno_lightning.layerwise.prior import DEFAULT_PRIOR, LRPrior
from ganno_lightning.layerwise.rollback import (
    DEFAULT_SPIKE_FACTOR,
    DEFAULT_SPIKE_LR_CUT,
    SpikeRollback,
    restore_optimizer_state,
    save_optimizer_state,
)
from ganno_lightning.layerwise.schedule import LRSchedule
from ganno_lightning.layerwise.step_hooks import OutermostStepHooks
from ganno_lightning.rng import RNGStates, cuda_devices, get_rng, set_rng


class LayerwiseController:
    """Per-layer LR control of one training run, driven from outside by a policy.

    It partitions the model, splits the optimizer's param groups, watches every optimizer step,
    and on request returns the observation and applies one action (or factor) per agent. It holds no policy
    and knows nothing of Lightning: :class:`~ganno_lightning.layerwise.callback.GANNOCallback` feeds it from
    Trainer hooks and a :class:`~ganno_lightning.layerwise.agent.GANNOAgent`, the meta-training environment
    from its own loop and TorchRL, so both observe and act through identical code.

    Args:
        model: The network being trained.
        optimizer: Its optimizer; only parameters in it are controlled.
        action_multipliers: What each action index multiplies the agent's scale by.
        interval: Optimizer steps between decisions.
        scale_bounds: ``(low, high)`` clip of every scale.
        groups: Partition override (see :meth:`LayerPartition.from_module`).
        partition: The agents, if built beforehand from this model and optimizer (``groups`` is
            then not used).
        lr_schedulers: Schedulers attached to ``optimizer``.
        total_steps: Length of the run in optimizer steps, or ``None`` when unknown.
        grad_samples: Gradient measurements per interval.
        sketch_size: Weights per agent tracked for update size and gradient consistency.
        seed: Seed of the observer's sketch positions.
        decision_steps: Early decision steps before the regular ones (see
            :class:`~ganno_lightning.layerwise.decisions.DecisionSteps`); with step 0 among them the
            first decision comes before any update and observes a :meth:`probe`.
        prior: LR prior under the scales when ``lr_schedulers`` is empty (see
            :class:`~ganno_lightning.layerwise.prior.LRPrior`): the effective LR is
            ``lr x prior(step) x scale``.
        prior_above: The prior acts only in runs of more optimizer steps than this (0: in every run).
        feature_names: What :meth:`observe` returns (see
            :class:`~ganno_lightning.layerwise.observer.LayerObserver`); default: the default set.
        recover_on_spike: Keep the state of the last good decision and, when an interval spikes,
            put it back and cut every LR (:meth:`recover_from_spike`,
            :class:`~ganno_lightning.layerwise.rollback.SpikeRollback`). Costs one copy of the
            weights and optimizer state.
        spike_factor: With ``recover_on_spike``: an interval mean above this times the lowest so far spikes.
        spike_lr_cut: With ``recover_on_spike``: what a rollback multiplies every agent's scale by.
        rollback_memory: With ``recover_on_spike``: where the copy lives, ``"host"`` or ``"device"`` (see
            :class:`~ganno_lightning.layerwise.rollback.SpikeRollback`).

    Example::

        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
        >>> opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        >>> control = LayerwiseController(model, opt, action_multipliers=[0.5, 1.0, 2.0], interval=2)
        >>> for _ in range(2):
        ...     loss = model(torch.randn(8, 3)).pow(2).mean()
        ...     opt.zero_grad(); loss.backward(); opt.step(); control.record_loss(loss.detach())
        >>> control.decision_due
        True
        >>> observation = control.observe()  # [2 agents, 23 features]
        >>> control.apply(torch.tensor([2, 0]))
        >>> control.lr.effective_lrs()
        [0.002, 0.0005]
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        action_multipliers: Sequence[float],
        interval: int,
        scale_bounds: tuple[float, float] = DEFAULT_SCALE_BOUNDS,
        groups: GroupSpec = None,
        partition: LayerPartition | None = None,
        lr_schedulers: Sequence[Any] = (),
        total_steps: int | None = None,
        grad_samples: int = 2,
        sketch_size: int = 1024,
        seed: int = 0,
        decision_steps: Sequence[int] = (),
        prior: str = DEFAULT_PRIOR,
        prior_above: int = 0,
        feature_names: str | Sequence[str] | None = None,
        recover_on_spike: bool = False,
        spike_factor: float = DEFAULT_SPIKE_FACTOR,
        spike_lr_cut: float = DEFAULT_SPIKE_LR_CUT,
        rollback_memory: str = "host",
    ) -> None:
        self.action_set = ActionSet(action_multipliers)
        self.interval = interval
        self.decision_steps = DecisionSteps(interval, decision_steps)
        self.prior = LRPrior(prior, total_steps, has_scheduler=bool(lr_schedulers), above=prior_above)
        if partition is None:
            in_optimizer = [p for group in optimizer.param_groups for p in group["params"]]
            partition = LayerPartition.from_module(model, groups, params=in_optimizer)
        self.partition = partition
        self._model = model
        self.observer = LayerObserver(self.partition, interval=interval, total_steps=total_steps,
                                      grad_samples=grad_samples, sketch_size=sketch_size, seed=seed,
                                      feature_names=feature_names)
        self.lr = LayerwiseLR(optimizer, self.partition, scale_bounds=scale_bounds, lr_schedulers=lr_schedulers,
                              install_hooks=False)
        self.rollback = (SpikeRollback(model, optimizer, spike_factor, spike_lr_cut, rollback_memory)
                         if recover_on_spike else None)
        # One pair of hooks for both: they run on every optimizer step, so they stay lean.
        self._hooks = OutermostStepHooks(optimizer, pre=self.lr.scale_lrs, post=self._after_step)
        self._next_decision = self.decision_steps.first
        self.observer.start_interval(self._next_decision)
        self._update_prior()
        self.schedule = LRSchedule(self.partition.names)
        self.schedule.record(0, self.lr.effective_lrs(), self.lr.scales)

    @property
    def num_agents(self) -> int:
        return len(self.partition)

    @property
    def step(self) -> int:
        """Optimizer steps taken so far in this run."""
        return self.observer.step

    @property
    def decision_due(self) -> bool:
        return self.observer.step >= self._next_decision

    @property
    def next_decision(self) -> int:
        """The optimizer step at which the next decision falls."""
        return self._next_decision

    @property
    def steps_to_decision(self) -> int:
        """Optimizer steps to take before the next decision is due (0: due now)."""
        return max(self._next_decision - self.observer.step, 0)

    @property
    def probe_due(self) -> bool:
        """Whether a decision is due before any update, so it needs a :meth:`probe` to observe."""
        return self.decision_due and self.observer.step == 0 and self.observer.steps_in_interval == 0

    def _after_step(self) -> None:
        self.lr.unscale_lrs()
        self.observer.after_step()
        self._update_prior()

    def count_skipped_steps(self, steps: int = 1) -> None:
        """Count optimizer steps that updated nothing because the optimizer's step was skipped.

        A GradScaler (fp16 mixed precision) skips ``optimizer.step()`` when it finds inf/NaN
        gradients, so the step hooks never see that step, while the trainer counts it. Counting it
        here keeps decisions, progress and the prior on the trainer's steps; its gradients are not
        read (see :meth:`LayerObserver.after_step
        <ganno_lightning.layerwise.observer.LayerObserver.after_step>`).
        """
        for _ in range(steps):
            self.observer.after_step(applied=False)
        self._update_prior()

    def _update_prior(self) -> None:
        if self.prior.active:  # without a prior the factor stays exactly 1 and is never multiplied in
            self.lr.prior_factor = self.prior.factor(self.observer.step)

    def probe(self, training_loss: Callable[[], Tensor | None]) -> None:
        """Observe gradients and loss before any update: one forward/backward, no optimizer step kept.

        ``training_loss`` computes the training loss on the batch the first update will use and
        returns it with its graph, not yet backpropagated (``None`` if the training step skips the
        batch). The probe calls ``backward()`` on it and records that loss and those gradients as the
        interval's. When the observer reads the LR probe
        (:data:`~ganno_lightning.layerwise.features.LR_PROBE_FEATURES`), it then also takes a trial
        update with the optimizer's own ``step()``, at the LRs in force before the first decision
        (the user's, times the prior at step 0), and evaluates ``training_loss`` again, without
        gradients and with the same random draws, at the weights moved by that update times each of
        :data:`~ganno_lightning.layerwise.features.LR_PROBE_MULTIPLIERS`; the update is then undone.
        The trial update skips what a trainer does around ``step()`` (gradient clipping, a
        GradScaler's inf check), and step hooks other than the controller's own still run on it.
        Afterwards it puts everything the training run sees back as it was:

        - weights and optimizer state (after an LR probe's update: the weights, every optimizer
          state tensor and every param group's settings are copied before and restored after);
        - gradients: every parameter's ``.grad`` is set aside before and restored after (usually
          ``None`` at the start of a run), so the first update sees only its own gradients;
        - buffers: every buffer of the model (BatchNorm running statistics and batch counters) is
          copied before and restored after, so a train-mode forward leaves no trace;
        - random numbers: the CPU generator (and the CUDA one of the parameters' device) are
          forked, so dropout and any other draw in the first real step are the same as without it.

        What it cannot undo: side effects of the user's ``training_step`` beyond the model (a list
        it appends to, a counter it increments) happen once more (four times more with an LR
        probe). Its cost: one forward and one backward (about one training step without the
        update), plus one copy of the model's buffers; an LR probe adds one update, three
        forwards and, while it runs, one copy of the weights and two of the optimizer state.

        Raises:
            ValueError: If ``training_loss`` returns a loss without a graph.
            RuntimeError: If the LR probe's trial ``optimizer.step()`` fails (an optimizer that needs a closure).
        """
        params = [p for p in self._model.parameters() if p.requires_grad]
        saved_grads = [p.grad for p in params]
        saved_buffers = [b.detach().clone() for b in self._model.buffers()]
        for p in params:
            p.grad = None
        device = self.observer.device
        try:
            with torch.random.fork_rng(devices=cuda_devices(device)):
                draws = get_rng(device)
                with torch.enable_grad():
                    loss = training_loss()
                    if loss is not None:
                        if not loss.requires_grad:
                            raise ValueError("`training_loss` must return the training loss with its graph (not "
                                             "detached, and not backpropagated yet: the probe runs `backward()`).")
                        loss.backward()
                if loss is not None:
                    self.observer.record_loss(loss.detach())
                    self.observer.sample_gradients()
                    if self.observer.measures_lr_probe:
                        self._probe_lr(training_loss, loss.detach(), draws)
        finally:
            for p, grad in zip(params, saved_grads):
                p.grad = grad
            with torch.no_grad():
                for buffer, saved in zip(self._model.buffers(), saved_buffers):
                    buffer.copy_(saved)

    def _probe_lr(self, training_loss: Callable[[], Tensor | None], loss_before: Tensor,
                  draws: RNGStates) -> None:
        """The LR probe of :meth:`probe`, with the probe's gradients in ``.grad``: one update, undone after."""
        optimizer = self.lr.optimizer
        params = [p for group in optimizer.param_groups for p in group["params"]]
        with torch.no_grad():
            before = [p.detach().clone() for p in params]
        saved_state = save_optimizer_state(optimizer)
        # the groups' settings as they were (an optimizer may keep counters there); tensors cloned, the rest as is
        saved_groups = [{k: v.clone() if isinstance(v, Tensor) else v for k, v in group.items() if k != "params"}
                        for group in optimizer.param_groups]
        losses: list[Tensor | None] = [None] * len(LR_PROBE_MULTIPLIERS)
        try:
            self.lr.scale_lrs()  # the LRs in force before the first decision: the scales, and the prior at step 0
            try:
                with self._hooks.suspended():  # not a step of the run: nothing is counted or observed
                    optimizer.step()
            except Exception as err:
                raise RuntimeError(f"The LR probe's trial update failed: `optimizer.step()` raised {type(err).__name__}: "
                                   f"{err}. Agents that observe {list(LR_PROBE_FEATURES)} need an optimizer whose "
                                   "`step()` runs without a closure (not LBFGS); use an agent without them.") from err
            finally:
                self.lr.unscale_lrs()
            # The weights hold w0 + u (u: the update); moved in place to w0 + m u for each m, from 1 first,
            # so the probe keeps one copy of the weights (w0), not two.
            at = 1.0
            with torch.no_grad():
                for index in sorted(range(len(losses)), key=lambda i: LR_PROBE_MULTIPLIERS[i] != 1.0):
                    multiplier = LR_PROBE_MULTIPLIERS[index]
                    if multiplier != at:
                        for p, b in zip(params, before):
                            p.sub_(b).mul_(multiplier / at).add_(b)
                        at = multiplier
                    set_rng(self.observer.device, draws)  # the same dropout as the probe's own forward
                    loss = training_loss()
                    if loss is None:
                        return
                    losses[index] = loss.detach()
            self.observer.record_lr_probe([loss_before, *losses])
        finally:
            with torch.no_grad():
                for p, b in zip(params, before):
                    p.copy_(b)
            restore_optimizer_state(optimizer, saved_state)
            for group, saved in zip(optimizer.param_groups, saved_groups):
                group.update(saved)

    def record_loss(self, loss: Tensor | float) -> None:
        if self.rollback is not None and self.step <= 1:  # the first step's loss: a spike reference from the start
            self.rollback.record_first_loss(loss)
        self.observer.record_loss(loss)

    def record_val_loss(self, loss: Tensor | float) -> None:
        self.observer.record_val_loss(loss)

    def observe(self, reduce_fn: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """The ``[num_agents, num_features]`` observation (CPU, finite), one host sync."""
        return self.observer.features(self.lr.scales, self.lr.effective_lrs(), reduce_fn)

    @property
    def last_interval_loss(self) -> float:
        """Mean training loss of the interval the last :meth:`observe` summarised (NaN if none)."""
        return self.observer.last_interval_loss

    @property
    def last_interval_loss_finite(self) -> bool:
        """Whether the interval the last :meth:`observe` summarised had a finite mean loss (``True`` if it had none)."""
        return self.observer.last_interval_loss_count == 0 or math.isfinite(self.observer.last_interval_loss)

    def recover_from_spike(self, reduce_fn: Callable[[Tensor], Tensor] | None = None) -> bool:
        """After :meth:`observe`, with ``recover_on_spike``: if the interval spiked, put back the last good
        decision's weights and optimizer state, multiply every scale by ``spike_lr_cut`` and return True;
        otherwise make this state the rollback point. Always False without ``recover_on_spike``.
        ``reduce_fn``: the one :meth:`observe` was given (distributed runs).
        """
        if self.rollback is None or self.observer.last_interval_loss_count == 0:  # a probe or empty interval
            return False
        if not self.rollback.check(self.last_interval_loss, reduce_fn):
            return False
        self.lr.multiply([self.rollback.lr_cut] * self.num_agents)
        self.schedule.record(self.step, self.lr.effective_lrs(), self.lr.scales)  # a decision now supersedes it
        return True

    def record_initial_lrs(self) -> None:
        """Record the LRs again as the run's first row, after something outside set them before it trains."""
        self.schedule.record(0, self.lr.effective_lrs(), self.lr.scales)

    def apply(self, actions: Tensor | Sequence[int]) -> None:
        """Multiply each agent's scale by its action's multiplier, clip, and start a new interval."""
        actions = torch.as_tensor(actions).reshape(-1).tolist()
        if len(actions) != self.num_agents:
            raise ValueError(f"Expected one action per agent ({self.num_agents}), got {len(actions)}.")
        self.apply_multipliers(self.action_set.multipliers_of(actions), actions)

    def apply_multipliers(self, multipliers: Tensor | Sequence[float], actions: Sequence[int] | None = None) -> None:
        """Multiply each agent's scale by its own factor, clip, and start a new interval.

        ``actions``, if given, are the action indices the factors came from, kept in the schedule.
        """
        # Never through a default-dtype tensor: float32 would round an action's multiplier.
        values = multipliers.reshape(-1).tolist() if isinstance(multipliers, Tensor) else multipliers
        multipliers = [float(m) for m in values]
        if len(multipliers) != self.num_agents:
            raise ValueError(f"`multipliers`: expected one per agent ({self.num_agents}), got {len(multipliers)}.")
        if not all(math.isfinite(m) and m > 0 for m in multipliers):
            raise ValueError(f"`multipliers` must be positive and finite, got {multipliers}.")
        self.lr.multiply(multipliers)
        self._start_interval()
        self.schedule.record(self.step, self.lr.effective_lrs(), self.lr.scales, actions)

    def skip_decision(self) -> None:
        """Start a new interval with every scale as it is; the schedule records nothing."""
        self._start_interval()

    def _start_interval(self) -> None:
        self._next_decision = self.decision_steps.after(self.step)
        self.observer.start_interval(self._next_decision - self.step)

    def state_dict(self) -> dict[str, Any]:
        state = {"scales": list(self.lr.scales), "observer": self.observer.state_dict(),
                 "schedule": self.schedule.state_dict(), "next_decision": self._next_decision}
        if self.rollback is not None:
            state["rollback"] = self.rollback.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "scales" in state:
            self.lr.set_scales(state["scales"])
        if "observer" in state:
            self.observer.load_state_dict(state["observer"])
        if "schedule" in state:
            self.schedule.load_state_dict(state["schedule"])
        # Older checkpoints (every-`interval` decisions only) did not store it: the interval began
        # `steps_in_interval` steps ago, at a decision or at the start of the run.
        started = self.step - self.observer.steps_in_interval
        self._next_decision = int(state.get("next_decision", self.decision_steps.after(started)))
        if self.rollback is not None and "rollback" in state:
            self.rollback.load_state_dict(state["rollback"])
        self._update_prior()

    def recover_from_exception(self) -> None:
        """After an exception inside ``optimizer.step()``: unscaled LRs, hooks ready for the next step."""
        self.lr.unscale_lrs()
        self._hooks.reset()

    def close(self) -> None:
        """Detach from the optimizer and restore its original param groups."""
        self._hooks.remove()
        self.lr.close()

