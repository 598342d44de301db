"""The schedule shows the agent's action (each layer's LR scale) beside the effective LR it gave."""

import csv
import glob

import matplotlib.pyplot as plt
import pytest
from helpers import TinyRegressor, depth_agent, trainer
from lightning.pytorch.loggers import WandbLogger

from ganno_lightning import GANNOCallback
from ganno_lightning.layerwise.schedule import LRSchedule

SCALE_TITLE = "agent's LR scale per layer (its action)"
LR_TITLE = "effective LR per layer (scheduler LR x scale)"


def cosine_like_schedule() -> LRSchedule:
    # the agent raises the first layer's scale 4x while the scheduler's LR falls 100x
    schedule = LRSchedule(["first", "last"])
    schedule.record(0, lrs=[0.1, 0.1], scales=[1.0, 1.0])
    schedule.record(25, lrs=[0.01, 0.0025], scales=[2.0, 0.5], actions=[6, 0])
    schedule.record(50, lrs=[0.004, 0.00025], scales=[4.0, 0.25], actions=[6, 0])
    return schedule


def test_the_schedule_keeps_and_writes_each_layers_scale(tmp_path):
    schedule = cosine_like_schedule()
    assert schedule.scales_of("first") == [1.0, 2.0, 4.0] and schedule.lrs_of("first") == [0.1, 0.01, 0.004]
    assert schedule.rows()[4] == (50, "first", 0.004, 4.0, 6)
    with open(schedule.to_csv(tmp_path / "schedule.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [(r["layer"], float(r["scale"])) for r in rows if r["step"] == "50"] == [("first", 4.0), ("last", 0.25)]


def test_the_figure_shows_the_agents_scales_beside_the_effective_lr(tmp_path):
    schedule = cosine_like_schedule()
    figure = schedule.figure()
    heat, lines = figure.axes[:2]
    assert (heat.get_title(), lines.get_title()) == (SCALE_TITLE, LR_TITLE)
    # the heatmap is the scales themselves (layers x decisions), not the LRs
    assert heat.images[0].get_array().tolist() == [[1.0, 2.0, 4.0], [1.0, 0.5, 0.25]]
    assert [list(line.get_ydata()) for line in lines.get_lines()] == [[0.1, 0.01, 0.004], [0.1, 0.0025, 0.00025]]
    # the colour scale is symmetric about 1: a 4x raise is as far from neutral as a 4x cut
    assert (heat.images[0].norm.vmin, heat.images[0].norm.vmax) == (0.25, 4.0)
    plt.close(figure)
    assert schedule.plot(tmp_path / "schedule.png").stat().st_size > 1000


def test_wandb_logs_the_scale_heatmap_beside_the_effective_lr(tmp_path, monkeypatch):
    drawn = []
    figure = LRSchedule.figure

    def remember(schedule):
        drawn.append(figure(schedule))
        return drawn[-1]

    monkeypatch.setattr(LRSchedule, "figure", remember)
    wandb_logger = WandbLogger(project="ganno-test", save_dir=str(tmp_path), offline=True)
    callback = GANNOCallback(depth_agent(4))
    trainer(max_epochs=1, logger=wandb_logger, callbacks=[callback]).fit(TinyRegressor())
    wandb_logger.experiment.finish()
    assert [[axes.get_title() for axes in fig.axes[:2]] for fig in drawn] == [[SCALE_TITLE, LR_TITLE]]
    heatmap = drawn[0].axes[0].images[0].get_array().tolist()
    assert heatmap == [callback.schedule.scales_of("net.0"), callback.schedule.scales_of("net.2")]
    run_dir = glob.glob(f"{tmp_path}/**/offline-run-*", recursive=True)[0]
    assert glob.glob(f"{run_dir}/files/media/images/ganno/schedule_plot_*.png")
    table = glob.glob(f"{run_dir}/files/media/table/ganno/schedule_*.table.json")
    assert table and '"scale"' in open(table[0]).read()
