"""The report from a study's store: best-so-far, chosen (x, t), compression, posterior mean; W&B offline."""

import csv

import pytest
from boil_tasks import FAST_CORE

from ganno_lightning.boil import BOILTuner
from ganno_lightning.boil.model import G0_GRID, M0_GRID
from ganno_lightning.boil.report import best_so_far, write_report
from ganno_lightning.config import WandbConfig

SPACE = {"optimizer": {"choices": ["sgd", "adam"]}, "lr": {"low": 1e-3, "high": 0.3, "log": True}}  # not sorted


def _study(tmp_path):
    tuner = BOILTuner(space=SPACE, epochs=(1, 4), study_dir=tmp_path / "study", initial_random=2, **FAST_CORE)
    for i in range(5):
        trial = tuner.ask()
        curve = [(e, 1.0 / (e + i) + (0.5 if trial.values["optimizer"] == "sgd" else 0.0))
                 for e in range(1, trial.max_epochs + 1)]
        tuner.tell(trial, curve=curve, seconds=float(trial.max_epochs))
    return tuner


def test_report_writes_every_plot_and_table(tmp_path):
    tuner = _study(tmp_path)
    written = write_report(tuner.store, core=tuner.core, wandb=WandbConfig(enabled=True, mode="offline"))
    assert set(written) == {"best_so_far.png", "best_so_far.csv", "trials.png", "trials.csv", "compression.png",
                            "fits.csv", "posterior_mean.png", "posterior_mean.csv"}
    assert all(path.stat().st_size > 0 for path in written.values())
    rows = list(csv.DictReader(open(written["best_so_far.csv"])))
    assert int(rows[-1]["epochs_spent"]) == sum(t.epochs_done for t in tuner.history())
    bests = [float(r["best"]) for r in rows]
    assert bests == sorted(bests, reverse=True)  # best so far never gets worse
    assert bests[-1] == pytest.approx(tuner.result().best_value)
    fits = list(csv.DictReader(open(written["fits.csv"])))
    assert len(fits) == 3  # 5 trials, 2 of them random
    assert all(float(f["m0"]) in M0_GRID and float(f["g0"]) in G0_GRID for f in fits)  # learned, on the core's grid
    assert (float(fits[-1]["m0"]), float(fits[-1]["g0"])) == (tuner.core.last_fit["m0"], tuner.core.last_fit["g0"])
    trials = list(csv.DictReader(open(written["trials.csv"])))
    for row, trial in zip(trials, tuner.history()):  # x in the space's order, not the stored settings' sorted one
        assert (row["optimizer"], float(row["x_optimizer"])) == (trial.values["optimizer"], trial.x[0])
    posterior = list(csv.DictReader(open(written["posterior_mean.csv"])))
    assert {r["hyperparameter"] for r in posterior} == {"lr", "optimizer"}
    assert {r["value"] for r in posterior if r["hyperparameter"] == "optimizer"} == {"sgd", "adam"}
    final = {r["value"]: float(r["mean"]) for r in posterior if r["hyperparameter"] == "optimizer" and r["epochs"] == "4"}
    assert final["adam"] > final["sgd"]  # the model learned that sgd adds 0.5 to the loss (scores: higher is better)


def test_best_so_far_ignores_non_finite_values(tmp_path):
    tuner = BOILTuner(space=SPACE, epochs=(1, 2), study_dir=tmp_path / "study")
    tuner.tell(tuner.ask(), curve=[(1, 0.5), (2, float("nan"))], status="diverged")
    rows = best_so_far(tuner.history(), "min")
    assert [r["best"] for r in rows] == [0.5, 0.5]


def test_a_directory_without_a_study_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="holds no BOIL study"):
        write_report(tmp_path / "empty")
