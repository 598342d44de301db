"""GANNOCallback: per-layer learning rates set by a trained agent, inside a Lightning Trainer."""

from __future__ import annotations

import copy
import itertools
import math
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import (
    CombinedLoader,
    rank_zero_deprecation,
    rank_zero_info,
    rank_zero_only,
    rank_zero_warn,
)
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader

from ganno_lightning.layerwise.actions import (
    DEFAULT_EXPLORATION,
    check_exploration,
    check_min_change,
    check_scale_bounds,
)
from ganno_lightning.layerwise.agent import Decision, GANNOAgent
from ganno_lightning.layerwise.controller import LayerwiseController
from ganno_lightning.layerwise.decisions import SCALED_INTERVAL, paced_to_run, resolve_decision_steps
from ganno_lightning.layerwise.features import check_lr_probe_decisions
from ganno_lightning.layerwise.lr_search import (
    InitialLRSearch,
    LRSearchResult,
    check_lr_search,
    collect_batches,
)
from ganno_lightning.layerwise.partition import GroupSpec, LayerPartition
from ganno_lightning.layerwise.prior import check_prior, check_prior_above
from ganno_lightning.layerwise.rollback import SpikeRule, check_rollback_memory, check_spike_settings
from ganno_lightning.layerwise.schedule import LRSchedule
from ganno_lightning.rng import replayable

AgentLike = GANNOAgent | str | os.PathLike | None


#: A fit longer than this many times the agent's longest meta-training runs gets a warning: the agent has
#: only seen its late-run losses and LR levels from shorter runs (the 1200-step long runs of the long-runs
#: recipe are 4x its 300-step ones).
LONG_FIT_FACTOR = 4


