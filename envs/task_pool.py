"""A pool of meta-training tasks, each with its own tuned constant LR: a per-task teacher's answers.

The privileged expert that the imitation recipes teach (``agents/imitation.py``) steers each LR
toward its task's best. Without a pool that best is the task's *cell's* calibrated LR
(``envs/tasks/best_lrs.json``), and a task's own best differs from its cell's: replaying 100 runs
of the calibrated recipe, that expert is below the constant LR in 71% of runs with 21% harm, where
the LR tuned per run reaches a geometric mean ratio of 0.39 against its 0.64
(``benchmarks/results/expert_ceiling_calibrated.md``). A meta-training env draws a fresh task per
episode, so no task's own best is known, unless the tasks come from a pool whose LR grids were
replayed beforehand (``ganno-build-task-pool``, :mod:`.build_task_pool`).

With ``env.task_pool: PATH`` an episode draws one of the pool's tasks, replays it exactly (the
seed that drew it draws the same task, weights and batches), starts it from an LR drawn
log-uniformly within 10x (``env.pool_start_spread``) of the task's own tuned best (both sides of the
optimum), and tells the privileged columns that best. Tasks repeat across episodes; their starting LRs do not.

Example::

    # configs/task_pool.yaml names the recipe whose env and family sections the pool replays
    ganno-build-task-pool configs/task_pool.yaml
    ganno-train configs/experiments/ganno_imitation_task_pool_candidate.yaml
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["MATCHED_ENV_KEYS", "PoolTask", "TaskPool"]

#: The env settings a pool's replays depend on: an env that draws from the pool must use the same. Decision
#: steps are not among them: a step-0 probe leaves the run as it was (``InnerRun.probe``), and a pool built with
#: front-loaded decisions came out identical, all 600 tasks, to one built without.
MATCHED_ENV_KEYS = ("horizon", "interval", "split", "val_batches")


@dataclass(frozen=True)
class PoolTask:
    """One task of a pool: the env seed that draws it and its tuned best constant LR."""

    seed: int  #: ``make_env(config, seed)`` draws this task first
    task: str  #: its name
    best_lr: float  #: the LR of the lowest final validation loss on its grid
    best_loss: float  #: that loss: a tuned constant LR's run of this task, weights and batches
    task_lr: float = math.nan  #: the LR the task drew, which the grid's factors multiplied


class TaskPool:
    """The tasks of a pool file written by ``ganno-build-task-pool``, and the settings they were replayed under.

    Args:
        tasks: The pool's tasks.
        family: The ``family`` section its replays drew tasks from.
        env: Its replays' values of :data:`MATCHED_ENV_KEYS`.
        path: Where it was read from (for messages).

    Example::

        pool = TaskPool.load("configs/task_pools/calibrated_train.json")
        pool.draw(torch.Generator().manual_seed(0)).best_lr
    """

    def __init__(self, tasks: list[PoolTask], family: dict[str, Any], env: dict[str, Any], path: str = "<memory>") -> None:
        if not tasks:
            raise ValueError(f"`env.task_pool` '{path}' holds no tasks; build it with `ganno-build-task-pool`.")
        self.tasks, self.family, self.env, self.path = tasks, family, env, path

    @classmethod
    def load(cls, path: str | os.PathLike, key: str = "env.task_pool") -> TaskPool:
        """Read a pool file (cached while the file is unchanged).

        Raises:
            ValueError: If the file is missing or not a pool, naming ``key`` and the command that writes one.
        """
        path = str(path)
        try:
            stamp = os.stat(path).st_mtime_ns
        except OSError:
            how = ("horizon=<env.long_horizon> " if key == "env.long_task_pool" else "")
            unset = "set `env.long_run_prob: 0`" if key == "env.long_task_pool" else f"leave `{key}` unset"
            raise ValueError(f"`{key}`: no pool file at '{path}'. Write one with `ganno-build-task-pool "
                             f"configs/task_pool.yaml {how}out={path}`, or {unset}.") from None
        return _load(path, stamp, key)

    @functools.cached_property
    def by_seed(self) -> dict[int, PoolTask]:
        """The pool's tasks by the seed that draws them."""
        return {task.seed: task for task in self.tasks}

    def draw(self, generator: torch.Generator) -> PoolTask:
        """One task, uniformly."""
        return self.tasks[int(torch.randint(len(self.tasks), (1,), generator=generator))]

    def check_matches(self, family: dict[str, Any], env: dict[str, Any], key: str = "env.task_pool",
                      horizon_key: str = "horizon") -> None:
        """Raise unless an env with this ``family`` section and these settings replays the pool's tasks.

        Args:
            family: The config's ``family`` section.
            env: The env's values of :data:`MATCHED_ENV_KEYS` for the runs this pool serves.
            key: The config key that named the pool (for messages).
            horizon_key: The env key those runs' length comes from (``long_horizon`` for a long runs' pool).

        Raises:
            ValueError: Naming the first setting that differs and both values.
        """
        if family != self.family:
            raise ValueError(f"`{key}` '{self.path}' was built for the family section {self.family}, but "
                             f"this config's is {family}: its seeds would draw other tasks. Build a pool for this "
                             f"config (`ganno-build-task-pool configs/task_pool.yaml recipe=...`).")
        for name in MATCHED_ENV_KEYS:
            if env.get(name) != self.env.get(name):
                shown = horizon_key if name == "horizon" else name
                raise ValueError(f"`{key}` '{self.path}' was built with env.{name}={self.env.get(name)!r}, but "
                                 f"this config has env.{shown}={env.get(name)!r}: its best LRs are for other runs. Set "
                                 f"env.{shown} to {self.env.get(name)!r} or build a pool for these runs "
                                 f"(`ganno-build-task-pool configs/task_pool.yaml "
                                 f"{'horizon=' + str(env.get(name)) if name == 'horizon' else 'recipe=...'} out=...`).")

    def __len__(self) -> int:
        return len(self.tasks)


@functools.lru_cache(maxsize=4)
def _load(path: str, stamp: int, key: str) -> TaskPool:
    try:
        data = json.loads(Path(path).read_text())
        tasks = [PoolTask(int(t["seed"]), str(t["task"]), float(t["best_lr"]), float(t["best_loss"]),
                          float(t.get("task_lr", math.nan))) for t in data["tasks"]]
        family, env = dict(data["family"]), dict(data["env"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"`{key}`: '{path}' is not a task pool ({type(err).__name__}: {err}); rebuild it with "
                         f"`ganno-build-task-pool`.") from None
    bad = [t for t in tasks if not (math.isfinite(t.best_lr) and t.best_lr > 0)]
    if bad:
        raise ValueError(f"`{key}` '{path}': task {bad[0].task} (seed {bad[0].seed}) has best LR "
                         f"{bad[0].best_lr!r}; rebuild the pool.")
    return TaskPool(tasks, family, env, path)
