"""Neural Optimizer Search: sample rules from the controller, score them by short training runs in
parallel worker processes, update the controller with PPO, checkpoint, repeat.

Run it as a script with an omegaconf YAML and ``key=value`` overrides::

    ganno-nos-search configs/nos_search.yaml rounds=20 workers=4

Files in ``out_dir``: ``search_state.pt`` (resumable state, written atomically, previous copy in
``search_state.pt.prev``), ``results.json`` (every candidate: rule, reward, status, curve) and the
W&B run (offline unless ``wandb.mode=online``).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from omegaconf import DictConfig, OmegaConf

from ganno_lightning import config as shared
from ganno_lightning.config import ConfigCommandLine, WandbConfig, check_wandb
from ganno_lightning.files import atomic_file, atomic_write_text, check_writable_dir
from ganno_lightning.imports import import_callable
from ganno_lightning.nos.controller import ControllerPPO, RuleController, SearchSpace
from ganno_lightning.nos.worker import check_task, evaluate_candidate
from ganno_lightning.trials.pool import JobFailure, JobPool

__all__ = [
    "SearchConfig",
    "TaskConfig",
    "CandidateTrainingConfig",
    "SpaceConfig",
    "ControllerConfig",
    "RuleSearch",
    "load_config",
    "main",
]

STATE_VERSION = 1
_DEFAULT_SPACE = SearchSpace()


@dataclass
class TaskConfig:
    module: str = "ganno_lightning.examples.digits:DigitsClassifier"  # 'pkg.module:Name' of a LightningModule or factory
    module_kwargs: dict = field(default_factory=dict)  # passed to it
    # 'pkg.module:Name' of a LightningDataModule; null when the module brings its own dataloaders
    datamodule: Optional[str] = None
    datamodule_kwargs: dict = field(default_factory=dict)


@dataclass
class CandidateTrainingConfig:
    """The ``train`` section: how every candidate rule is trained and scored."""

    max_steps: int = 200  # optimizer steps per candidate
    val_check_interval: int = 50  # validate every N steps: the points of the reward curve
    limit_val_batches: float = 1.0
    lr: float = 1e-2  # learning rate every candidate rule runs with
    monitor: str = "val_acc"  # validation metric the module logs
    mode: str = "max"  # "max" or "min": which direction of `monitor` is better
    divergence_factor: float = 10.0  # stop a candidate whose loss exceeds this x its first loss
    diverged_reward: float = 0.0  # reward of diverged/failed candidates (below any real reward)
    accelerator: str = "cpu"
    torch_threads: int = 1  # per worker; workers x threads should not exceed the cores
    timeout_s: float = 600.0  # wall-clock limit of one candidate run


@dataclass
class SpaceConfig:
    operands: list = field(default_factory=lambda: list(_DEFAULT_SPACE.operands))
    unary: list = field(default_factory=lambda: list(_DEFAULT_SPACE.unary))
    binary: list = field(default_factory=lambda: list(_DEFAULT_SPACE.binary))
    depth: int = 1  # 1 is the paper's b(u1(op1), u2(op2))


@dataclass
class ControllerConfig:
    hidden: int = 32  # LSTM width
    lr: float = 5e-3  # Adam lr of the controller
    epochs: int = 4  # PPO epochs per round
    clip_epsilon: float = 0.2
    entropy_coeff: float = 0.01
    baseline_decay: float = 0.8  # moving-average reward baseline


@dataclass
class SearchConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    train: CandidateTrainingConfig = field(default_factory=CandidateTrainingConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    wandb: WandbConfig = field(default_factory=lambda: WandbConfig(enabled=True, project="ganno-nos"))
    rounds: int = 10  # controller updates
    candidates_per_round: int = 8  # rules sampled (and trained) per round
    workers: int = 2  # parallel candidate processes; 0 runs candidates in this process
    max_retries: int = 1  # re-runs of a candidate whose worker process died
    seed: int = 0
    out_dir: str = "runs/nos_search"
    resume: bool = True  # continue from out_dir/search_state.pt when it exists
    # before the first round: check task.*_kwargs against the factories and fit one batch, in which
    # train.monitor must be logged (a mistake there would fail every candidate)
    check_task: bool = True


def load_config(config: Union[str, os.PathLike, dict, DictConfig, SearchConfig, None] = None, overrides=()) -> DictConfig:
    """Merge a YAML file (or dict) and ``key=value`` overrides onto the :class:`SearchConfig` schema.

    Raises:
        ValueError: an unknown key (named in the message), a value of the wrong type or a missing file.
    """
    return shared.load_config(SearchConfig, config, overrides, see="configs/nos_search.yaml")


def _positive_int(cfg: DictConfig, key: str, minimum: int = 1) -> None:
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{key}` must be an int >= {minimum}, got {value!r}.")


def _validate(cfg: DictConfig) -> None:
    _positive_int(cfg, "rounds")
    _positive_int(cfg, "candidates_per_round")
    _positive_int(cfg, "workers", 0)
    _positive_int(cfg, "max_retries", 0)
    _positive_int(cfg, "train.max_steps")
    _positive_int(cfg, "train.val_check_interval")
    if cfg.train.val_check_interval > cfg.train.max_steps:
        raise ValueError(
            f"`train.val_check_interval` ({cfg.train.val_check_interval}) must be <= `train.max_steps` "
            f"({cfg.train.max_steps}), or no validation (and so no reward) would run."
        )
    if not cfg.train.lr > 0:
        raise ValueError(f"`train.lr` must be a positive float, got {cfg.train.lr!r}.")
    if cfg.train.mode not in ("min", "max"):
        raise ValueError(f"`train.mode` must be 'min' or 'max', got {cfg.train.mode!r}.")
    if not math.isfinite(cfg.train.diverged_reward):
        raise ValueError(f"`train.diverged_reward` must be finite, got {cfg.train.diverged_reward!r}.")
    if not cfg.train.timeout_s > 0:
        raise ValueError(f"`train.timeout_s` must be a positive float, got {cfg.train.timeout_s!r}.")
    check_wandb(cfg.wandb)
    import_callable(cfg.task.module, argument="task.module")  # fail now, not in every worker
    if cfg.task.datamodule:
        import_callable(cfg.task.datamodule, argument="task.datamodule")


class RuleSearch:
    """The search loop. Lightning-free except inside the candidate workers.

    Args:
        config: a :class:`SearchConfig`, dict, DictConfig or path to a YAML file.
        overrides: ``key=value`` strings applied on top.

    Raises:
        ValueError: an invalid config (unknown key, bad value, empty search space, unimportable task),
            or a saved state whose search space differs from the config.
        PermissionError: ``out_dir`` cannot be created or written.

    Example::

        from ganno_lightning.nos.search import RuleSearch

        search = RuleSearch("configs/nos_search_smoke.yaml", ["out_dir=runs/nos_demo"])
        history = search.run()
        print(search.best())
    """

    def __init__(self, config=None, overrides=()) -> None:
        self.cfg = load_config(config, overrides)
        _validate(self.cfg)
        self.space = SearchSpace(
            operands=list(self.cfg.space.operands),
            unary=list(self.cfg.space.unary),
            binary=list(self.cfg.space.binary),
            depth=int(self.cfg.space.depth),
        )
        c = self.cfg.controller
        self.ppo = ControllerPPO(
            RuleController(self.space, hidden=c.hidden, seed=self.cfg.seed),
            lr=c.lr,
            epochs=c.epochs,
            clip_epsilon=c.clip_epsilon,
            entropy_coeff=c.entropy_coeff,
            baseline_decay=c.baseline_decay,
        )
        self.out_dir = check_writable_dir(self.cfg.out_dir, "out_dir")
        self.state_path = self.out_dir / "search_state.pt"
        self.results_path = self.out_dir / "results.json"
        self.history: list[dict] = []
        self.round_stats: list[dict] = []
        self.next_round = 0
        self.wandb_id: Optional[str] = None
        self._pool: Optional[JobPool] = None
        self._run = None
        self._task_checked = False
        if self.cfg.resume and (self.state_path.exists() or self.state_path.with_name(self.state_path.name + ".prev").exists()):
            self._load_state()

    # ------------------------------------------------------------------------------------------
    # state
    def _state(self) -> dict:
        return {
            "version": STATE_VERSION,
            "next_round": self.next_round,
            "ppo": self.ppo.state_dict(),
            "history": self.history,
            "round_stats": self.round_stats,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "wandb_id": self.wandb_id,
        }

    def save_state(self) -> None:
        """Write ``search_state.pt`` atomically (:func:`~ganno_lightning.files.atomic_file`), keeping the previous copy."""
        if rank_zero_only.rank != 0:  # one writer, should the search ever run under a launcher
            return
        state = self._state()
        with atomic_file(self.state_path) as tmp:
            torch.save(state, tmp)
            if self.state_path.exists():  # moved aside only once the new state is fully written
                os.replace(self.state_path, self.state_path.with_name(self.state_path.name + ".prev"))
        payload = json.dumps({"best": self.best(), "rounds": self.round_stats, "candidates": self.history}, indent=1)
        atomic_write_text(self.results_path, payload)

    def _load_state(self) -> None:
        prev = self.state_path.with_name(self.state_path.name + ".prev")
        for path in (self.state_path, prev):
            if not path.exists():
                continue
            try:
                state = torch.load(path, weights_only=True)
                if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
                    raise ValueError(f"unsupported state format (version {state.get('version') if isinstance(state, dict) else None})")
            except Exception as err:  # a corrupt file must not lose the search: fall back and keep it
                aside = path.with_name(path.name + f".corrupt-{int(time.time())}")
                os.replace(path, aside)
                rank_zero_warn(f"RuleSearch: could not read {path} ({err}); moved it to {aside}.")
                continue
            saved_space = state["config"].get("space")
            now_space = OmegaConf.to_container(self.cfg.space, resolve=True)
            if saved_space != now_space:
                diff = sorted(k for k in now_space if saved_space.get(k) != now_space[k])
                raise ValueError(
                    f"{path} was saved with a different search space (differs in: {', '.join(diff)}). "
                    "Use a new `out_dir`, or pass resume=false to overwrite it."
                )
            self.ppo.load_state_dict(state["ppo"])
            self.history = list(state["history"])
            self.round_stats = list(state.get("round_stats", []))
            self.next_round = int(state["next_round"])
            self.wandb_id = state.get("wandb_id")
            rank_zero_info(f"RuleSearch: resumed from {path} at round {self.next_round}.")
            return
        rank_zero_warn("RuleSearch: no readable search state; starting from scratch.")

    # ------------------------------------------------------------------------------------------
    # candidate runs
    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._run is not None:
            self._run.finish()
            self._run = None

    def _jobs(self, round_idx: int, indexed_rules: list) -> list:
        task = OmegaConf.to_container(self.cfg.task, resolve=True)
        train = OmegaConf.to_container(self.cfg.train, resolve=True)
        return [
            {"round": round_idx, "index": i, "rule": rule, "seed": self.cfg.seed * 100_003 + round_idx * 1000 + i, "task": task, "train": train}
            for i, rule in indexed_rules
        ]

    def _evaluate(self, jobs: list) -> list:
        if self._pool is None:  # kept for every round: its workers pay their start-up once
            self._pool = JobPool(evaluate_candidate, processes=self.cfg.workers, retries=self.cfg.max_retries,
                                 timeout_s=self.cfg.train.timeout_s)
        return self._pool.run(jobs, self._failure)

    @staticmethod
    def _failure(job: dict, why: JobFailure) -> dict:
        return {
            "round": job["round"], "index": job["index"], "rule": job["rule"], "lr": job["train"]["lr"],
            "reward": None, "diverged": False, "reason": why.reason, "curve": [], "steps": 0, "status": why.status,
            "seconds": 0.0,
        }

    # ------------------------------------------------------------------------------------------
    def best(self) -> Optional[dict]:
        """The best candidate so far (highest finite reward), or None."""
        scored = [h for h in self.history if h.get("reward") is not None]
        return max(scored, key=lambda h: h["reward"]) if scored else None

    def _init_wandb(self) -> None:
        if not self.cfg.wandb.enabled or self.cfg.wandb.mode == "disabled":
            return
        import wandb

        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.wandb_id is None:
            self.wandb_id = uuid.uuid4().hex[:12]
        self._run = wandb.init(
            project=self.cfg.wandb.project,
            name=self.cfg.wandb.name,
            id=self.wandb_id,
            resume="allow",
            mode=self.cfg.wandb.mode,
            dir=str(self.out_dir),
            config=OmegaConf.to_container(self.cfg, resolve=True),
        )

    def dry_run(self) -> None:
        """Check the task once, in this process, before any candidate: see :func:`~ganno_lightning.nos.worker.check_task`.

        Raises:
            ValueError: naming the config key at fault (``task.module_kwargs.<name>``, ``train.monitor``...).
        """
        check_task(OmegaConf.to_container(self.cfg.task, resolve=True), OmegaConf.to_container(self.cfg.train, resolve=True),
                   seed=self.cfg.seed)
        self._task_checked = True

    def _stop_if_all_failed(self, round_idx: int, rules: list, results: list) -> None:
        """Raise when every candidate of the round failed with one error: a broken task, not bad rules.

        Training the controller on ``train.diverged_reward`` for all of them would teach it nothing.
        Diverged candidates and dead workers do not count: those are results, or the pool's to retry.
        """
        reasons = {r["reason"] for r in results if r["status"] == "failed"}
        if len(results) < len(set(rules)) or len(reasons) != 1 or any(r["status"] != "failed" for r in results):
            return
        raise RuntimeError(
            f"RuleSearch stopped in round {round_idx}: all {len(rules)} candidates failed with the same error, so the "
            f"controller would learn only from `train.diverged_reward`. The error: {reasons.pop().rstrip('.')}. Fix the task, then "
            "run again with the same `out_dir` to resume."
        )

    def run(self) -> list:
        """Run the remaining rounds; returns the history of all candidates.

        Raises:
            ValueError: (a new search with ``check_task``) the task fails its one-batch check.
            RuntimeError: every candidate of a round failed with the same error.
        """
        if self.cfg.check_task and not self.history and not self._task_checked:
            self.dry_run()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._init_wandb()
        cache: dict[str, dict] = {h["rule"]: h for h in self.history if h["status"] in ("ok", "diverged")}
        try:
            for round_idx in range(self.next_round, self.cfg.rounds):
                start = time.perf_counter()
                actions, log_probs = self.ppo.controller.sample(self.cfg.candidates_per_round)
                rules = [self.ppo.controller.decode(a) for a in actions]
                # the same rule need not be trained twice; its earlier score stands
                first = {}
                for i, rule in enumerate(rules):
                    first.setdefault(rule, i)
                fresh = [(i, r) for r, i in first.items() if r not in cache]
                results = self._evaluate(self._jobs(round_idx, fresh))
                self._stop_if_all_failed(round_idx, rules, results)
                for result in results:
                    if result["status"] in ("ok", "diverged"):
                        cache[result["rule"]] = result
                    self.history.append(result)
                evaluated = {h["rule"]: h for h in self.history if h.get("round") == round_idx}
                batch = []
                for i, rule in enumerate(rules):
                    res = evaluated.get(rule) or cache[rule]
                    reward = res["reward"] if res["reward"] is not None else self.cfg.train.diverged_reward
                    batch.append(reward)
                    if rule not in evaluated or first[rule] != i:
                        self.history.append({**res, "round": round_idx, "index": i, "cached": True})
                rewards = torch.tensor(batch, dtype=torch.float32)
                stats = self.ppo.update(actions, log_probs, rewards)
                best = self.best()
                stats.update(
                    {
                        "round": round_idx,
                        "charts/max_reward": float(rewards.max()),
                        "charts/best_reward": best["reward"] if best else self.cfg.train.diverged_reward,
                        "charts/diverged_fraction": sum(
                            1 for h in self.history if h.get("round") == round_idx and h["status"] != "ok"
                        ) / len(rules),
                        "charts/unique_rules": len(set(rules)),
                        "charts/round_seconds": time.perf_counter() - start,
                    }
                )
                self.round_stats.append(stats)
                self.next_round = round_idx + 1
                self.save_state()
                if self._run is not None:
                    self._run.log(stats, step=round_idx)
                rank_zero_info(
                    f"RuleSearch round {round_idx}: mean reward {stats['charts/mean_reward']:.4f}, "
                    f"best {stats['charts/best_reward']:.4f} ({best['rule'] if best else '-'})"
                )
            self._log_final()
        finally:
            self.close()
        return self.history

    def _log_final(self) -> None:
        if self._run is None:
            return
        import wandb

        columns = ["round", "index", "rule", "reward", "status", "reason", "steps", "curve"]
        table = wandb.Table(columns=columns)
        for h in self.history:
            table.add_data(h.get("round"), h.get("index"), h["rule"], h.get("reward"), h["status"], h.get("reason", ""), h.get("steps", 0), json.dumps(h.get("curve", [])))
        self._run.log({"candidates": table})
        best = self.best()
        if best is not None:
            self._run.summary["best_rule"] = best["rule"]
            self._run.summary["best_reward"] = best["reward"]


def _checked_search(config, overrides=()) -> RuleSearch:
    """A :class:`RuleSearch` (config loaded, validated, saved state read) whose task passed its check."""
    search = RuleSearch(config, overrides)
    if search.cfg.check_task and not search.history:
        search.dry_run()
    return search


def main(argv: Optional[list] = None) -> int:
    """``ganno-nos-search CONFIG.yaml [key=value ...]``; a bad config exits with one line and status 2."""
    cli = ConfigCommandLine("ganno-nos-search", __doc__, SearchConfig, see="configs/nos_search.yaml")
    search = cli.load(_checked_search, cli.parse_args(argv))  # a bad config, out_dir or task: one line, status 2
    history = search.run()
    best = search.best()
    print(f"evaluated {len(history)} candidates; results in {search.results_path}")
    if best is not None:
        print(f"best rule: {best['rule']}  reward {best['reward']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
