"""Paired statistics of the evaluation: ties, floors, harm, divergence and bootstrap intervals."""

import math

import numpy as np
import pytest

from ganno_lightning.agents.evaluation.paired_stats import (
    RATIO_CLIP,
    compare_paired,
    log_ratio,
)


def test_counts_follow_the_tie_and_harm_bands():
    pairs = {"t": [(1.0, 1.004), (1.004, 1.0), (0.9, 1.0), (1.01, 1.0), (1.03, 1.0)]}
    result = compare_paired(pairs)
    assert (result.wins, result.ties, result.losses, result.harms, result.pairs) == (1, 2, 2, 1, 5)


def test_losses_below_the_floor_tie_and_one_below_it_is_raised_to_it():
    assert log_ratio(1e-7, 1e-5, floor=1e-3) == 0.0
    assert log_ratio(1e-7, 2e-3, floor=1e-3) == pytest.approx(math.log(0.5))
    result = compare_paired({"solved": [(1e-7, 1e-5)], "hard": [(0.5, 1.0)]}, floors={"solved": 1e-3})
    assert (result.wins, result.ties) == (1, 1)


def test_a_diverged_run_is_a_clipped_loss_and_two_diverged_runs_tie():
    assert log_ratio(math.inf, 0.3) == RATIO_CLIP
    assert log_ratio(0.3, math.inf) == -RATIO_CLIP
    assert log_ratio(math.inf, math.inf) == 0.0
    result = compare_paired({"t": [(math.inf, 0.3), (0.3, 0.3)]})
    assert math.isfinite(result.ratio) and result.losses == 1 and result.harms == 1
    with pytest.raises(ValueError, match="must not be NaN"):
        log_ratio(math.nan, 1.0)


def test_the_interval_covers_the_estimate_narrows_with_agreeing_evidence_and_is_deterministic():
    rng = np.random.default_rng(0)
    noisy = {f"task{t}": [(math.exp(-0.2 + rng.normal(0, 0.3)), 1.0) for _ in range(5)] for t in range(8)}
    steady = {f"task{t}": [(math.exp(-0.2 + rng.normal(0, 0.01)), 1.0) for _ in range(5)] for t in range(8)}
    a, b = compare_paired(noisy, seed=3), compare_paired(steady, seed=3)
    assert a.interval[0] <= a.ratio <= a.interval[1]
    assert (b.interval[1] - b.interval[0]) < (a.interval[1] - a.interval[0]) / 5
    assert b.interval[1] < 1.0  # a steady 18% gain is significant
    assert compare_paired(noisy, seed=3).interval == a.interval


def test_the_bootstrap_resamples_tasks_not_just_pairs():
    # two tasks that disagree strongly, many seeds each: pooled pairs would look precise, tasks are two
    pairs = {"good": [(0.5, 1.0)] * 20, "bad": [(2.0, 1.0)] * 20}
    result = compare_paired(pairs, seed=0)
    assert result.interval[0] < 0.6 and result.interval[1] > 1.6
    assert [t.ratio for t in result.tasks] == pytest.approx([0.5, 2.0])


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(pairs={}), "`pairs` needs at least one"),
    (dict(pairs={"t": []}), "`pairs` needs at least one"),
    (dict(pairs={"t": [(1, 1)]}, tie=0.05, harm=0.02), "`tie` must be >= 0 and below `harm`"),
    (dict(pairs={"t": [(1, 1)]}, resamples=5), "`resamples` must be an int >= 100"),
])
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compare_paired(**kwargs)


def test_the_paired_plot_has_a_panel_per_method_and_a_row_per_task(tmp_path):
    import matplotlib.image

    from ganno_lightning.agents.evaluation.report import plot_paired

    pairs = {"task_a": [(0.5, 1.0), (0.6, 1.0)], "task_b": [(1.2, 1.0), (1.1, 1.0)]}
    rows = {m: compare_paired(pairs).as_dict() for m in ("constant@init", "cosine@tuned", "warmup_cosine@init")}
    path = plot_paired(rows, "test", tmp_path / "paired.png")
    height, width = matplotlib.image.imread(path).shape[:2]
    assert width > 2.5 * height  # the two plotted methods side by side (warmup_cosine@init is not one of them)
