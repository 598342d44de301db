"""BOIL against Optuna's random search, ASHA with random or TPE sampling, and BOIL's own ablations.

Issue #19's benchmark. Every tuner tunes ``lr``, ``weight_decay``, ``dropout`` and ``batch_size`` of
an MLP on each task of :data:`ganno_lightning.examples.tuning_tasks.TUNING_TASKS` (bundled data:
digits, digits with 300 training images, diabetes regression) for trials of at most ``T_max``
epochs, seeing only the validation loss.

**Equal compute.** A study's budget is ``budget_factor x T_max`` training epochs (default 15 x 30),
counted the same way for every tuner: each completed epoch of any trial is one epoch, whether the
trial runs to its end, is pruned or diverges. The driver loop below is the only place that counts:
it stops the running trial and the study when the spent epochs reach the budget (BOIL also cuts
each trial's length to what is left, as ``BOILTuner`` does).

**One training function.** :func:`train_config` trains a configuration with a real Lightning
``Trainer`` (one per trial, one epoch = one pass over the training split, validation after each) and
returns the per-epoch validation losses and the seconds; an ``on_epoch`` hook lets a tuner stop it
(Optuna's ``trial.report`` / ``trial.should_prune``). Every tuner trains through it, with the same
weights seed (the study's), the same data order and the same divergence rule (a non-finite
validation loss ends the trial).

**The tuners.** ``boil``: ``BOILTuner``'s ask/tell API (``tuner.ask()``, then ``tuner.tell(trial,
curve=..., seconds=...)``) on the real core with its defaults; ``boil_no_virtual``,
``boil_fixed_compression`` (m0 = 0.5, g0 = 12 kept), ``boil_fixed_t`` (every trial trains
``T_max``): the same with one part switched off. ``random``: Optuna's ``RandomSampler``, no
pruner, every trial ``T_max`` epochs. ``asha_random`` / ``asha_tpe``: Optuna's asynchronous
successive halving (``SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)``: rungs at
1, 3, 9, 27 epochs) with ``RandomSampler`` or ``TPESampler``. Optuna's samplers see the space of
:mod:`ganno_lightning.tuning.space` as ``suggest_float`` (log where the space says so) and
``suggest_categorical`` (batch size); BOIL sees the same space through its unit cube.

**Recommendations and scores.** When the spent epochs reach 25, 50, 75 and 100% of the budget, each
tuner's recommendation is recorded from everything it has seen so far (the running trial's epochs
included):

- BOIL (all variants): its recommendation (``BOILTuner.result().best_values``), the tried
  configuration whose score the GP predicts best at ``T_max`` (``BOILCore.recommend``; before the
  first fit, the lowest validation loss at any epoch). Reported beside it, not in the targets:
  ``best seen``, the configuration with the lowest validation loss at the end of any epoch of any
  trial (BOIL's rule until 2026-12-01; chosen against on the dev seeds 10-19).
- Optuna tuners: the trial with the lowest validation loss at the deepest epoch any trial has
  reached (once a trial has completed ``T_max`` epochs this is Optuna's ``study.best_trial``).

Each recommendation is retrained for ``T_max`` epochs with one fixed seed (``RETRAIN_SEED``, the
same for every tuner and study, so equal configurations score equally) and scored by its loss on the
held-out test split at the end of training. Seeds are paired: seed ``s`` gives every tuner the same
initial weights and data order, and seeds its sampler and BOIL's core.

**Overhead.** ``tuner_s``: seconds inside the tuner's own calls (BOIL: ``ask`` = GP fit + acquisition +
its SQLite store, ``tell``; Optuna: ``ask`` with sampling, ``report`` / ``should_prune``, ``tell``),
against ``wall_s``, the study's wall-clock time (training included, retraining excluded);
``model_s`` is BOIL's fit and acquisition alone.

    PYTHONPATH=. python benchmarks/boil_vs_asha.py --workers 16         # the full benchmark (3 tasks x 7 tuners x 10 seeds)
    PYTHONPATH=. python benchmarks/boil_vs_asha.py --smoke              # 1 task, 2 seeds, T_max 4: a minute or two
    PYTHONPATH=. python benchmarks/boil_vs_asha.py --tasks digits --seeds 0 --out /tmp/one.md   # one study per tuner

**Cost** (2026-11-30, after the BOIL speed-ups): a BOIL study (about 16 trials) took a median 9-16 s
of wall-clock per task on one core, an ASHA-TPE study (about 90 trials) 9-132 s; the four BOIL
variants' 120 studies took 30 minutes with ``--workers 0`` (one process), the full run (210 studies)
is about an hour of CPU: ``--workers`` as many as there are cores.

Writes ``benchmarks/results/boil_vs_asha.{md,json,png}`` (``--smoke``: ``boil_vs_asha_smoke.*``); each
finished study is appended to ``--log`` (JSON lines) at once, and a rerun with the same log skips it.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from report import write_report

from ganno_lightning.boil.observations import Observation, suggest_seconds
from ganno_lightning.examples.tuning_tasks import TUNING_TASKS, TuningTask
from ganno_lightning.files import atomic_write_bytes
from ganno_lightning.trials.pool import JobFailure, JobPool, read_log
from ganno_lightning.tuning.space import Hyperparameter, parse_space, values_to_unit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CHECKPOINTS = (0.25, 0.5, 0.75, 1.0)
#: The seed of every final retraining (weights, dropout, data order): equal configurations score equally.
RETRAIN_SEED = 12345
BOIL_VARIANTS = {
    "boil": {},
    "boil_no_virtual": {"virtual_observations": False},
    "boil_fixed_compression": {"learn_compression": False},
    "boil_fixed_t": {"fixed_t": True},
}
OPTUNA_TUNERS = ("random", "asha_random", "asha_tpe")
TUNERS = (*BOIL_VARIANTS, *OPTUNA_TUNERS)
#: The comparison the issue's targets are about.
TARGET, BASELINE = "boil", "asha_tpe"

# Lightning's notes on every one of thousands of short fits (retraining has no validation loader on purpose).
warnings.filterwarnings("ignore", message=r".*`validation_step` but have no `val_dataloader`.*")
warnings.filterwarnings("ignore", message=r".*LeafSpec.*")


# -- the one training function -------------------------------------------------------------------

@dataclass
class Training:
    """A configuration's training: ``(epoch, val_loss)`` per epoch, seconds, how it ended, its test loss."""

    curve: list[tuple[int, float]]
    seconds: float
    status: str  # "done", "stopped" (by the tuner or the budget) or "diverged" (non-finite val_loss)
    test_loss: Optional[float] = None


