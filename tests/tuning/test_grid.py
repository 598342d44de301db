"""The tuning grid grows past an edge that some seed's best LR sits on, within limits."""

import math

import pytest

from ganno_lightning.tuning.grid import best_factor, factors_past_the_edge, grid_step


def test_an_interior_best_needs_no_extension():
    assert factors_past_the_edge({0.1: [0.9], 1.0: [0.2], 10.0: [0.5]}) == []


def test_each_touched_edge_gets_one_factor_past_it():
    losses = {0.3: [0.2, 0.9], 1.0: [0.5, 0.5], 3.0: [0.6, 0.1]}  # seed 0 best at the bottom, seed 1 at the top
    assert factors_past_the_edge(losses) == [0.1, 9.0]


def test_a_diverged_run_never_counts_as_best():
    # the largest factor diverged (inf) for every seed: the best is interior, no extension
    assert factors_past_the_edge({0.1: [0.9], 1.0: [0.3], 10.0: [math.inf]}) == []
    assert best_factor({1.0: [math.inf], 10.0: [math.nan]}, 0) == 1.0


def test_growth_stops_at_the_limits():
    assert factors_past_the_edge({100.0: [0.9], 1000.0: [0.1]}) == []
    assert factors_past_the_edge({1e-3: [0.1], 1e-2: [0.9]}, limits=(1e-4, 1e3)) == [1e-4]


def test_the_step_is_the_grids_finest_spacing_and_errors_name_the_problem():
    assert grid_step([10.0, 0.1, 1.0]) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="at least two factors"):
        grid_step([1.0])
    with pytest.raises(ValueError, match="one loss per seed"):
        factors_past_the_edge({1.0: [0.1, 0.2], 10.0: [0.3]})
