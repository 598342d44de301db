"""Initial LRs drawn around each task's calibrated best LR, and the calibration that finds it."""

import json
import logging
import math

import pytest
import torch

from ganno_lightning.envs.tasks import make_family
from ganno_lightning.envs.tasks.best_lr import TABLE_PATH, best_lr
from ganno_lightning.envs.tasks.calibration import (
    CalibrationConfig,
    calibrate,
    cells_of,
    load_config,
)

ORIGINAL = ["mlp_digits", "cnn_digits", "teacher_student", "sequence"]


def test_the_shipped_table_covers_every_cell_the_families_reach():
    table = json.loads(TABLE_PATH.read_text())
    reached = cells_of(CalibrationConfig(families=ORIGINAL, splits=["train", "heldout"], samples=200))
    # every train cell of the newer families (resmlp's 72 take about 2000 draws to reach); their held-out
    # cells are calibrated as suites need them (configs/calibrate_confirm_cells.json)
    reached |= cells_of(CalibrationConfig(families=["transformer_seq", "resmlp"], splits=["train"], samples=2000))
    assert set(reached) <= set(table["cells"])
    assert all(entry["initial_loss"] > 0 for entry in table["cells"].values())  # the scale of "learnable"
    assert table["commands"][0] == "ganno-calibrate-lrs configs/calibrate_lrs.yaml"  # how the cells were made
    for cell, entry in table["cells"].items():
        grid = sorted(float(lr) for lr in entry["losses"])
        finite = {float(lr): loss for lr, loss in entry["losses"].items() if loss is not None}  # None: diverged
        best = next(lr for lr in finite if lr == pytest.approx(entry["best_lr"], rel=1e-3))
        assert finite[best] == min(finite.values()), cell  # the lowest loss (stored to 4 significant digits)
        assert grid[0] < entry["best_lr"] < grid[-1] or entry["best_lr"] in (1e-6, 10.0), cell  # interior


@pytest.mark.parametrize("name", ORIGINAL)
def test_around_best_draws_on_both_sides_of_the_best_lr_within_ten_x(name):
    family = make_family(name, lr_sampling="around_best")
    generator = torch.Generator().manual_seed(0)
    ratios = []
    for split in ("train", "heldout"):
        for _ in range(12):
            info = family.sample(generator, split).info
            assert info["best_lr"] == best_lr(family.lr_cell(info))
            ratios.append(info["lr"] / info["best_lr"])
    assert all(0.1 <= r <= 10 for r in ratios)
    assert sum(r > 1.5 for r in ratios) >= 3 and sum(r < 1 / 1.5 for r in ratios) >= 3  # too high and too low


def test_around_best_is_reproducible_and_the_default_keeps_the_ranges():
    a = make_family("mlp_digits", lr_sampling="around_best").sample(torch.Generator().manual_seed(5)).info
    b = make_family("mlp_digits", lr_sampling="around_best").sample(torch.Generator().manual_seed(5)).info
    assert a == b
    plain = make_family("mlp_digits").sample(torch.Generator().manual_seed(5)).info
    assert "best_lr" not in plain and 3e-4 <= plain["lr"] <= 3e-2


def test_a_cell_without_a_calibrated_lr_and_a_bad_mode_are_clear_errors():
    family = make_family("mlp_digits", train={"depth": [11, 11]}, lr_sampling="around_best")
    with pytest.raises(ValueError, match=r"No calibrated best LR for the task cell 'mlp_digits\|\w+\|depth=11'.*"
                                         r"ganno-calibrate-lrs"):
        family.sample(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"`family.lr_sampling` must be one of \['ranges', 'around_best'\]"):
        make_family("mlp_digits", lr_sampling="best")


def test_calibration_finds_an_interior_best_and_merges_into_the_table(tmp_path):
    out = tmp_path / "best_lrs.json"
    out.write_text(json.dumps({"cells": {"kept|adam|depth=1": {"best_lr": 0.5, "losses": {}}}}))
    config = load_config({"families": ["mlp_digits"], "splits": ["train"], "samples": 1, "steps": 30,
                          "grid": [1e-3, 1e-2], "workers": 1, "out": str(out), "log": str(tmp_path / "runs.jsonl")})
    threads, level = torch.get_num_threads(), logging.getLogger("lightning.pytorch").level
    table = calibrate(config, command="ganno-calibrate-lrs test")
    assert table["commands"] == ["ganno-calibrate-lrs test"]
    # in-process runs leave this process as they found it (a silenced Lightning logger broke later tests)
    assert (torch.get_num_threads(), logging.getLogger("lightning.pytorch").level) == (threads, level)
    assert set(table["cells"]) == {"kept|adam|depth=1", *cells_of(config)}
    (cell,) = cells_of(config)
    losses = {float(lr): loss for lr, loss in table["cells"][cell]["losses"].items()}
    assert len(losses) > 2  # 30 steps at 1e-2 are too few: the grid was widened past its top edge
    assert table["cells"][cell]["best_lr"] == min(losses, key=lambda lr: losses[lr] if losses[lr] is not None
                                                   else math.inf)
    assert json.loads(out.read_text()) == table