def _loaders(task: TuningTask, batch_size: int, seed: int, part: str) -> tuple[Any, Any]:
    from torch.utils.data import DataLoader, TensorDataset

    split = task.split()
    train = DataLoader(TensorDataset(split.x_train, split.y_train), batch_size=int(batch_size), shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    x, y = (split.x_val, split.y_val) if part == "val" else (split.x_test, split.y_test)
    return train, DataLoader(TensorDataset(x, y), batch_size=4096)


def train_config(task: TuningTask, values: Mapping[str, Any], epochs: int, seed: int,
                 on_epoch: Optional[Callable[[int, float], bool]] = None, test: bool = False) -> Training:
    """Train ``values`` for up to ``epochs`` epochs with a real Lightning Trainer; validate after each epoch.

    Args:
        task: the task (data, model, space).
        values: the hyperparameters, ``batch_size`` among them.
        epochs: the trial's length.
        seed: seeds the weights, dropout and the training data's order.
        on_epoch: called with ``(epoch, val_loss)`` after each epoch's validation; returning True
            stops the training there (a pruned trial, or the budget spent). Not called for a
            non-finite loss, which always ends the training (``diverged``).
        test: retrain mode: no validation during training; score the end of training on the test split.
    """
    import lightning.pytorch as pl

    from ganno_lightning.trials.trainer import quiet_run

    class EpochEnd(pl.Callback):
        def __init__(self) -> None:
            self.curve: list[tuple[int, float]] = []
            self.status = "done"

        def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            if trainer.sanity_checking or trainer.state.fn != "fit":  # not the retraining's test evaluation
                return
            epoch, value = trainer.current_epoch + 1, float(trainer.callback_metrics["val_loss"])
            self.curve.append((epoch, value))
            if not math.isfinite(value):
                self.status, trainer.should_stop = "diverged", True
            elif on_epoch is not None and on_epoch(epoch, value) and epoch < epochs:
                self.status, trainer.should_stop = "stopped", True

    with quiet_run(threads=1):
        pl.seed_everything(seed, workers=False, verbose=False)
        module = task.build_module(**values)
        train, held_out = _loaders(task, values["batch_size"], seed, "test" if test else "val")
        recorder = EpochEnd()
        trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", devices=1,
                             callbacks=[recorder])
        start = time.perf_counter()
        trainer.fit(module, train, None if test else held_out)
        seconds = time.perf_counter() - start
        test_loss = None
        if test:
            test_loss = float(trainer.validate(module, held_out, verbose=False)[0]["val_loss"])
    return Training(recorder.curve, seconds, recorder.status, test_loss)


