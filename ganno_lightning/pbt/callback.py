"""PBTCallback: one member of a Population Based Training population, inside a Lightning Trainer."""

from __future__ import annotations

import math
import os
import pickle
import random
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from ganno_lightning.files import commit_file, remove_stale_tmp
from ganno_lightning.pbt.core import Explorer, LineageEvent, NoExploit, PBTStrategy, ReadyCriterion, make_exploiter
from ganno_lightning.pbt.store import PopulationStore
from ganno_lightning.tuning.setters import HyperparameterSetter, resolve_setters
from ganno_lightning.tuning.space import Hyperparameter, parse_space

__all__ = ["PBTCallback", "population_settings", "read_checkpoint"]


def population_settings(strategy: PBTStrategy, monitor: str) -> dict[str, Any]:
    """The settings every member of one population must share (checked by the store on join/resume)."""
    return {
        "monitor": monitor,
        "mode": strategy.mode,
        "space": {name: dim.to_dict() for name, dim in strategy.space.items()},
    }


_SYNC_POLL_S = 0.2  # how often a synchronous member looks for slower peers
# what torch.load raises on a cut, emptied or overwritten file (a missing one stays FileNotFoundError)
_DAMAGED = (EOFError, OSError, RuntimeError, pickle.UnpicklingError)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any] | None:
    """The PBT checkpoint at ``path`` (on the CPU), or ``None`` with a warning naming it if it cannot be read.

    Members load each other's and their own checkpoints only through here, so one damaged file
    costs an exploit or a few steps of one member, never the population.

    Args:
        path: a checkpoint written by a member of this population.

    Returns:
        The checkpoint's dict, or ``None`` if the file is cut short, empty or otherwise unreadable.

    Raises:
        FileNotFoundError: if ``path`` does not exist (a donor may have replaced it; callers retry).
    """
    try:
        # files written by this population's own members (Lightning checkpoints with loop state)
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except _DAMAGED as err:
        rank_zero_warn(f"PBT checkpoint {str(path)!r} is damaged and cannot be read ({type(err).__name__}: {err}).")
        return None


