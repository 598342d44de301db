"""ganno-boil: --help, one-line errors, and the smoke config end to end (worker processes, report, summary)."""

import json
from pathlib import Path

import pytest

import inspect
from dataclasses import fields

from ganno_lightning.boil.core import BOILCore
from ganno_lightning.boil.main import CoreConfig, load_config, main

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "boil_smoke.yaml"
DIGITS = SMOKE.with_name("boil_digits.yaml")


def test_help_lists_the_keys(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "ganno-boil" in out and "budget_epochs" in out and "space" in out


def test_the_config_offers_every_core_option_and_only_those():
    fixed = {"self", "dims", "t_max", "t_min", "mode", "seed"}  # the tuner's own settings
    options = set(inspect.signature(BOILCore).parameters) - fixed
    assert {f.name for f in fields(CoreConfig)} == options


def test_both_configs_load():
    assert load_config(DIGITS).space.optimizer.choices == ["sgd", "adam"]
    assert load_config(SMOKE).epochs == [1, 4]


@pytest.mark.parametrize("overrides, message", [
    (["budgt_epochs=3"], "Unknown config key `budgt_epochs` in the overrides (did you mean `budget_epochs`?)"),
    (["budget_epochs=0"], "`budget_epochs`=0 is smaller than one trial"),
    (["space.lr.low=0.5", "space.lr.high=0.5"], "`space`: Hyperparameter `lr`: The range [0.5, 0.5] is empty"),
    (["trainer.max_epochs=3"], "`trainer_kwargs` sets `max_epochs`=3"),
    (["space.depth.low=1", "space.depth.high=3"], "`space` names `depth`, which `task`"),
    (["trainer.no_such_argument=1"], "`trainer_kwargs`={'no_such_argument': 1} are not valid Trainer arguments"),
])
def test_a_bad_config_is_one_line_and_status_2(tmp_path, capsys, overrides, message):
    with pytest.raises(SystemExit) as exit_:
        main([str(SMOKE), f"study_dir={tmp_path / 'study'}", *overrides])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ganno-boil: error: ") and message in err and "\n" not in err


def test_trials_failing_in_a_row_end_the_command_with_the_error_and_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(SMOKE), f"study_dir={tmp_path / 'study'}", "trainer.no_such_argument=1", "check_task=false",
              "workers=0", "max_failures_in_a_row=2"])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(" failed after")[0] for line in lines[:2]] == ["boil: trial 1", "boil: trial 2"]
    assert lines[-1].startswith("ganno-boil: error: BOIL stopped: the last 2 trials failed without training an epoch")


def test_smoke_config_runs_in_worker_processes_and_writes_its_report(tmp_path, capsys):
    study = tmp_path / "study"
    # 2 random trials of 4 epochs, then the real core's acquisition within the last epoch of budget
    assert main([str(SMOKE), f"study_dir={study}", "budget_epochs=9", "workers=1", "core.raw_samples=32"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["spent_epochs"] == 9 and summary["best_value"] > 0
    assert set(summary["best_values"]) == {"lr", "batch_size"}
    saved = json.loads((study / "summary.json").read_text())
    assert sum(t["epochs_done"] for t in saved["trials"]) == 9
    assert [t["source"] for t in saved["trials"]] == ["random", "random", "acquisition"]
    for name in ("best_so_far.png", "best_so_far.csv", "trials.png", "trials.csv", "compression.png", "fits.csv",
                 "posterior_mean.png", "posterior_mean.csv"):
        assert (study / "report" / name).stat().st_size > 0