# -- the tuners, behind one small interface --------------------------------------------------------

@dataclass
class Proposal:
    """A trial to train: its values, its length, and the tuner's own handle on it."""

    values: dict[str, Any]
    max_epochs: int
    handle: Any = None


@dataclass
class TrialLog:
    values: dict[str, Any]
    max_epochs: int
    curve: list[tuple[int, float]] = field(default_factory=list)


def best_seen(trials: Sequence[TrialLog]) -> Optional[TrialLog]:
    """The trial with the lowest finite loss at the end of any epoch (BOIL's recommendation)."""
    points = [(v, i) for i, t in enumerate(trials) for _, v in t.curve if math.isfinite(v)]
    return trials[min(points)[1]] if points else None


def best_deepest(trials: Sequence[TrialLog]) -> Optional[TrialLog]:
    """The trial with the lowest finite loss at the deepest epoch any trial reached (Optuna's tuners)."""
    finite = [t for t in trials if t.curve and math.isfinite(t.curve[-1][1])]
    if not finite:
        return None
    depth = max(t.curve[-1][0] for t in finite)
    return min((t for t in finite if t.curve[-1][0] == depth), key=lambda t: t.curve[-1][1])


class BOILArm:
    """BOIL through ``BOILTuner``'s ask/tell API; the tuner cuts each trial's length to the budget's room."""

    rule = "best validation loss seen at any epoch (BOILTuner.result)"

    def __init__(self, task: TuningTask, seed: int, t_max: int, budget: int, study_dir: str, **core: Any) -> None:
        from ganno_lightning.boil import BOILTuner

        self.space = parse_space(task.space)
        self.tuner = BOILTuner(space=task.space, monitor="val_loss", mode="min", epochs=(1, t_max),
                               budget_epochs=budget, study_dir=study_dir, seed=seed, **core)
        self.t_max = t_max
        self.model_s = 0.0

    def ask(self) -> Optional[Proposal]:
        trial = self.tuner.ask()
        if trial is None:
            return None
        self.model_s += suggest_seconds(trial.info)
        return Proposal(dict(trial.values), trial.max_epochs, trial)

    def report(self, proposal: Proposal, epoch: int, value: float) -> bool:
        return False  # BOIL chose the length; nothing stops a trial early

    def tell(self, proposal: Proposal, training: Training) -> None:
        self.tuner.tell(proposal.handle, curve=training.curve, seconds=training.seconds)

    def recommend(self, trials: Sequence[TrialLog]) -> Optional[TrialLog]:
        """``BOILTuner.result``'s rule on the trials so far (the running one's epochs included)."""
        pick = self.tuner.core.recommend([Observation(x=values_to_unit(self.space, t.values), max_epochs=t.max_epochs,
                                                      curve=t.curve) for t in trials])
        return best_seen(trials) if pick is None else trials[pick]

    def alternative(self, trials: Sequence[TrialLog]) -> Optional[TrialLog]:
        return best_seen(trials)

    def close(self) -> None:
        self.tuner.close()


def optuna_values(trial: Any, space: Mapping[str, Hyperparameter]) -> dict[str, Any]:
    """Sample ``space`` (:mod:`ganno_lightning.tuning.space`) with Optuna's ``suggest_*`` calls."""
    values = {}
    for name, dim in space.items():
        if dim.choices is not None:
            values[name] = trial.suggest_categorical(name, list(dim.choices))
        elif dim.integer:
            values[name] = trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log)
        else:
            values[name] = trial.suggest_float(name, float(dim.low), float(dim.high), log=dim.log)
    return values


