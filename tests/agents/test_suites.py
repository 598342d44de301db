"""The three suites of issue #17: `train` (meta-training), `dev` (choosing) and `confirm` (held out).

For every task each suite draws: its cell has a calibrated best LR, that cell is learnable (a
constant LR of the calibration grid ends well below the initial loss within the zoo's budget), and
the suite's initial LRs fall on both sides of the best LRs, so too-high and too-low starts are both
common. Training the suites' own tasks is the evaluation's job (its report flags any task that no
method learned); this checks the suites' definitions, cheaply, on every commit.
"""

import math

import pytest
import torch
from omegaconf import OmegaConf

from ganno_lightning.agents.evaluation.config import load_config
from ganno_lightning.agents.evaluation.plan import conditions_of, task_specs
from ganno_lightning.agents.evaluation.run import build_task, missing_lr_cells
from ganno_lightning.envs.config import family_from_config
from ganno_lightning.envs.tasks.base import TaskFamily
from ganno_lightning.envs.tasks.best_lr import load_table

#: "Learnable": the cell's best calibrated final loss is below this share of its initial loss.
LEARNED = 0.8
#: Each side of the best LR holds at least this share of a suite's initial LRs.
SIDE = 0.3
#: Tasks drawn from the `train` suite (its task stream is endless).
TRAIN_DRAWS = 120


def suite_tasks(name):
    """``(task info, lr_cell)`` of every task the suite draws."""
    if name == "train":
        family = family_from_config(OmegaConf.load("configs/env_train_suite.yaml"))
        generator = torch.Generator().manual_seed(0)
        tasks = [family.sample(generator, "train") for _ in range(TRAIN_DRAWS)]
        return [(t.info, _cell(t.info)) for t in tasks]
    cfg = load_config(f"configs/evaluate_{name}.yaml")
    assert missing_lr_cells([s for c in conditions_of(cfg) for s in task_specs(cfg, c.deeper)]) == {}
    tasks = [build_task(spec, seed=0) for c in conditions_of(cfg) for spec in task_specs(cfg, c.deeper)]
    return [(t.info, _cell(t.info)) for t in tasks]


def _cell(info):
    from ganno_lightning.envs.tasks import make_family

    family: TaskFamily = make_family(info["family"])
    return family.lr_cell(info)


@pytest.fixture(scope="module", params=["train", "dev", "confirm"])
def suite(request):
    return request.param, suite_tasks(request.param)


def test_every_task_of_the_suite_has_a_learnable_calibrated_cell(suite):
    name, tasks = suite
    cells = load_table()["cells"]
    for info, cell in tasks:
        entry = cells[cell]
        best = min(loss for loss in entry["losses"].values() if loss is not None and math.isfinite(loss))
        assert best < LEARNED * entry["initial_loss"], f"{name}: {cell} ends at {best} from {entry['initial_loss']}"
        assert info["best_lr"] == entry["best_lr"]


def test_initial_lrs_fall_on_both_sides_of_the_best_lr(suite):
    name, tasks = suite
    ratios = [info["lr"] / info["best_lr"] for info, _ in tasks]
    above = sum(r > 1 for r in ratios) / len(ratios)
    assert SIDE <= above <= 1 - SIDE, f"{name}: {above:.0%} of {len(ratios)} initial LRs above the best"
    assert all(0.1 <= r <= 10 for r in ratios)  # and never further than 10x from it
    assert max(ratios) > 3 and min(ratios) < 1 / 3  # far-off starts on both sides, not only near misses


def test_the_suites_draw_apart():
    """Dev and confirm draw other tasks than each other; confirm from the held-out ranges (deeper, wider)."""
    dev, confirm = load_config("configs/evaluate_dev.yaml"), load_config("configs/evaluate_confirm.yaml")
    assert dev.task_seed != confirm.task_seed != 0  # 0: the old held-out evaluation's
    for cfg in (dev, confirm):
        assert len(cfg.seeds) >= 5 and sum(e.tasks for e in cfg.suite) >= 24 and cfg.extend_grid
    assert {e.split for e in dev.suite} == {"train"} and {e.split for e in confirm.suite} == {"heldout"}
    assert max(e.steps or confirm.steps for e in confirm.suite) >= 10 * dev.steps  # and longer