class GANNOCallback(Callback):
    r"""Let a GANNO agent set every layer's learning rate during ``Trainer.fit``.

    Every ``interval`` optimizer steps, one agent per layer observes its layer's training dynamics
    and multiplies that layer's LR scale by a factor its policy chooses (see ``exploration``). The effective
    LR of a layer is ``scheduler_lr * scale``, so your LR scheduler keeps working underneath. All
    decisions are logged to every attached logger as ``ganno/lr/<layer>`` and
    ``ganno/scale/<layer>``; with a :class:`~lightning.pytorch.loggers.WandbLogger` a heatmap and a
    ``wandb.Table`` of the schedule are added at the end of fit. The schedule is always kept in
    :attr:`schedule`, and written as CSV and PNG when ``save_dir`` is set.

    Two options change when the agent acts and what it acts around; both default to what the agent
    was meta-trained with (stored in its file; ``None``/``"none"`` for agents that predate them):

    - ``decision_steps`` adds early decisions before the regular ones, e.g. ``[0, 5, 12]`` or
      ``"front_loaded"``. A decision at step 0 comes before any update: on the first training batch
      the callback runs one *probe* (your ``training_step`` and a backward, no update kept, no
      logging, inside a forked RNG; gradients and buffers such as BatchNorm statistics are put back
      after), so the agent sees gradients before it sets the first LRs. It costs one forward and one
      backward; side effects of ``training_step`` outside the model (appending to a list, say)
      happen once more. An agent that observes the LR probe features (``lr_probe_change_*``) also
      tries the first update there: one optimizer step at the LRs in force before the first
      decision, then the loss on the same batch at 1/8x, 1x and 8x that update (three forwards
      without gradients), all undone after (weights and optimizer state are copied for it);
      ``training_step`` then runs four times more. Such an agent needs a decision at step 0.
    - ``prior`` puts a schedule under the scales when your ``configure_optimizers`` has no LR
      scheduler: ``"cosine"`` or ``"warmup_cosine"`` to the fit's length
      (``trainer.estimated_stepping_batches``), so the effective LR is ``lr x prior(step) x scale``
      and an agent that keeps its scales at 1 follows that schedule. With a scheduler of your own,
      yours stays the prior; if the fit's length is unknown the LR stays constant, with a warning.
      ``prior_above`` keeps it to fits of more optimizer steps (an agent file can record both: one
      meta-trained on short runs around a constant LR keeps that there, and anneals on long fits);
      where the agent's own long-fit prior cannot apply, a log line says so instead of a warning.

    ``lr_search`` (the agent's own by default; the shipped agent's is on) sets the LR level the fit starts
    from (see :mod:`~ganno_lightning.layerwise.lr_search`): before the first step, from the initial weights, a few
    optimizer steps at each of several factors of your LR (by default 0.1x to 10x), each
    scored by your ``training_step``'s loss on the first batches of your validation loader (without one, or with
    several training loaders, on the first training batches, which the trials then do not train on; the log line
    says which); the fit starts at the best factor, your own
    LR winning ties. All of it is undone (weights, buffers, optimizer state, RNG, the training loader's
    shuffling), so the fit is the one you would get at that LR. It costs ``len(factors) * steps`` training steps
    and ``len(factors) * held_batches`` forwards once per fit (``training_step``'s side effects outside the model
    happen that often too, and metrics objects it updates count those batches; ``self.log`` calls are dropped; no
    gradient clipping, accumulation or GradScaler is applied in the trials, so fp16 mixed precision may underflow
    there), and a copy of the weights and optimizer state in host memory while it runs. A trial that raises is
    undone and the fit starts at your LR, with a warning naming the error. It runs in this callback's
    ``on_train_start``, so before your module's own ``on_train_start`` and ``on_train_epoch_start``. It is
    skipped with an LR scheduler of your own and when resuming from a checkpoint; the chosen factor is logged as
    ``ganno/lr_search_factor`` and kept in :attr:`lr_search_result`.

    A non-finite training loss (NaN or inf; the mean over an interval, agreed on every rank) stops
    the agent: that interval's decision is skipped, every layer keeps its scale, nothing is logged
    or recorded in the schedule, and a warning names the steps (once per fit). The agent decides
    again at the first interval whose loss is finite.

    A fit more than ``LONG_FIT_FACTOR`` (4) times longer than the agent's longest meta-training runs
    (:attr:`GANNOAgent.trained_horizon`) gets a warning at its start: the agent's late decisions
    there are extrapolation.

    ``recover_on_spike`` (the agent's own by default; the shipped agent's is on, with ``spike_factor=5``)
    recovers instead: at every decision whose interval went well the callback copies the weights,
    buffers and optimizer state; when an interval's mean loss is non-finite or above ``spike_factor``
    times the lowest so far (only non-finite once that lowest loss is 0 or below), it puts that copy
    back, multiplies every layer's LR by ``spike_lr_cut``,
    warns once per fit and logs ``ganno/rollbacks``. The steps since the copy are lost, the run is
    not. After a finite spike the agent still decides (on top of the cut); after a non-finite one it
    waits for a finite interval. The copy is kept in host memory (``rollback_memory="host"``), so its
    tensors take no accelerator memory: on a GPU it goes to pinned buffers, queued on the current
    stream (the host never waits; the GPU spends the transfer's time once per decision);
    ``"device"`` keeps it beside the weights instead (one more copy of weights and optimizer state in
    accelerator memory, no transfers).

    During fit every layer has its own param group, named after the layer, so Lightning's
    :class:`~lightning.pytorch.callbacks.LearningRateMonitor` logs one series per layer:
    ``lr-AdamW/<layer>`` (``lr-AdamW/<name>/<layer>`` for a param group you named, and
    ``lr-AdamW/pg<i>/<layer>`` for unnamed ones when you have several). The monitor reads the groups
    between optimizer steps, so it shows the scheduler's LR, the same for every layer; the agent's
    scale applies only inside ``optimizer.step()``, and the effective LR is ``ganno/lr/<layer>``.
    Checkpoints keep your own param groups and names. On a GPU, a torch ``Adam`` or ``AdamW`` whose
    ``foreach`` and ``fused`` you left unset runs its per-layer groups with ``fused=True``: torch's
    default (foreach) launches 7 kernels per group, which makes a launch-bound step much slower.

    Args:
        agent: A :class:`GANNOAgent`, the path of an agent file, or ``None`` for the agent that
            ships with the package.
        interval: Optimizer steps between decisions; ``None`` uses the agent's own; ``"scaled"``
            uses the agent's own stretched by the fit's length over the length of the runs it was
            meta-trained on, so that a long fit gets as many regular decisions, at the same
            fractions of the run, as a training run did (early ``decision_steps`` stay; a fit no
            longer than those, or of unknown length, keeps the agent's interval; see
            :func:`~ganno_lightning.layerwise.decisions.paced_to_run`). Not the default: its
            interval-dependent features (update size, loss trend) then read longer intervals than in
            training, and on long runs it helped one agent and hurt four others
            (``benchmarks/results/paced_interval/``). Steps count as the trainer
            counts them (``trainer.global_step``): with fp16 mixed precision, a step the GradScaler
            skips for inf/NaN gradients counts, though it updates nothing.
        exploration: How the agent's action distribution becomes one LR change per layer:
            ``"mean"`` (default): its expected log-change, which moves LRs as fast as its sampled
            actions did in meta-training, without their noise; ``"mode"``: its most likely action,
            which exaggerates whichever way it leans (a policy whose likeliest action, at 40%, is a
            doubling doubles at every decision); ``"random"``: a sample, seeded by ``seed``.
        min_change: The smallest LR change the agent makes, as a factor (>= 1): a layer whose chosen
            change lies strictly between ``1 / min_change`` and ``min_change`` keeps its LR at that
            decision. 1 (default): every change is made. An experiment, not a fix: on the dev suites
            skipping the shipped agent's changes below x2^0.25 or x2^0.5 cut none of its harm and
            cost some of its gains (``benchmarks/results/deploy_min_change/``).
        deterministic: Deprecated: ``True`` is ``exploration="mode"``, ``False`` is ``"random"``.
        groups: Override which parameters form an agent: glob patterns over module names, or a
            callable ``(module_name, module) -> agent name or None``. Default: one agent per
            module that owns trainable parameters.
        scale_bounds: ``(low, high)`` bounds of every layer's scale; ``None`` uses the agent's.
        val_loss_key: Logged metric read as the validation loss feature, if it is logged.
        save_dir: If set, ``ganno_schedule.csv`` and ``ganno_schedule.png`` are written there at
            the end of fit (on global rank zero).
        grad_samples: Optimizer steps per interval whose gradients are measured.
        seed: Seed of the observation sketch and of action sampling.
        decision_steps: Early decision steps before the regular ones every ``interval``: a list of
            increasing steps (``[0, 5, 12]``), ``"front_loaded"`` (0, ``interval // 5``,
            ``interval // 2``) or ``"none"``; ``None`` uses the agent's own.
        prior: LR schedule under the scales when the module has no LR scheduler: ``"none"``,
            ``"cosine"`` or ``"warmup_cosine"``; ``None`` uses the agent's own.
        prior_above: The prior acts only in fits of more optimizer steps than this (0: in every
            fit); ``None`` uses the agent's own with the agent's own prior, and 0 with another ``prior``.
        lr_search: Short trials at factors of your LR before the fit, which then starts at the best one:
            ``True`` (the defaults), an :class:`~ganno_lightning.layerwise.lr_search.InitialLRSearch`, a
            mapping of its fields, or ``False`` (none); ``None`` uses the agent's own.
        recover_on_spike: Roll back to the last good decision and cut every LR when the loss spikes;
            ``None`` uses the agent's own (on when its file records a spike rule).
        spike_factor: With ``recover_on_spike``: an interval mean above this times the lowest so
            far is a spike (> 1); ``None``: the agent's rule's, else 3.
        spike_lr_cut: With ``recover_on_spike``: what a rollback multiplies every LR by, in (0, 1);
            ``None``: the agent's rule's, else 0.5.
        rollback_memory: With ``recover_on_spike``: where the copy is kept, ``"host"`` (default) or
            ``"device"``.

    Raises:
        ValueError: If ``interval``, ``exploration``, ``min_change``, ``scale_bounds``, ``grad_samples``,
            ``decision_steps``, ``prior``, ``prior_above``, ``lr_search``, ``recover_on_spike``, ``spike_factor``,
            ``spike_lr_cut`` or ``rollback_memory`` are invalid.
        AgentCheckpointError: If the agent file is missing, corrupt or incompatible.
        MisconfigurationException: At fit start, for manual optimization (Lightning itself refuses
            several optimizers under automatic optimization) or torch's LBFGS (one param group only).

    Example::

        from lightning.pytorch import Trainer
        from ganno_lightning import GANNOCallback

        trainer = Trainer(max_epochs=5, callbacks=[GANNOCallback(agent="agent.pt", save_dir="schedule")])
        trainer.fit(model, datamodule=datamodule)
        print(trainer.callbacks[0].schedule.rows()[:5])
    """

    def __init__(
        self,
        agent: AgentLike = None,
        interval: int | str | None = None,
        *,
        exploration: str = DEFAULT_EXPLORATION,
        min_change: float = 1.0,
        groups: GroupSpec = None,
        scale_bounds: tuple[float, float] | None = None,
        val_loss_key: str | None = "val_loss",
        save_dir: str | os.PathLike | None = None,
        grad_samples: int = 2,
        seed: int = 0,
        deterministic: bool | None = None,
        decision_steps: list[int] | str | None = None,
        prior: str | None = None,
        prior_above: int | None = None,
        lr_search: InitialLRSearch | bool | dict | None = None,
        recover_on_spike: bool | None = None,
        spike_factor: float | None = None,
        spike_lr_cut: float | None = None,
        rollback_memory: str = "host",
    ) -> None:
        if interval not in (None, SCALED_INTERVAL) and (
                not isinstance(interval, int) or isinstance(interval, bool) or interval <= 0):
            raise ValueError(f"`interval` must be a positive int, {SCALED_INTERVAL!r} (the agent's own, stretched to "
                             f"the run's length) or None (the agent's own), got {interval!r}.")
        if not isinstance(grad_samples, int) or grad_samples <= 0:
            raise ValueError(f"`grad_samples` must be a positive int, got {grad_samples!r}.")
        if recover_on_spike is not None and not isinstance(recover_on_spike, bool):
            raise ValueError(f"`recover_on_spike` must be True, False or None (the agent's own), got "
                             f"{recover_on_spike!r}.")
        self.rollback_memory = check_rollback_memory(rollback_memory)
        if deterministic is not None:
            exploration = "mode" if deterministic else "random"
            rank_zero_deprecation(f"`deterministic={deterministic!r}` is deprecated; it now means "
                                  f"`exploration={exploration!r}`. Pass `exploration` instead (default 'mean').")
        self.exploration = check_exploration(exploration)
        self.min_change = check_min_change(min_change)
        if isinstance(agent, GANNOAgent):
            self.agent = agent
        elif agent is None:
            self.agent = GANNOAgent.default()
        elif isinstance(agent, (str, os.PathLike)):
            self.agent = GANNOAgent.load(agent)
        else:
            raise TypeError(
                f"`agent` must be a GANNOAgent, the path of an agent file, or None, got {type(agent).__name__}."
            )
        if interval not in (None, SCALED_INTERVAL, self.agent.interval):
            rank_zero_warn(
                f"`interval={interval}` differs from the {self.agent.interval} steps the agent was trained with; "
                "interval-dependent features (update size, loss trend) will read differently than in training.")
        self._paced_to_run = interval == SCALED_INTERVAL
        if self._paced_to_run and self.agent.trained_horizon is None:
            rank_zero_warn("`interval='scaled'` keeps the agent's interval: its file records no meta-training run "
                           "length (`env.horizon`) to stretch it by. Pass an int to set the interval yourself.")
        self.interval = interval if isinstance(interval, int) else self.agent.interval
        self.decision_steps = (resolve_decision_steps(decision_steps, self.interval) if decision_steps is not None
                               else self.agent.decision_steps)
        check_lr_probe_decisions(self.agent.feature_names, self.decision_steps, "decision_steps")
        self.prior = check_prior(prior) if prior is not None else self.agent.prior
        if prior_above is not None:
            self.prior_above = check_prior_above(prior_above)
        else:  # the agent's bound goes with the agent's prior; another prior you name acts in every fit
            self.prior_above = self.agent.prior_above if self.prior == self.agent.prior else 0
        # the agent's own long-fits-only prior, nothing of it named here: where it cannot apply, a note will do
        self._prior_is_agents_long_fit_aid = prior is None and prior_above is None and self.prior_above > 0
        self.scale_bounds = check_scale_bounds(scale_bounds) if scale_bounds is not None else self.agent.scale_bounds
        self.lr_search = check_lr_search(lr_search) if lr_search is not None else self.agent.lr_search
        rule = self.agent.recover_on_spike or SpikeRule()  # the agent's own rule, else the defaults
        self.recover_on_spike = (recover_on_spike if recover_on_spike is not None
                                 else self.agent.recover_on_spike is not None)
        if not self.recover_on_spike and (spike_factor is not None or spike_lr_cut is not None):
            rank_zero_warn("GANNOCallback: `spike_factor` and `spike_lr_cut` act only with the rollback on spikes, "
                           "which is off here (`recover_on_spike=False`, or an agent whose file records no spike "
                           "rule); pass `recover_on_spike=True` to turn it on.")
        self.spike_factor, self.spike_lr_cut = check_spike_settings(
            rule.spike_factor if spike_factor is None else spike_factor,
            rule.spike_lr_cut if spike_lr_cut is None else spike_lr_cut)
        #: What the initial LR search of the current (or last) fit found; ``None`` when none ran.
        self.lr_search_result: LRSearchResult | None = None
        #: Rollbacks after loss spikes in the current (or last) fit, a resumed one's included (``ganno/rollbacks``).
        self.rollbacks = 0
        self.groups = groups
        self.val_loss_key = val_loss_key
        self.save_dir = None if save_dir is None else Path(save_dir)
        self.grad_samples = grad_samples
        self.seed = seed
        self.controller: LayerwiseController | None = None
        self._partition: LayerPartition | None = None  # built at fit start, controlled from train start
        self._generator = torch.Generator().manual_seed(seed)
        self._loaded_state: dict[str, Any] | None = None
        self._final_state: dict[str, Any] | None = None
        self._policy_state: torch.Tensor | None = None  # a recurrent agent's memory of this fit
        self._fingerprint: str | None = None
        self._warned_nonfinite = self._warned_rollback = False
        self._step_offset = 0
        #: The :class:`~ganno_lightning.layerwise.schedule.LRSchedule` of the current (or last) fit.
        self.schedule: LRSchedule | None = None

    # -- checks -------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and not pl_module.automatic_optimization:
            raise MisconfigurationException(
                "GANNOCallback needs automatic optimization, but `automatic_optimization` is False in "
                f"{type(pl_module).__name__}. Let Lightning call the optimizer (remove manual optimization) "
                "or remove GANNOCallback."
            )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Built (and announced) here, with Lightning's other start-up lines: a line logged once the
        # sanity check's progress bar has drawn follows the bar on its line in a captured log.
        if isinstance(trainer.optimizers[0], torch.optim.LBFGS):
            raise MisconfigurationException(
                "GANNOCallback gives every layer its own param group, and torch's LBFGS takes exactly one: "
                "use another optimizer (SGD, Adam, ...) with GANNOCallback, or remove GANNOCallback.")
        in_optimizer = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]
        self._partition = LayerPartition.from_module(pl_module, self.groups, params=in_optimizer)
        rank_zero_info(f"GANNOCallback controls {len(self._partition)} layers: {self._partition}")

    # -- training -----------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After checkpoint restore: the optimizer already holds its saved state in the user's
        # original param groups, which the controller now splits.
        total_steps = _total_steps(trainer)
        self._warn_if_far_longer_than_training(total_steps)
        self.lr_search_result = None
        self.rollbacks = 0
        if self.lr_search is not None:  # before the controller: the agent then starts from the chosen LR
            self._search_initial_lr(trainer, pl_module)
        if self._paced_to_run:
            trained = self.agent.trained_horizon_for(total_steps)  # a routed agent: the acting route's
            self.interval = paced_to_run(self.agent.interval, trained, total_steps)
            if self.interval != self.agent.interval:
                rank_zero_info(f"GANNOCallback: a {total_steps}-step fit, {trained}-step runs in "
                               f"meta-training: deciding every {self.interval} steps, not {self.agent.interval}.")
        resumed_interval = (self._loaded_state or {}).get("interval")
        if resumed_interval is not None and resumed_interval != self.interval:
            rank_zero_warn(f"GANNOCallback: the checkpoint's fit decided every {resumed_interval} steps, this one every "
                           f"{self.interval} (`interval='scaled'` on a fit of another length); decisions follow the new "
                           f"interval from here.")
        self.controller = LayerwiseController(
            pl_module,
            trainer.optimizers[0],
            action_multipliers=self.agent.action_multipliers,
            interval=self.interval,
            scale_bounds=self.scale_bounds,
            partition=self._partition,
            lr_schedulers=[config.scheduler for config in trainer.lr_scheduler_configs],
            total_steps=total_steps,
            grad_samples=self.grad_samples,
            seed=self.seed,
            decision_steps=self.decision_steps,
            prior=self.prior,
            prior_above=self.prior_above,
            feature_names=self.agent.feature_names,
            recover_on_spike=self.recover_on_spike,
            spike_factor=self.spike_factor,
            spike_lr_cut=self.spike_lr_cut,
            rollback_memory=self.rollback_memory,
        )
        if self.controller.prior.inactive_reason is not None:
            # A prior you asked for, or one the agent acts around in every fit, is worth a warning; one the agent
            # takes for long fits only leaves it where it was trained when it cannot apply, which is worth a note.
            report = rank_zero_info if self._prior_is_agents_long_fit_aid else rank_zero_warn
            report(f"GANNOCallback: `prior={self.prior!r}` is not applied, {self.controller.prior.inactive_reason}"
                   "; the agent acts around "
                   + ("your scheduler's LR." if "scheduler" in self.controller.prior.inactive_reason else
                      "a constant LR. Set `max_steps` or `max_epochs` with a sized dataloader to apply it."))
        self._policy_state = None
        if self._loaded_state is not None:
            self.controller.load_state_dict(self._loaded_state["controller"])
            if "generator" in self._loaded_state:
                self._generator.set_state(self._loaded_state["generator"])
            self._policy_state = self._loaded_state.get("policy_state")
            expected = (self.controller.num_agents, self.agent.actor.state_size)
            written_by = self._loaded_state.get("agent")
            if self._policy_state is not None and written_by not in (None, self._agent_fingerprint()):
                # Another agent's memory means nothing to this one; the LR scales reached stay.
                rank_zero_warn(f"The checkpoint was written with another agent (fingerprint {written_by}, this one "
                               f"is {self._agent_fingerprint()}): keeping its LR scales, starting this agent's "
                               "memory fresh.")
                self._policy_state = None
            elif self._policy_state is not None and tuple(self._policy_state.shape) != expected:
                rank_zero_warn(f"The checkpoint's agent memory has shape {tuple(self._policy_state.shape)}, but this "
                               f"agent keeps {expected}: it was written by another agent; starting from a fresh one.")
                self._policy_state = None
            self._loaded_state = None
        if self.controller.rollback is not None:  # a resumed fit counts on from its checkpoint
            self.rollbacks = self.controller.rollback.rollbacks
        # Decisions follow the trainer's optimizer steps, which include the steps a GradScaler
        # skips; the offset is where this controller's count started (a resumed fit without
        # GANNO state starts it at 0).
        self._step_offset = trainer.global_step - self.controller.step
        self.schedule = self.controller.schedule
        self._final_state = None
        self._warned_nonfinite = self._warned_rollback = False

    def _search_initial_lr(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._loaded_state is not None or trainer.global_step > 0:
            return  # a resumed fit goes on at the LR it reached
        if trainer.lr_scheduler_configs:
            rank_zero_info("GANNOCallback: no initial LR search: your optimizer has an LR scheduler, whose LRs stand.")
            return
        if trainer.fast_dev_run:
            rank_zero_info("GANNOCallback: no initial LR search under `fast_dev_run` (a check of the code, not a fit).")
            return
        search = self.lr_search
        held, train, scored_on, batch_idx = _search_batches(trainer, search)
        try:
            result = search.run(
                pl_module, trainer.optimizers[0],
                lambda batch: _probe_step(trainer, pl_module, trainer.strategy.batch_to_device(batch),
                                          batch_idx.get(id(batch), 0)),
                train, held, reduce_fn=_mean_over_ranks(trainer))
        except Exception as err:  # the search is an aid: it undoes its trials and never stops your fit
            result = LRSearchResult(1.0, reason=f"a trial raised {type(err).__name__}: {err} (pass `lr_search=False` "
                                                "to skip the search)")
        self.lr_search_result = result
        if result.reason is not None:
            rank_zero_warn(f"GANNOCallback: no initial LR search: {result.reason}; the fit starts at your LR.")
            return
        scores = ", ".join(f"x{factor:g}: {score:.4g}" for factor, score in result.scores.items())
        rank_zero_info(f"GANNOCallback: the initial LR search starts the fit at x{result.factor:g} your LR (loss on "
                       f"{len(held)} {scored_on} after {search.steps} steps at each factor: {scores}).")
        for logger in trainer.loggers:
            logger.log_metrics({"ganno/lr_search_factor": result.factor}, step=trainer.global_step)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.controller is None or not self.controller.probe_due:
            return
        # A decision at step 0, before any update: observe one forward/backward on this very batch.
        self.controller.probe(lambda: _probe_step(trainer, pl_module, batch, batch_idx))
        self._decide(trainer)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.controller is None:
            return
        controller = self.controller
        skipped = trainer.global_step - self._step_offset - controller.step
        if skipped > 0:  # a GradScaler skipped `optimizer.step()` (inf/NaN gradients); the trainer counted it
            controller.count_skipped_steps(skipped)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            # Lightning reports the loss divided by the accumulation factor (a detached copy: no
            # tensor op here without accumulation, since every op is a kernel launch on a GPU).
            k = trainer.accumulate_grad_batches
            controller.record_loss(loss.detach() * k if k != 1 else loss)
        if controller.decision_due:
            self._decide(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.controller is None or trainer.sanity_checking or not self.val_loss_key:
            return
        value = trainer.callback_metrics.get(self.val_loss_key)
        if value is not None:
            self.controller.record_val_loss(value)

    def _decide(self, trainer: Trainer) -> None:
        controller = self.controller
        distributed = trainer.world_size > 1
        reduce_fn = _mean_over_ranks(trainer)
        observation = controller.observe(reduce_fn)
        # The reduced loss: every rank rolls back and skips alike.
        if controller.recover_from_spike(reduce_fn):
            self._report_rollback(trainer)
            if not controller.last_interval_loss_finite:
                controller.skip_decision()
                return
        elif not controller.last_interval_loss_finite:
            self._skip_nonfinite_interval(controller.last_interval_loss)
            return
        # Every rank sees the same (reduced) observation, so a recurrent state stays identical across ranks.
        decision = self.agent.decide(observation, self._policy_state, exploration=self.exploration,
                                     generator=self._generator, min_change=self.min_change)
        if not isinstance(decision, Decision):
            raise TypeError(f"{type(self.agent).__name__}.decide must return a "
                            f"ganno_lightning.layerwise.agent.Decision(multipliers, actions, state), got {type(decision).__name__}.")
        multipliers, actions, self._policy_state = decision
        if distributed:  # samples (and float rounding) can differ per rank; every rank applies rank zero's
            multipliers, actions = trainer.strategy.broadcast((multipliers, actions), src=0)
        controller.apply_multipliers(multipliers, None if actions is None else actions.tolist())
        metrics = {}
        for name, lr, scale in zip(controller.partition.names, controller.lr.effective_lrs(), controller.lr.scales):
            metrics[f"ganno/lr/{name}"] = lr
            metrics[f"ganno/scale/{name}"] = scale
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _warn_if_far_longer_than_training(self, total_steps: int | None) -> None:
        trained = self.agent.trained_horizon_for(total_steps)
        if total_steps is None or trained is None or total_steps <= LONG_FIT_FACTOR * trained:
            return
        rank_zero_warn(
            f"GANNOCallback: this fit's {total_steps} optimizer steps are {total_steps / trained:.0f}x the longest "
            f"runs the agent was meta-trained on ({trained} steps), so its decisions late in the fit are "
            "extrapolation (the README's dev_long figures show the shipped agent behind a tuned cosine schedule on "
            "runs 10x its training length). Compare it once with your own schedule on a fit this long.")

    def _report_rollback(self, trainer: Trainer) -> None:
        controller = self.controller
        self.rollbacks = controller.rollback.rollbacks
        if not self._warned_rollback:
            self._warned_rollback = True
            rank_zero_warn(
                f"GANNOCallback: the training loss spiked to {controller.last_interval_loss:.4g} (mean of the "
                f"optimizer steps up to global step {trainer.global_step}; {_lowest_so_far(controller.rollback)}): "
                "the weights and optimizer state of the last decision are "
                f"back and every LR is cut by x{self.spike_lr_cut:g}. (Warned once per fit; `ganno/rollbacks` "
                "counts them.)")
        for logger in trainer.loggers:
            logger.log_metrics({"ganno/rollbacks": self.rollbacks}, step=trainer.global_step)

    def _skip_nonfinite_interval(self, loss: float) -> None:
        end, steps = self.controller.step, self.controller.observer.interval_length
        if not self._warned_nonfinite:
            self._warned_nonfinite = True
            where = (f"mean of the {steps} optimizer steps up to global step {end}" if steps else
                     "the probe on the first batch, before any update")
            rank_zero_warn(
                f"GANNOCallback: the training loss is {loss} ({where}); every layer keeps its LR scale, and the "
                "agent decides again once the loss is finite. (Warned once per fit.)")
        self.controller.skip_decision()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.controller is None:
            return
        self._write_outputs(trainer)
        self._detach()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        # Runs before `OnExceptionCheckpoint` saves: no scaled LR may reach that checkpoint.
        if self.controller is not None:
            self.controller.recover_from_exception()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._detach()  # also after an exception: give the optimizer its original groups back

    def _detach(self) -> None:
        if self.controller is not None:
            self._final_state = self.controller.state_dict()
            self.controller.close()
            self.controller = None

    @rank_zero_only
    def _write_outputs(self, trainer: Trainer) -> None:
        schedule = self.controller.schedule
        if self.save_dir is not None:
            schedule.to_csv(self.save_dir / "ganno_schedule.csv")
            schedule.plot(self.save_dir / "ganno_schedule.png")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import matplotlib.pyplot as plt
                import wandb

                figure = schedule.figure()  # the scale heatmap (the agent's action) beside the effective LR
                logger.experiment.log({
                    "ganno/schedule_plot": wandb.Image(figure),
                    "ganno/schedule": wandb.Table(columns=["step", "layer", "lr", "scale", "action"],
                                                  data=[list(r) for r in schedule.rows()]),
                })
                plt.close(figure)

    # -- checkpoints --------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        # Keep the checkpoint in the user's own param-group layout, so it resumes with or
        # without this callback; the split is redone from `state_dict` at train start.
        if self.controller is None:
            return
        if checkpoint.get("optimizer_states"):
            checkpoint["optimizer_states"][0] = self.controller.lr.merged_optimizer_state(
                checkpoint["optimizer_states"][0])
        if checkpoint.get("lr_schedulers"):
            checkpoint["lr_schedulers"] = [self.controller.lr.merged_scheduler_state(s)
                                           for s in checkpoint["lr_schedulers"]]

    def __getstate__(self) -> dict[str, Any]:
        # strategy="ddp_spawn" pickles the callback into each process, where a torch.Generator (and its state
        # tensor, through shared memory) cannot go: its state travels as bytes
        state = self.__dict__.copy()
        state["_generator"] = self._generator.get_state().numpy().tobytes()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        generator = torch.Generator()
        generator.set_state(torch.frombuffer(bytearray(state["_generator"]), dtype=torch.uint8))
        self.__dict__.update(state, _generator=generator)

    def state_dict(self) -> dict[str, Any]:
        if self.controller is not None:
            controller_state = self.controller.state_dict()
        elif self._final_state is not None:
            controller_state = self._final_state
        elif self._loaded_state is not None:
            return self._loaded_state
        else:
            return {}
        return {"controller": controller_state, "generator": self._generator.get_state(), "interval": self.interval,
                "policy_state": self._policy_state, "agent": self._agent_fingerprint()}

    def _agent_fingerprint(self) -> str:
        if self._fingerprint is None:  # hashed once: the agent's weights do not change while it is deployed
            self._fingerprint = self.agent.fingerprint()
        return self._fingerprint

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Applied at train start, once the optimizer exists.
        if state_dict.get("controller") is not None:
            self._loaded_state = dict(state_dict)


def _probe_step(trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> torch.Tensor | None:
    """The module's training loss on ``batch``, as a training step computes it, with its graph and no backward yet.

    Through the strategy, so autocast (mixed precision) and a DDP wrapper apply as in a real step
    (under DDP the probe's backward averages the gradients over ranks). ``self.log`` calls are
    dropped: the probe must not add a value to any logged metric. The loss is not scaled (no
    GradScaler) and not divided by ``accumulate_grad_batches``; no backward or optimizer hooks run.
    """
    with _logging_muted(pl_module):
        output = trainer.strategy.training_step(batch, batch_idx)
    loss = output.get("loss") if isinstance(output, dict) else output
    return loss if isinstance(loss, torch.Tensor) else None  # None: the step skips this batch


class _logging_muted:
    """Shadow ``module.log`` and ``module.log_dict`` with no-ops (instance attributes, removed after)."""

    def __init__(self, module: LightningModule) -> None:
        self.module = module

    def __enter__(self) -> None:
        for name in ("log", "log_dict"):
            object.__setattr__(self.module, name, _no_log)

    def __exit__(self, *exc: Any) -> None:
        for name in ("log", "log_dict"):
            vars(self.module).pop(name, None)


def _no_log(*args: Any, **kwargs: Any) -> None:
    return None


def _mean_over_ranks(trainer: Trainer) -> Any:
    """A function averaging a tensor over the trainer's processes (``None`` in a one-process fit): every rank then
    takes the same decision from it."""
    return (lambda t: trainer.strategy.reduce(t, reduce_op="mean")) if trainer.world_size > 1 else None


def _lowest_so_far(rollback: Any) -> str:
    lowest = rollback.lowest_loss
    return f"the lowest so far is {lowest:.4g}" if math.isfinite(lowest) else "no finite loss yet"


def _search_batches(trainer: Trainer, search: InitialLRSearch) -> tuple[list[Any], list[Any], str, dict[int, int]]:
    """``(held, train, scored_on, batch_idx)``: the batches an initial LR search scores its trials on and trains
    them on, and each one's index in its pass over its loader (what a training step gets as ``batch_idx``; by
    ``id`` of the batch).

    Validation batches when there is one training loader (a `training_step` that takes one loader's batches
    takes a validation batch; a combined batch of several loaders is not one), else the first training
    batches, held out, with the trials training on the rest of that first pass (cycled). The pass over the data
    leaves the fit's shuffling, random draws and workers as they were.
    """
    train_loaders = CombinedLoader(trainer.train_dataloader).flattened
    held_source = _first_loader(trainer.val_dataloaders) if len(train_loaders) == 1 else None
    loaders = [*train_loaders, *([held_source] if held_source is not None else [])]
    generators = _loader_generators(loaders)
    saved = [g.get_state() for g in generators]
    batch_idx: dict[int, int] = {}
    # held-out training batches come from the first pass, so the trials train on that pass only: a later pass
    # would train them on the held-out data too
    batches = _training_batches(trainer, batch_idx, passes=None if held_source is not None else 1)
    try:
        with replayable("cpu"):  # the loaders draw on the host
            if held_source is not None:
                held = [batch for batch, _ in zip(_unshared(held_source), range(search.held_batches))]
                batch_idx.update((id(batch), index) for index, batch in enumerate(held))
                _, train = collect_batches(batches, 0, search.steps)
            else:
                held, train = collect_batches(batches, search.held_batches, search.steps)
    finally:
        batches.close()
        for generator, state in zip(generators, saved):
            generator.set_state(state)
    return held, train, "validation batches" if held_source is not None else "held-out training batches", batch_idx


def _unshared(loaders: Any) -> Any:
    """``loaders`` (a loader, or a list, tuple or dict of them) with each DataLoader that keeps persistent workers
    replaced by a copy that does not: iterating the loader itself would reset the very worker iterator the fit is
    reading (Lightning opens it before ``on_train_start``), and the fit's first epoch would lose batches."""
    if isinstance(loaders, dict):
        return {key: _unshared(value) for key, value in loaders.items()}
    if isinstance(loaders, (list, tuple)):
        return type(loaders)(_unshared(value) for value in loaders)
    if isinstance(loaders, DataLoader) and loaders.persistent_workers and loaders.num_workers > 0:
        copied = copy.copy(loaders)  # same dataset, sampler and collate_fn; the sampler's generator is restored after
        object.__setattr__(copied, "persistent_workers", False)  # DataLoader refuses this once initialised
        object.__setattr__(copied, "_iterator", None)
        return copied
    return loaders


def _first_loader(loaders: Any) -> Any:
    """The first of the trainer's validation dataloaders (a loader, a list or a dict of them), or ``None``."""
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    return loaders


def _training_batches(trainer: Trainer, batch_idx: dict[int, int], passes: int | None = None) -> Any:
    """The training data's batches from the start, epoch after epoch (``passes`` of them; ``None``: no end),
    combined as the fit combines them (its own iterator is not touched), each epoch cut where the fit's is
    (``limit_train_batches``); each batch's index in its epoch goes into ``batch_idx``."""
    per_epoch = trainer.num_training_batches
    for _pass in itertools.count() if passes is None else range(passes):
        empty = True
        for index, (batch, _, _) in enumerate(iter(CombinedLoader(_unshared(trainer.train_dataloader),
                                                                  mode="max_size_cycle"))):
            if index >= per_epoch:
                break
            empty = False
            batch_idx[id(batch)] = index
            yield batch
        if empty:
            return


def _loader_generators(loaders: list[Any]) -> list[torch.Generator]:
    """The torch generators that shuffle ``loaders`` (a pass over the data advances them)."""
    found: dict[int, torch.Generator] = {}
    for loader in loaders:
        samplers = [getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)]
        for owner in (loader, *samplers):
            generator = getattr(owner, "generator", None)
            if isinstance(generator, torch.Generator):
                found[id(generator)] = generator
    return list(found.values())


def _total_steps(trainer: Trainer) -> int | None:
    """Optimizer steps of the whole fit: Lightning's estimate covers max_epochs and max_steps alike."""
    try:
        total = trainer.estimated_stepping_batches
    except Exception:  # e.g. an iterable dataset without a length
        total = float("inf")
    if total != float("inf") and total > 0:
        return int(total)
    return int(trainer.max_steps) if trainer.max_steps and trainer.max_steps > 0 else None