class OptunaArm:
    """An Optuna study driven by ``ask`` / ``tell``, every trial ``T_max`` epochs unless its pruner stops it."""

    rule = "lowest validation loss at the deepest epoch reached (Optuna's best_trial once one completes)"

    def __init__(self, name: str, task: TuningTask, seed: int, t_max: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        sampler = (optuna.samplers.TPESampler(seed=seed) if name == "asha_tpe"
                   else optuna.samplers.RandomSampler(seed=seed))
        pruner = (optuna.pruners.NopPruner() if name == "random"
                  else optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3, min_early_stopping_rate=0))
        self.study = optuna.create_study(direction="minimize", sampler=sampler, pruner=pruner)
        self.space = parse_space(task.space)
        self.t_max = t_max
        self.model_s = 0.0

    def ask(self) -> Optional[Proposal]:
        trial = self.study.ask()
        return Proposal(optuna_values(trial, self.space), self.t_max, trial)

    def report(self, proposal: Proposal, epoch: int, value: float) -> bool:
        proposal.handle.report(value, epoch)
        return proposal.handle.should_prune()

    def tell(self, proposal: Proposal, training: Training) -> None:
        states = self.optuna.trial.TrialState
        if training.status == "diverged":
            self.study.tell(proposal.handle, state=states.FAIL)
        elif training.status == "stopped" or len(training.curve) < self.t_max:  # pruned, or cut by the budget
            self.study.tell(proposal.handle, state=states.PRUNED)
        else:
            self.study.tell(proposal.handle, training.curve[-1][1])

    def recommend(self, trials: Sequence[TrialLog]) -> Optional[TrialLog]:
        return best_deepest(trials)

    def alternative(self, trials: Sequence[TrialLog]) -> Optional[TrialLog]:
        return None

    def close(self) -> None:
        pass


def make_arm(tuner: str, task: TuningTask, seed: int, t_max: int, budget: int, study_dir: str,
             boil_options: Mapping[str, Any]) -> Any:
    if tuner in BOIL_VARIANTS:
        return BOILArm(task, seed, t_max, budget, study_dir, **{**boil_options, **BOIL_VARIANTS[tuner]})
    if tuner in OPTUNA_TUNERS:
        return OptunaArm(tuner, task, seed, t_max)
    raise ValueError(f"`tuner` must be one of {', '.join(TUNERS)}, got {tuner!r}.")


# -- one study -------------------------------------------------------------------------------------

def warm_up(task: TuningTask) -> None:
    """Imports and data loading, once per process, before a study's clock starts (not a tuner's cost)."""
    import lightning.pytorch  # noqa: F401
    import optuna  # noqa: F401

    from ganno_lightning.boil import core  # noqa: F401  (BoTorch, GPyTorch)

    task.split()


def run_study(task_name: str, tuner: str, seed: int, t_max: int, budget: int,
              boil_options: Optional[Mapping[str, Any]] = None, score: bool = True) -> dict[str, Any]:
    """One tuner on one task and seed until ``budget`` epochs are spent; its recommendations, scored.

    Returns a JSON-able record: the study's counts and seconds, the best validation loss after each
    spent epoch (``best_val``), and per checkpoint (25/50/75/100% of the budget) the recommendation,
    its validation loss and (``score``) its test loss after a ``T_max`` retraining.
    """
    task = TUNING_TASKS[task_name]
    marks = {f: max(1, math.ceil(f * budget)) for f in CHECKPOINTS}
    trials: list[TrialLog] = []
    best_val: list[float] = []
    checkpoints: dict[str, dict[str, Any]] = {}
    spent, train_s = 0, 0.0
    calls = {"ask": 0.0, "report": 0.0, "tell": 0.0}  # seconds in the tuner's own calls
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the GP too: many studies share a machine's cores

    def note(pick: Optional[TrialLog]) -> Optional[dict[str, Any]]:
        if pick is None:
            return None
        finite = [v for _, v in pick.curve if math.isfinite(v)]
        return {"values": pick.values, "max_epochs": pick.max_epochs, "epochs_seen": len(pick.curve),
                "val_loss": min(finite) if finite else None}

    warm_up(task)
    with tempfile.TemporaryDirectory(prefix="boil_vs_asha_") as study_dir:
        start = time.perf_counter()
        arm = make_arm(tuner, task, seed, t_max, budget, study_dir, boil_options or {})
        calls["ask"] += time.perf_counter() - start
        while spent < budget:
            began = time.perf_counter()
            proposal = arm.ask()
            calls["ask"] += time.perf_counter() - began
            if proposal is None:
                break
            log = TrialLog(proposal.values, proposal.max_epochs)
            trials.append(log)

            def count_epoch(epoch: int, value: float) -> None:
                """The budget's one counter: every trained epoch of every tuner passes here once."""
                nonlocal spent
                spent += 1
                log.curve.append((epoch, value))
                previous = best_val[-1] if best_val else math.inf
                best_val.append(min(value, previous) if math.isfinite(value) else previous)
                for fraction, mark in marks.items():
                    if spent == mark:
                        checkpoints[str(fraction)] = {"rule": note(arm.recommend(trials)),
                                                      "best_seen": note(arm.alternative(trials))}

            def on_epoch(epoch: int, value: float) -> bool:
                count_epoch(epoch, value)
                began = time.perf_counter()
                stop = arm.report(proposal, epoch, value)
                calls["report"] += time.perf_counter() - began
                return stop or spent >= budget

            training = train_config(task, proposal.values, proposal.max_epochs, seed, on_epoch)
            train_s += training.seconds
            if training.status == "diverged":  # its last (non-finite) epoch skipped on_epoch: count it here
                count_epoch(*training.curve[-1])
            began = time.perf_counter()
            arm.tell(proposal, training)
            calls["tell"] += time.perf_counter() - began
        wall_s = time.perf_counter() - start
        if isinstance(arm, BOILArm):  # the benchmark's rule is BOILTuner's own recommendation
            result = arm.tuner.result()
            assert result.spent_epochs == spent, (result.spent_epochs, spent)
            mine = arm.recommend(trials)
            assert mine is None or result.best_values == mine.values, (result.best_values, mine)
        model_s = arm.model_s
        arm.close()
    torch.set_num_threads(threads)

    tuner_s = sum(calls.values())
    scored: dict[str, float] = {}
    if score:
        for checkpoint in checkpoints.values():
            for pick in checkpoint.values():
                if pick is None:
                    continue
                key = json.dumps(pick["values"], sort_keys=True)
                if key not in scored:
                    loss = train_config(task, pick["values"], t_max, RETRAIN_SEED, test=True).test_loss
                    scored[key] = loss if math.isfinite(loss) else math.inf  # a diverged retraining: the worst
                pick["test_loss"] = scored[key]
    return {
        "task": task_name, "tuner": tuner, "seed": seed, "t_max": t_max, "budget": budget, "spent_epochs": spent,
        "trials": len(trials), "trial_lengths": [len(t.curve) for t in trials], "wall_s": wall_s, "tuner_s": tuner_s,
        "tuner_calls_s": calls,
        "train_s": train_s, "model_s": model_s, "overhead_share": tuner_s / wall_s if wall_s > 0 else None,
        "best_val": [v if math.isfinite(v) else None for v in best_val], "checkpoints": checkpoints, "retrains": len(scored),
    }