def test_a_schedule_calibration_adds_its_best_peak_lr_beside_the_constant_one(tmp_path):
    out = tmp_path / "best_lrs.json"
    common = {"families": ["mlp_digits"], "splits": ["train"], "samples": 1, "steps": 30, "workers": 1,
              "out": str(out), "log": str(tmp_path / "runs.jsonl")}
    with pytest.raises(ValueError, match=r"`schedule=cosine`: the cell 'mlp_digits.*' has no best constant LR.*"
                                         r"`schedule=constant`"):
        calibrate(load_config({**common, "schedule": "cosine"}))
    constant = calibrate(load_config({**common, "grid": [1e-3, 1e-2, 0.1, 1.0]}))
    (cell,) = constant["cells"]
    table = calibrate(load_config({**common, "schedule": "cosine", "grid_factors": [1.0, 2.0]}))
    entry = table["cells"][cell]
    # the constant calibration is untouched; the cosine grid starts at 1x and 2x the best constant LR
    assert {k: entry[k] for k in constant["cells"][cell]} == constant["cells"][cell]
    best = constant["cells"][cell]["best_lr"]
    cosine = {float(lr): loss for lr, loss in entry["cosine_losses"].items()}
    assert {best, 2 * best} <= set(cosine)
    assert entry["best_cosine_lr"] == min(cosine, key=lambda lr: cosine[lr] if cosine[lr] is not None else math.inf)
    # a cosine run is not a constant one: the same LR trains to another loss
    assert cosine[best] != {float(lr): v for lr, v in entry["losses"].items()}[best]
    with pytest.raises(ValueError, match=r"`schedule` must be one of \['constant', 'step_decay', 'cosine'"):
        load_config({"schedule": "cosin"})


def test_the_best_schedule_is_the_cosine_only_where_its_calibrated_loss_is_lower(tmp_path):
    from ganno_lightning.envs.tasks.best_lr import best_schedule

    table = tmp_path / "best_lrs.json"
    table.write_text(json.dumps({"cells": {
        "wins": {"best_lr": 0.1, "losses": {"0.1": 0.5, "1": None}, "best_cosine_lr": 0.3,
                 "cosine_losses": {"0.3": 0.4, "3": None}},
        "loses": {"best_lr": 0.1, "losses": {"0.1": 0.5}, "best_cosine_lr": 0.2, "cosine_losses": {"0.2": 0.6}},
        "uncalibrated": {"best_lr": 0.1, "losses": {"0.1": 0.5}}}}))
    assert best_schedule("wins", table) == ("cosine", 0.3)
    assert best_schedule("loses", table) == best_schedule("uncalibrated", table) == ("constant", 0.1)
    with pytest.raises(ValueError, match=r"No calibrated best LR for the task cell 'nope'"):
        best_schedule("nope", table)


def test_calibration_takes_the_cells_an_evaluation_lacks_from_a_file(tmp_path):
    task = {"family": "mlp_digits", "split": "heldout", "seed": 3,
            "hp": {"depth": 5, "width": 20, "batch_size": 32, "optimizer": "adam", "lr": 0.01}}
    cells_file = tmp_path / "missing_lr_cells.json"
    cells_file.write_text(json.dumps({"mlp_digits|adam|depth=5": task}))
    out = tmp_path / "best_lrs.json"
    config = load_config({"cells_file": str(cells_file), "steps": 20, "grid": [1e-3, 1e-2, 0.1, 1.0], "workers": 1,
                          "out": str(out), "log": str(tmp_path / "runs.jsonl")})
    table = calibrate(config)
    assert list(table["cells"]) == ["mlp_digits|adam|depth=5"]
    entry = table["cells"]["mlp_digits|adam|depth=5"]
    assert entry["split"] == "heldout" and entry["task"]["depth"] == 5 and entry["initial_loss"] > 0
    cells_file.write_text(json.dumps({"c": {"family": "resnet", "split": "train", "hp": {}, "seed": 0}}))
    with pytest.raises(ValueError, match=r"`cells_file` .*cell 'c' must map to \{family, split, hp, seed\}"):
        load_config({"cells_file": str(cells_file)})
    with pytest.raises(ValueError, match=r"`cells_file`: cannot read a JSON object of cells from 'nope.json'"):
        load_config({"cells_file": "nope.json"})


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"`families` has unknown families \['resnet'\]"):
        load_config({"families": ["resnet"]})
    with pytest.raises(ValueError, match=r"`grid` must hold at least two positive LRs"):
        load_config({"grid": [0.1]})
