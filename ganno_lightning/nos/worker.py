"""Scoring one candidate rule: a short Lightning run of the user's module under RuleSearchCallback.

This function runs inside a worker process (spawned, so it must be importable and take only plain
data). It never raises for a bad rule: divergence, NaN updates and errors inside ``fit`` come back
as a result with a ``status``, so one candidate can never stop the search.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import traceback
from typing import Any

from ganno_lightning.imports import check_keywords, import_callable

__all__ = ["build_task", "check_task", "evaluate_candidate"]

#: The rule of the one-batch check (plain SGD): the task is on trial there, not a rule.
CHECK_RULE = "g"


def build_task(task: dict[str, Any]) -> tuple[Any, Any]:
    """``(module, datamodule or None)`` built from the ``task`` section (import strings and kwargs)."""
    module = import_callable(task["module"], argument="task.module")(**dict(task.get("module_kwargs") or {}))
    datamodule = None
    if task.get("datamodule"):
        datamodule = import_callable(task["datamodule"], argument="task.datamodule")(**dict(task.get("datamodule_kwargs") or {}))
    return module, datamodule


def check_task(task: dict[str, Any], train: dict[str, Any], seed: int = 0) -> None:
    """Check, in this process, what would otherwise fail every candidate: the task's arguments, then a
    one-batch fit under :class:`~ganno_lightning.nos.callback.RuleSearchCallback` (rule ``g``) in which
    ``train.monitor`` must be logged (:func:`~ganno_lightning.trials.preflight.preflight_fit`).

    Args:
        task: the ``task`` section, as a plain dict.
        train: the ``train`` section, as a plain dict.
        seed: seeds torch before the task is built.

    Raises:
        ValueError: naming the config key at fault: a keyword the factory does not take, a task that
            cannot be built or fit (its error quoted), or ``train.monitor`` never logged (naming what is).
    """
    module_kwargs = dict(task.get("module_kwargs") or {})
    check_keywords(import_callable(task["module"], argument="task.module"), module_kwargs, "task.module_kwargs",
                   f"`task.module` {task['module']!r}")
    if task.get("datamodule"):
        check_keywords(import_callable(task["datamodule"], argument="task.datamodule"),
                       dict(task.get("datamodule_kwargs") or {}), "task.datamodule_kwargs",
                       f"`task.datamodule` {task['datamodule']!r}")
    import torch

    from ganno_lightning.nos.callback import RuleSearchCallback
    from ganno_lightning.trials.preflight import preflight_fit

    def build() -> tuple[Any, Any]:
        torch.manual_seed(int(seed))
        return build_task(task)

    cb = RuleSearchCallback(CHECK_RULE, lr=train["lr"], monitor=train["monitor"], mode=train["mode"],
                            divergence_factor=train["divergence_factor"])
    cb.strict = False  # a missing monitor is reported by preflight_fit, naming its config key
    preflight_fit(
        build,
        train["monitor"],
        task=f"`task.module` {task['module']!r}",
        skip="check_task",
        monitor_key="train.monitor",
        trainer_kwargs={"accelerator": train.get("accelerator", "cpu")},
        callbacks=[cb],
        threads=max(1, int(train.get("torch_threads", 1))),
        runs="candidate",
    )


def evaluate_candidate(job: dict[str, Any]) -> dict[str, Any]:
    """Train ``job["task"]`` with ``job["rule"]`` for ``job["train"]["max_steps"]`` steps.

    Returns the callback's result (rule, reward, diverged, reason, curve) plus ``status`` (``"ok"``,
    ``"diverged"`` or ``"failed"``), ``steps``, ``seconds`` and the job's ``round``/``index``.
    """
    import random

    import torch

    from ganno_lightning.nos.optimizer import NonFiniteUpdateError

    start = time.perf_counter()
    task, train = job["task"], job["train"]
    torch.set_num_threads(max(1, int(train.get("torch_threads", 1))))
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    result: dict[str, Any] = {
        "round": job.get("round"),
        "index": job.get("index"),
        "rule": job["rule"],
        "lr": train["lr"],
        "reward": None,
        "diverged": False,
        "reason": "",
        "curve": [],
        "steps": 0,
        "status": "failed",
    }
    cb = None
    trainer = None
    try:
        seed = int(job.get("seed", 0))
        random.seed(seed)
        torch.manual_seed(seed)
        module, datamodule = build_task(task)
        # Lightning is imported after the task is built: its import dominates a fresh worker's
        # start-up, and the task usually imports it anyway
        from ganno_lightning.nos.callback import RuleSearchCallback
        from ganno_lightning.trials.trainer import short_run_trainer

        cb = RuleSearchCallback(
            job["rule"],
            lr=train["lr"],
            monitor=train["monitor"],
            mode=train["mode"],
            divergence_factor=train["divergence_factor"],
        )
        with tempfile.TemporaryDirectory(prefix="nos_candidate_") as root:
            trainer = short_run_trainer(
                int(train["max_steps"]), int(train["val_check_interval"]), root, [cb],
                accelerator=train.get("accelerator", "cpu"), limit_val_batches=train.get("limit_val_batches", 1.0),
            )
            trainer.fit(module, datamodule=datamodule)
        result.update(cb.result())
        result["status"] = "diverged" if cb.diverged else "ok"
        if result["status"] == "ok" and (result["reward"] is None or not math.isfinite(result["reward"])):
            result.update(status="failed", reason="no finite validation value was recorded")
    except (NonFiniteUpdateError, FloatingPointError) as err:
        if cb is not None:
            result.update(cb.result())
        result.update(status="diverged", diverged=True, reward=None, reason=str(err).splitlines()[0])
    except Exception as err:  # a broken candidate must not stop the search; the reason is kept
        if cb is not None:
            result["curve"] = cb.result()["curve"]
        tail = traceback.format_exc(limit=3).strip().splitlines()[-1]
        result.update(status="failed", reward=None, reason=f"{type(err).__name__}: {err}"[:500] or tail)
    result["steps"] = int(trainer.global_step) if trainer is not None else 0
    result["seconds"] = time.perf_counter() - start
    return result