def job_failure(job: dict[str, Any], why: JobFailure) -> dict[str, Any]:
    """A JobPool job's result when it has none of its own (a crashed or killed worker): why, under its id and key."""
    return {"id": job["id"], "key": job["key"], "status": why.status, "reason": why.reason}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """A JobPool job: one study (module level, so spawned workers can unpickle it)."""
    record = run_study(job["task"], job["tuner"], job["seed"], job["t_max"], job["budget"], job["boil_options"])
    return {"id": job["id"], "key": job["key"], "status": "ok", **record}


# -- the report ------------------------------------------------------------------------------------

def _median(values: Sequence[Optional[float]]) -> Optional[float]:
    """The median of the values present (an infinite test loss, from a diverged retraining, counts as the worst)."""
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(present) if present else None


def strict_json(value: Any) -> Any:
    """``value`` for strict JSON: non-finite floats as strings ("inf", "nan")."""
    if isinstance(value, Mapping):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _fmt(value: Optional[float], digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def checkpoint_test_loss(record: Mapping[str, Any], fraction: float, which: str = "rule") -> Optional[float]:
    pick = record["checkpoints"].get(str(fraction), {}).get(which)
    return None if pick is None else pick.get("test_loss")


def summarise(records: Sequence[Mapping[str, Any]], tasks: Sequence[str], tuners: Sequence[str]) -> dict[str, Any]:
    """Medians per task, tuner and checkpoint; BOIL's paired wins over ASHA-TPE; the targets, met or not."""
    by = {(r["task"], r["tuner"], r["seed"]): r for r in records if r.get("status") == "ok"}
    seeds = sorted({s for _, _, s in by})
    summary: dict[str, Any] = {"tasks": {}}
    for task in tasks:
        rows = {}
        for tuner in tuners:
            runs = [by[(task, tuner, s)] for s in seeds if (task, tuner, s) in by]
            if not runs:
                continue
            rows[tuner] = {
                "seeds": len(runs),
                "median_test": {str(f): _median([checkpoint_test_loss(r, f) for r in runs]) for f in CHECKPOINTS},
                "median_test_best_seen": {str(f): _median([checkpoint_test_loss(r, f, "best_seen") for r in runs]) for f in CHECKPOINTS},
                "median_overhead_share": _median([r["overhead_share"] for r in runs]),
                "max_overhead_share": max(r["overhead_share"] for r in runs),
                "median_model_share": _median([r["model_s"] / r["wall_s"] for r in runs]),
                "max_model_share": max(r["model_s"] / r["wall_s"] for r in runs),
                "median_trials": _median([r["trials"] for r in runs]),
                "median_wall_s": _median([r["wall_s"] for r in runs]),
            }
        paired = [s for s in seeds if (task, TARGET, s) in by and (task, BASELINE, s) in by]
        wins = {}
        for f in CHECKPOINTS:
            pairs = [(checkpoint_test_loss(by[(task, TARGET, s)], f), checkpoint_test_loss(by[(task, BASELINE, s)], f)) for s in paired]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            wins[str(f)] = {"wins": sum(a < b for a, b in pairs), "ties": sum(a == b for a, b in pairs), "pairs": len(pairs)}
        target = rows.get(TARGET, {})
        baseline = rows.get(BASELINE, {})
        at_100 = (target.get("median_test", {}).get("1.0"), baseline.get("median_test", {}).get("1.0"))
        summary["tasks"][task] = {
            "rows": rows, "wins_vs_baseline": wins,
            "targets": {
                "wins_at_50_of_10": wins["0.5"]["wins"] >= 7 and wins["0.5"]["pairs"] >= 10,
                "median_lower_at_100": None if None in at_100 else at_100[0] < at_100[1],
                # The measure, "tuner overhead (fitting and acquisition)"; the store is reported beside it.
                "model_share_below_10pct": None if not target else target["max_model_share"] < 0.10,
                "model_share_median_below_10pct": None if not target else target["median_model_share"] < 0.10,
            },
        }
    return summary


def write_outputs(records: Sequence[Mapping[str, Any]], args: argparse.Namespace, out: Path) -> None:
    summary = summarise(records, args.tasks, args.tuners)
    settings = {"tasks": args.tasks, "tuners": args.tuners, "seeds": args.seeds, "t_max": args.t_max,
                "budget_epochs": args.budget, "retrain_seed": RETRAIN_SEED, "boil_options": args.boil_options,
                "checkpoints": CHECKPOINTS, "command": " ".join(["python", *sys.argv])}
    done = sorted(records, key=lambda r: (r["task"], TUNERS.index(r["tuner"]) if r["tuner"] in TUNERS else 99, r["seed"]))
    atomic_write_bytes(out.with_suffix(".json"), json.dumps(
        strict_json({"settings": settings, "summary": summary, "studies": done}), indent=1, allow_nan=False).encode())
    plot(records, args, out.with_suffix(".png"))
    write_report(markdown(summary, done, args), out.with_suffix(".md"))


def markdown(summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]], args: argparse.Namespace) -> list[str]:
    import botorch
    import optuna

    pct = [f"{int(f * 100)}%" for f in CHECKPOINTS]
    lines = [
        "# BOIL vs ASHA (Optuna) and random search, at equal training epochs" + (" (smoke run)" if args.smoke else ""),
        "",
        f"Command: `PYTHONPATH=. {' '.join(['python', 'benchmarks/boil_vs_asha.py', *sys.argv[1:]])}`",
        "",
        f"T_max = {args.t_max} epochs, budget = {args.budget} epochs per study ({args.budget / args.t_max:g} x T_max),"
        f" seeds {', '.join(map(str, args.seeds))} (paired), checkpoints at {', '.join(pct)} of the budget."
        f" Each recommendation is retrained for T_max epochs (seed {RETRAIN_SEED}) and scored on the test split"
        " (lower is better). BOIL core options: "
        + (", ".join(f"{k}={v}" for k, v in args.boil_options.items()) or "the core's defaults") + ".",
        f"Environment: {platform.processor() or platform.machine()}, Python {platform.python_version()}, torch"
        f" {torch.__version__}, botorch {botorch.__version__}, optuna {optuna.__version__}; one torch thread per study.",
        "",
        "Recommendation rules: BOIL variants, the tried configuration whose score the GP predicts best at T_max"
        " (BOILTuner.result; before the first fit, the lowest validation loss at any epoch); Optuna tuners, the"
        " lowest validation loss at the deepest epoch reached (Optuna's best_trial once a trial completes T_max)."
        " `best seen` (BOIL only, not in the targets): the configuration with the lowest validation loss at any"
        " epoch, BOIL's rule until 2026-12-01.",
        "Overhead: seconds in the tuner's calls (BOIL: GP fit, acquisition and its SQLite store; Optuna: sampling"
        " and pruning) / the study's wall-clock (training included, the final retraining excluded). `fit+acq share`:"
        " BOIL's GP fits and acquisition alone, the issue's measure of its overhead (the targets use it).",
        "",
    ]
    for task, entry in summary["tasks"].items():
        lines += [f"## {task}: {TUNING_TASKS[task].description}", "",
                  "| tuner | seeds | " + " | ".join(f"median test loss @{p}" for p in pct)
                  + " | best seen @100% | trials (median) | overhead (median / max) | fit+acq share (median / max) | study wall s |",
                  "|---|---:|" + "---:|" * len(pct) + "---:|---:|---:|---:|---:|"]
        for tuner, row in entry["rows"].items():
            tests = " | ".join(_fmt(row["median_test"][str(f)]) for f in CHECKPOINTS)
            seen = _fmt(row["median_test_best_seen"]["1.0"]) if tuner in BOIL_VARIANTS else ""
            model_share = (f"{row['median_model_share']:.1%} / {row['max_model_share']:.1%}" if tuner in BOIL_VARIANTS
                           else "")
            lines.append(f"| {tuner} | {row['seeds']} | {tests} | {seen} | {row['median_trials']:g} |"
                         f" {row['median_overhead_share']:.1%} / {row['max_overhead_share']:.1%} | {model_share} |"
                         f" {row['median_wall_s']:.0f} |")
        wins = entry["wins_vs_baseline"]
        lines += ["", f"{TARGET} lower than {BASELINE} (paired seeds): "
                  + ", ".join(f"{w['wins']}/{w['pairs']} at {int(float(f) * 100)}%" + (f" ({w['ties']} ties)" if w["ties"] else "")
                              for f, w in wins.items()) + ".", ""]
        targets = entry["targets"]
        mine = entry["rows"].get(TARGET)
        median_met = _met(targets["model_share_median_below_10pct"])
        shares = (f" ({mine['max_model_share']:.1%} at most); at the median: **{median_met}**"
                  f" ({mine['median_model_share']:.1%}). With its SQLite store (every commit synced to disk):"
                  f" {mine['median_overhead_share']:.1%} / {mine['max_overhead_share']:.1%}" if mine else "")
        lines += [
            "Targets (issue #19):",
            "",
            f"- BOIL lower than ASHA-TPE in >= 7 of 10 seeds at 50%: **{_met(targets['wins_at_50_of_10'])}**"
            f" ({wins['0.5']['wins']}/{wins['0.5']['pairs']}).",
            f"- BOIL's median lower at 100%: **{_met(targets['median_lower_at_100'])}**.",
            f"- BOIL's fitting and acquisition under 10% of the study's wall time, every seed:"
            f" **{_met(targets['model_share_below_10pct'])}**{shares}.",
            "",
        ]
        boil = [r for r in records if r["task"] == task and r["tuner"] == TARGET]
        base = {r["seed"]: r for r in records if r["task"] == task and r["tuner"] == BASELINE}
        if boil and base:
            lines += ["| seed | " + " | ".join(f"{TARGET} / {BASELINE} @{p}" for p in pct) + " |",
                      "|---:|" + "---|" * len(pct)]
            for r in boil:
                if r["seed"] in base:
                    cells = " | ".join(f"{_fmt(checkpoint_test_loss(r, f))} / {_fmt(checkpoint_test_loss(base[r['seed']], f))}" for f in CHECKPOINTS)
                    lines.append(f"| {r['seed']} | {cells} |")
            lines.append("")
    lines += [f"Figure: {Path(args.out).with_suffix('.png').name} (top: median test loss of the recommendation"
              " against the budget spent, band = interquartile range over seeds; bottom: median best validation"
              " loss seen against epochs spent). Every study: "
              f"{Path(args.out).with_suffix('.json').name}."]
    return lines


