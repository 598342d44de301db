"""Evaluate a GANNO agent against handcrafted LR schedules on a suite of zoo tasks.

Run it with an omegaconf YAML and ``key=value`` overrides::

    ganno-evaluate configs/evaluate.yaml agent.path=runs/train/agent.pt workers=2
    ganno-evaluate configs/evaluate_smoke.yaml agent.path=agent.pt out_dir=runs/eval_smoke

For every task of the suite and every seed, each *condition* trains the same freshly initialised
module (same weights, same data order) several times with a real ``lightning.Trainer``:

- ``agent``: ``GANNOCallback(agent)`` from the condition's initial LR (no scheduler underneath; the agent's own
  LR prior where its file records one);
- every baseline schedule of :mod:`ganno_lightning.agents.baselines` (``constant``, ``step_decay``, ``cosine``,
  ``warmup_cosine``) at the condition's initial LR (``<schedule>@init``), and
- the same schedules tuned over ``lr_grid`` (``<schedule>@tuned``): per task and seed, the grid LR
  with the lowest final validation loss.

Conditions: ``init_lr_x<f>`` for each ``init_lr_factors`` entry ``f`` (the task's sampled LR times
``f``: 1 is the user's LR, 10 and 0.1 are 10x too high and too low), and with ``deeper: true``,
``deeper_x2``: the same tasks with exactly twice the deepest depth of the family's meta-training
(``train``) range, at the task's LR. The LR grid is always relative to the task's sampled LR, so the
tuned baselines are the same runs in every ``init_lr_x`` condition (each distinct run is trained
once and shared).

Files in ``out_dir``: ``runs.jsonl`` (each finished run, appended as it ends; a rerun with
``resume=true`` skips runs already there with the same settings; ``baselines_from`` reuses
another evaluation's baseline runs the same way), ``results.json`` (config, every
run with its validation curve, the per-seed comparisons, the summary and the headline targets; a
diverged run's ``final_val_loss`` is written as ``Infinity``, which ``json.load`` reads back as
``inf``), ``report.md``, ``loss_curves_<condition>.png`` and ``schedule_<condition>_<task>.png``
(the agent's per-layer LRs), and a W&B run (offline unless ``wandb.mode=online``) when
``wandb.enabled``.
"""

from ganno_lightning.agents.evaluation.analysis import steps_to_target
from ganno_lightning.agents.evaluation.config import (
    AgentConfig,
    EvaluateConfig,
    SuiteEntry,
    TargetConfig,
    deeper_family,
    load_config,
)
from ganno_lightning.agents.evaluation.main import evaluate, main
from ganno_lightning.agents.evaluation.plan import (
    Condition,
    conditions_of,
    plan_runs,
    run_id,
    task_specs,
)
from ganno_lightning.agents.evaluation.report import SUMMARY_COLUMNS
from ganno_lightning.agents.evaluation.run import build_task, run_one

__all__ = [
    "AgentConfig",
    "Condition",
    "EvaluateConfig",
    "SUMMARY_COLUMNS",
    "SuiteEntry",
    "TargetConfig",
    "build_task",
    "conditions_of",
    "deeper_family",
    "evaluate",
    "load_config",
    "main",
    "plan_runs",
    "run_id",
    "run_one",
    "steps_to_target",
    "task_specs",
]