class PBTCallback(Callback):
    r"""Make this Trainer one member of a Population Based Training population.

    Every ``ready_interval`` epochs (or optimizer steps) the member writes an atomic checkpoint,
    reports the monitored metric to the population's store and, if it ranks in the bottom quantile,
    *exploits*: it loads a top member's weights, optimizer state and LR-scheduler state, then
    *explores*: it perturbs that member's hyperparameters and applies them **after** the load, to
    every ``optimizer.param_groups`` entry and every scheduler's ``base_lrs``, so the new values are
    the ones in effect (restoring an optimizer state alone would bring back the donor's LR). The
    exploited state is checkpointed and recorded in one step before training goes on, so a member
    killed after an exploit resumes from it, and the lineage shows only exploits that trained.

    Members are separate processes sharing ``population_dir``; :mod:`ganno_lightning.pbt.runner`
    starts them on one machine, :mod:`ganno_lightning.pbt.ray_tune` on a Ray cluster. Values logged
    under ``pbt/<name>`` at every ready point give each member's schedule in every logger.

    Args:
        population_dir: directory shared by all members (SQLite store and checkpoints). Must be writable.
        member: this member's id, a non-negative int unique in the population.
        hyperparameters: the search space: name to :class:`Hyperparameter` or ``{low, high, log, integer}``.
            Built-in names: ``lr`` (base LR), ``weight_decay``, ``momentum``, ``beta1``, ``beta2``, ``eps``.
        monitor: the metric to rank members by, as logged with ``self.log`` (e.g. ``"val_loss"``).
        mode: ``"min"`` or ``"max"``.
        ready_interval: decide every this many ``ready_unit``\ s.
        ready_unit: ``"epoch"`` (after validation at epoch end) or ``"step"`` (optimizer steps).
        exploit: ``"truncation"`` (bottom quantile copies a random top-quantile member), ``"tournament"``
            (copy a random rival if it is better) or ``"none"`` (independent members, a baseline).
        quantile: the fraction of members in the top and bottom groups for truncation selection.
        perturb_factors: two positive multipliers applied at random when exploring.
        resample_probability: probability of resampling a value from its prior instead of perturbing.
        setters: setters for names that are not built in: a :class:`~ganno_lightning.tuning.setters.ModuleAttribute`,
            :class:`~ganno_lightning.tuning.setters.CallbackAttribute`, a callable ``fn(trainer, module, value)``,
            or a string ``"module:attr"`` / ``"callback:ClassName.attr"``.
        initial_hyperparameters: this member's starting values; sampled from the prior when ``None``.
        min_population: members that must have reported before anyone exploits.
        keep_checkpoints: how many of its own checkpoints each member keeps on disk.
        synchronous: rank members at the same training step: a ready member waits until every
            running peer has reported that step, and compares its peers' scores *at that step*
            (members should take the same number of steps per ready interval; a peer without a
            report at that step is ranked by its latest one). The default (asynchronous, as
            Jaderberg et al.) compares against each peer's latest report, which favours whichever
            process happens to run ahead.
        sync_timeout: seconds a synchronous member waits for slower peers (a killed member being
            restarted, say) before ranking with their latest reports; a peer that made it wait
            that long is not waited for again until it reports.
        seed: seeds this member's exploit/explore random stream (combined with ``member``).

    Raises:
        ValueError: for an unknown hyperparameter name, an empty range, or any invalid argument.
        PermissionError: in ``setup`` if ``population_dir`` is not writable.
        RuntimeError: at the first ready point if ``monitor`` was never logged.

    Example::

        from lightning.pytorch import Trainer
        from ganno_lightning.pbt import PBTCallback

        pbt = PBTCallback(
            population_dir="runs/pbt", member=0,
            hyperparameters={"lr": {"low": 1e-4, "high": 1e-1, "log": True}},
            monitor="val_loss", ready_interval=2,
        )
        trainer = Trainer(max_epochs=20, callbacks=[pbt])
        trainer.fit(model, datamodule)
    """

    def __init__(
        self,
        population_dir: str | os.PathLike,
        member: int,
        hyperparameters: Mapping[str, Hyperparameter | Mapping[str, Any]],
        monitor: str = "val_loss",
        mode: str = "min",
        ready_interval: int = 1,
        ready_unit: str = "epoch",
        exploit: str = "truncation",
        quantile: float = 0.25,
        perturb_factors: tuple[float, float] = (0.8, 1.2),
        resample_probability: float = 0.25,
        setters: Mapping[str, Any] | None = None,
        initial_hyperparameters: Mapping[str, float] | None = None,
        min_population: int = 2,
        keep_checkpoints: int = 2,
        synchronous: bool = False,
        sync_timeout: float = 600.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(member, int) or isinstance(member, bool) or member < 0:
            raise ValueError(f"`member` must be a non-negative int, got {member!r}.")
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"`monitor` must be the name of a logged metric, got {monitor!r}.")
        if not isinstance(min_population, int) or min_population < 1:
            raise ValueError(f"`min_population` must be a positive int, got {min_population!r}.")
        if not isinstance(synchronous, bool):
            raise ValueError(f"`synchronous` must be True or False, got {synchronous!r}.")
        if not (isinstance(sync_timeout, (int, float)) and sync_timeout >= 0):
            raise ValueError(f"`sync_timeout` must be a number of seconds >= 0, got {sync_timeout!r}.")
        if not isinstance(keep_checkpoints, int) or keep_checkpoints < 1:
            raise ValueError(f"`keep_checkpoints` must be a positive int, got {keep_checkpoints!r}.")
        if population_dir is None or str(population_dir) == "":
            raise ValueError(f"`population_dir` must be a directory path, got {population_dir!r}.")
        self.population_dir = Path(population_dir)
        self.member = member
        self.synchronous = synchronous
        self.sync_timeout = float(sync_timeout)
        self._stragglers: dict[int, int] = {}  # peer -> its step when a wait for it timed out
        self._damaged: set[str] = set()  # donor checkpoints that could not be read: such a donor is passed over
        self.monitor = monitor
        self.ready = ReadyCriterion(ready_interval, ready_unit)
        self.strategy = PBTStrategy(
            parse_space(hyperparameters),
            mode=mode,
            exploit=make_exploiter(exploit, quantile),
            explorer=Explorer(tuple(perturb_factors), resample_probability),  # type: ignore[arg-type]
        )
        self.setters: dict[str, HyperparameterSetter] = resolve_setters(list(self.strategy.space), setters)
        self.initial_hyperparameters = (
            None if initial_hyperparameters is None else self.strategy.validate_values(initial_hyperparameters)
        )
        self.min_population = min_population
        self.keep_checkpoints = keep_checkpoints
        self.seed = seed
        self._rng = random.Random(zlib.crc32(f"pbt-{seed}-{member}".encode()))
        self._store: PopulationStore | None = None
        self.hyperparameters: dict[str, float] | None = None
        self._last_ready = 0
        self.exploits = 0
        self.ready_count = 0
        self._reported_step = -1

    @property
    def state_key(self) -> str:
        return self._generate_state_key(member=self.member, monitor=self.monitor)

    @property
    def store(self) -> PopulationStore:
        if self._store is None:
            self._store = PopulationStore(self.population_dir)
        return self._store

    # -- checks and start ------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        values = None
        if trainer.is_global_zero:
            store = self.store  # raises PermissionError on an unwritable directory, before training
            store.init_population(population_settings(self.strategy, self.monitor))
            remove_stale_tmp(store.checkpoint_dir(self.member))  # only this member writes there
            start = self.initial_hyperparameters or self.strategy.sample(self._rng)
            values = store.register(self.member, start).hyperparameters
            store.set_status(self.member, "running")  # synchronous peers wait for running members
        values = trainer.strategy.broadcast(values)
        timeout = getattr(trainer.strategy, "_timeout", None)  # DDP's collective timeout
        if self.synchronous and trainer.world_size > 1 and timeout is not None:
            if self.sync_timeout >= timeout.total_seconds():
                raise ValueError(
                    f"`sync_timeout` ({self.sync_timeout:g} s) must be shorter than the DDP timeout"
                    f" ({timeout.total_seconds():g} s): the other ranks wait in a broadcast meanwhile."
                    " Lower `sync_timeout` or raise the strategy's `timeout`."
                )
        if self.hyperparameters is None:  # a checkpoint's state (loaded after setup) takes precedence
            self.hyperparameters = self.strategy.validate_values(values)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # optimizers exist from here on: check every setter can act before the first batch
        for name, setter in self.setters.items():
            setter.validate(trainer, pl_module, name)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after Lightning restored optimizer/scheduler states from `ckpt_path`, so the values stick
        assert self.hyperparameters is not None
        self._apply(trainer, pl_module, self.hyperparameters)
        self._log(trainer, {"exploited": 0.0})

    # -- ready points ----------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.ready.unit == "step" and self.ready.is_ready(trainer.global_step, self._last_ready):
            self._on_ready(trainer, pl_module, trainer.global_step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        progress = trainer.current_epoch + 1
        if self.ready.unit == "epoch" and self.ready.is_ready(progress, self._last_ready):
            self._on_ready(trainer, pl_module, progress)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the final state is what "best member" means: report it without exploiting
        score = self._score(trainer, strict=False)
        if score is not None and self._reported_step != trainer.global_step:
            self._checkpoint_and_report(trainer, score)
        if trainer.is_global_zero:
            self.store.set_status(self.member, "done")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.is_global_zero and self._store is not None:
            try:
                self.store.set_status(self.member, "failed")
            except Exception:  # the original exception matters more than a failed status write
                pass

    def _score(self, trainer: pl.Trainer, strict: bool = True) -> float | None:
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            if not strict:
                return None
            raise RuntimeError(
                f"PBTCallback monitors `{self.monitor}`, which was never logged. Log it with"
                f" `self.log({self.monitor!r}, ...)` or set `monitor` to one of: "
                f"{', '.join(f'`{k}`' for k in metrics) or '(no metrics logged)'}."
            )
        score = float(metrics[self.monitor])
        if not math.isfinite(score):
            score = math.inf if self.strategy.mode == "min" else -math.inf  # diverged members rank last
        return score

    def _save_checkpoint(self, trainer: pl.Trainer, exploit: bool = False) -> Path:
        """Write this member's state at the current step as a whole file; every rank gets its path."""
        path = self.store.checkpoint_path(self.member, trainer.global_step, exploit) if trainer.is_global_zero else None
        path = trainer.strategy.broadcast(path)
        tmp = path.with_name(path.name + ".tmp-write")
        trainer.save_checkpoint(tmp)  # collective; global zero writes the file
        if trainer.is_global_zero:
            commit_file(tmp, path)  # fsync + os.replace: peers only ever see whole files
        return path

    def _checkpoint_and_report(self, trainer: pl.Trainer, score: float) -> Path:
        step = trainer.global_step
        path = self._save_checkpoint(trainer)
        if trainer.is_global_zero:
            self.store.report(self.member, step, score, self.hyperparameters or {}, path)
            self.store.prune_checkpoints(self.member, keep=self.keep_checkpoints)
        trainer.strategy.barrier("pbt_report")
        self._reported_step = step
        return path

    def _on_ready(self, trainer: pl.Trainer, pl_module: pl.LightningModule, progress: int) -> None:
        score = self._score(trainer)
        assert score is not None and self.hyperparameters is not None
        self._last_ready = progress
        self.ready_count += 1
        self._checkpoint_and_report(trainer, score)

        decision = None
        if trainer.is_global_zero and not self._is_last(trainer, progress):
            ready = self._peer_reports(trainer, trainer.global_step)
            if len(ready) >= self.min_population:
                scores = {m: r["score"] for m, r in ready.items()}
                values = {m: r["hyperparameters"] for m, r in ready.items()}
                found = self.strategy.decide(self.member, scores, values, self._rng)  # type: ignore[arg-type]
                if found is not None:
                    decision = {
                        "donor": found.donor,
                        "hyperparameters": found.hyperparameters,
                        "checkpoint": ready[found.donor]["checkpoint"],
                        "donor_step": ready[found.donor]["step"],
                        "donor_score": ready[found.donor]["score"],
                    }
        decision = trainer.strategy.broadcast(decision)
        if decision is None:
            self._log(trainer, {"score": score, "exploited": 0.0, "donor": -1.0})
            return

        checkpoint = self._load_donor(decision["donor"], decision["checkpoint"])
        if not trainer.strategy.reduce_boolean_decision(checkpoint is not None, all=True):
            self._damaged.add(decision["checkpoint"])
            rank_zero_warn(f"PBT member {self.member} at step {trainer.global_step} skips copying member"
                           f" {decision['donor']}: its checkpoint cannot be read; it trains on as it is, and ranks"
                           " without that member until it writes another checkpoint.")
            self._log(trainer, {"score": score, "exploited": 0.0, "donor": -1.0})
            return
        assert checkpoint is not None
        old = dict(self.hyperparameters)
        self._load_training_state(trainer, pl_module, checkpoint)
        self.hyperparameters = self.strategy.validate_values(decision["hyperparameters"])
        self._apply(trainer, pl_module, self.hyperparameters)  # after the load, or the donor's LR would win
        self.exploits += 1
        # Commit the exploited state before training on: a member killed from here on resumes from
        # the donor's weights with the explored values; one killed before never shows this exploit.
        path = self._save_checkpoint(trainer, exploit=True)
        if trainer.is_global_zero:
            event = LineageEvent(
                member=self.member,
                step=trainer.global_step,
                donor=decision["donor"],
                donor_step=decision["donor_step"],
                score=score,
                donor_score=decision["donor_score"],
                old_hyperparameters=old,
                new_hyperparameters=dict(self.hyperparameters),
                time=time.time(),
            )
            self.store.record_exploit(event, checkpoint=path)
            self.store.prune_checkpoints(self.member, keep=self.keep_checkpoints)
        trainer.strategy.barrier("pbt_exploit")
        rank_zero_info(
            f"PBT member {self.member} at step {trainer.global_step}: {self.monitor}={score:.4g}, copied member"
            f" {decision['donor']} ({decision['donor_score']:.4g}); {old} -> {self.hyperparameters}"
        )
        self._log(trainer, {"score": score, "exploited": 1.0, "donor": float(decision["donor"])})

    def _peer_reports(self, trainer: pl.Trainer, step: int) -> dict[int, dict[str, Any]]:
        """What each member reported, to rank by: its latest report, or (synchronous) its report at ``step``."""
        members = self.store.members()
        if self.synchronous and not isinstance(self.strategy.exploit, NoExploit):
            deadline = time.monotonic() + self.sync_timeout
            while True:
                behind = [m for m, r in members.items() if r.status == "running" and r.step < step
                          and self._stragglers.get(m) != r.step]
                if not behind or time.monotonic() >= deadline or trainer.received_sigterm:
                    break
                time.sleep(_SYNC_POLL_S)
                members = self.store.members()
            if behind and not trainer.received_sigterm:
                self._stragglers.update({m: members[m].step for m in behind})
                rank_zero_warn(f"PBT member {self.member}: members {behind} have not reached step {step} after "
                               f"{self.sync_timeout:g} s; ranking them by their latest reports.")
        latest = {m: {"score": r.score, "hyperparameters": r.hyperparameters, "checkpoint": r.checkpoint,
                      "step": r.step} for m, r in members.items()}
        if self.synchronous:  # peers that ran ahead are judged by where they stood at this step
            for m, report in self.store.reports_at(step).items():
                at_step = report["checkpoint"] and Path(report["checkpoint"]).is_file()
                # a donor whose checkpoint of that step was pruned is copied from its latest one
                latest[m] = {**report, "step": step} if at_step else {**latest[m], "score": report["score"]}
        return {m: r for m, r in latest.items()
                if r["score"] is not None and r["checkpoint"] and r["checkpoint"] not in self._damaged}

    def _is_last(self, trainer: pl.Trainer, progress: int) -> bool:
        """No exploit at the final ready point: the reported final state must be the trained one."""
        if self.ready.unit == "epoch":
            return trainer.max_epochs is not None and trainer.max_epochs > 0 and progress >= trainer.max_epochs
        return trainer.max_steps is not None and trainer.max_steps > 0 and progress >= trainer.max_steps

    def _load_donor(self, donor: int, path: str, attempts: int = 5) -> dict[str, Any] | None:
        # The donor may replace its checkpoint between our query and our read; it keeps the last
        # `keep_checkpoints`, so re-reading the store's pointer finds a whole, current file.
        # A damaged one (None) is not retried: the exploit is skipped.
        for attempt in range(attempts):
            try:
                return read_checkpoint(path)
            except FileNotFoundError:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
                record = self.store.members().get(donor)
                path = record.checkpoint if record and record.checkpoint else path
        raise AssertionError("unreachable")

    @staticmethod
    def _load_training_state(trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Copy the donor's weights, optimizer states and LR-scheduler states (not its loop progress)."""
        pl_module.load_state_dict(checkpoint["state_dict"])
        optimizer_states = checkpoint.get("optimizer_states", [])
        if len(optimizer_states) != len(trainer.optimizers):
            raise RuntimeError(
                f"The donor checkpoint has {len(optimizer_states)} optimizer state(s), this member has"
                f" {len(trainer.optimizers)}. All members must run the same `configure_optimizers`."
            )
        for optimizer, state in zip(trainer.optimizers, optimizer_states):
            optimizer.load_state_dict(state)
        for config, state in zip(trainer.lr_scheduler_configs, checkpoint.get("lr_schedulers", [])):
            config.scheduler.load_state_dict(state)

    def _apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule, values: Mapping[str, float]) -> None:
        for name, setter in self.setters.items():
            setter.apply(trainer, pl_module, values[name])

    def _log(self, trainer: pl.Trainer, extra: Mapping[str, float]) -> None:
        metrics = {f"pbt/{name}": float(value) for name, value in (self.hyperparameters or {}).items()}
        metrics.update({f"pbt/{key}": float(value) for key, value in extra.items()})
        metrics["pbt/member"] = float(self.member)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "member": self.member,
            "hyperparameters": dict(self.hyperparameters or {}),
            "last_ready": self._last_ready,
            "exploits": self.exploits,
            "ready_count": self.ready_count,
            "rng_state": self._rng.getstate(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        values = state_dict.get("hyperparameters")
        if values:
            try:
                self.hyperparameters = self.strategy.validate_values(values)
            except ValueError as err:
                rank_zero_warn(f"PBTCallback ignores the checkpoint's hyperparameters: {err}")
        self._last_ready = state_dict.get("last_ready", 0)
        self.exploits = state_dict.get("exploits", 0)
        self.ready_count = state_dict.get("ready_count", 0)
        rng_state = state_dict.get("rng_state")
        if rng_state is not None:
            version, internal, gauss = rng_state
            self._rng.setstate((version, tuple(internal), gauss))