def _met(flag: Optional[bool]) -> str:
    return "n/a" if flag is None else ("met" if flag else "not met")


def plot(records: Sequence[Mapping[str, Any]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = [t for t in args.tasks if any(r["task"] == t for r in records)]
    if not tasks:
        return
    fig, axes = plt.subplots(2, len(tasks), figsize=(5.2 * len(tasks), 7.5), squeeze=False)
    for col, task in enumerate(tasks):
        for tuner in args.tuners:
            runs = [r for r in records if r["task"] == task and r["tuner"] == tuner]
            if not runs:
                continue
            style = "-" if tuner in (TARGET, BASELINE, "random") else "--"
            xs, mids, lows, highs = [], [], [], []
            for f in CHECKPOINTS:
                values = [v for v in (checkpoint_test_loss(r, f) for r in runs) if v is not None and math.isfinite(v)]
                if values:
                    xs.append(f * 100)
                    q = np.quantile(values, [0.25, 0.5, 0.75])
                    lows.append(q[0]), mids.append(q[1]), highs.append(q[2])
            (line,) = axes[0][col].plot(xs, mids, style, marker="o", label=tuner)
            axes[0][col].fill_between(xs, lows, highs, color=line.get_color(), alpha=0.12)
            length = min(len(r["best_val"]) for r in runs)
            if length:
                traces = np.array([r["best_val"][:length] for r in runs], dtype=float)
                axes[1][col].plot(np.arange(1, length + 1), np.nanmedian(traces, axis=0), style, label=tuner,
                                  color=line.get_color())
        axes[0][col].set_title(f"{task}: test loss of the recommendation")
        axes[0][col].set_xlabel("budget spent (%)")
        axes[0][col].set_ylabel("test loss (median, IQR)")
        axes[1][col].set_xlabel("epochs spent")
        axes[1][col].set_ylabel("best validation loss seen (median)")
        axes[1][col].set_yscale("log")
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    buffer = path.with_suffix(".tmp.png")
    fig.savefig(buffer, dpi=100)
    plt.close(fig)
    buffer.replace(path)


# -- main ------------------------------------------------------------------------------------------

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=list(TUNING_TASKS), default=list(TUNING_TASKS))
    parser.add_argument("--tuners", nargs="+", choices=TUNERS, default=list(TUNERS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--t-max", type=int, default=30, help="T_max: the longest trial, in epochs")
    parser.add_argument("--budget-factor", type=float, default=15.0, help="the budget, in multiples of T_max")
    parser.add_argument("--boil", nargs="*", default=[], metavar="KEY=VALUE",
                        help="BOIL core options for every BOIL variant, e.g. initial_random=3 (JSON values)")
    parser.add_argument("--workers", type=int, default=0, help="studies at once, one process each; 0: in this process")
    parser.add_argument("--smoke", action="store_true", help="digits300 only, 2 seeds, T_max 4, budget 5 x T_max")
    parser.add_argument("--out", type=Path, default=None, help="the Markdown report (.json and .png beside it)")
    parser.add_argument("--log", type=Path, default=None, help="JSON lines of finished studies (resume)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.tasks, args.seeds, args.t_max, args.budget_factor = ["digits300"], args.seeds[:2], 4, 5.0
        args.boil = args.boil or ["initial_random=2", "raw_samples=64"]  # 2 random trials, then the GP
    args.budget = int(round(args.budget_factor * args.t_max))
    args.boil_options = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.boil)}
    name = "boil_vs_asha_smoke" if args.smoke else "boil_vs_asha"
    args.out = args.out or RESULTS / f"{name}.md"
    args.log = args.log or ROOT / "runs" / f"{name}.jsonl"
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    jobs = []
    for task in args.tasks:
        for seed in args.seeds:
            for tuner in args.tuners:
                settings = {"task": task, "tuner": tuner, "seed": seed, "t_max": args.t_max, "budget": args.budget,
                            "boil_options": args.boil_options}
                jobs.append({"id": f"{task}/{tuner}/{seed}", "key": json.dumps(settings, sort_keys=True), **settings})
    done = read_log(args.log)
    records: list[dict[str, Any]] = [r for r in done.values() if r.get("status") == "ok"
                                     and any(j["id"] == r["id"] and j["key"] == r["key"] for j in jobs)]

    def on_result(result: dict[str, Any], *_: Any) -> None:
        if result.get("status") != "ok":
            print(f"{result['id']}: {result['status']}: {result.get('reason', '')[:500]}", file=sys.stderr, flush=True)
            return
        records.append(result)
        tests = " ".join(_fmt(checkpoint_test_loss(result, f)) for f in CHECKPOINTS)
        print(f"{result['id']}: {result['trials']} trials, {result['spent_epochs']} epochs, {result['wall_s']:.0f} s"
              f" (tuner {result['overhead_share']:.1%}); test loss @25/50/75/100%: {tests}", file=sys.stderr, flush=True)

    started = time.time()
    with JobPool(run_job, processes=args.workers, retries=0) as pool:
        # longest first: BOIL's studies (GP fits) and the full-length random search outlast ASHA's
        pool.run(jobs, failure=job_failure, log=args.log, done=done, on_result=on_result,
                 order=lambda job: (job["tuner"] not in BOIL_VARIANTS, job["tuner"] != "random"))
    print(f"{len(records)} studies in {time.time() - started:.0f} s", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_outputs(records, args, args.out)


if __name__ == "__main__":
    main()
