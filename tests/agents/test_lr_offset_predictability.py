"""benchmarks/lr_offset_predictability.py: what at step 0 predicts a pool task's best-LR offset."""

import json

import numpy as np
import pytest
from helpers import benchmark_module, smoke_recipe_around_best, smoke_task_pool

@pytest.fixture(scope="module")
def bench():
    with benchmark_module("lr_offset_predictability") as module:
        yield module


def test_scores_find_an_offset_that_is_a_function_of_the_inputs_and_not_noise(bench):
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(200, 3))
    offset = np.round(2 * np.tanh(inputs[:, 0])) / 2  # on a grid, with 0 (at the best) a class of its own
    scores = bench.scores(inputs, offset, tree_iterations=50)
    assert scores["trees R²"] > 0.8 and scores["trees AUC"] > 0.9
    noise = bench.scores(inputs, rng.permutation(offset), tree_iterations=50)
    assert noise["ridge R²"] < 0.1 and noise["trees AUC"] < 0.7


def test_probe_transforms_read_a_linear_decrease_as_one():
    linear = np.array([[-0.001, -0.008, -0.064], [-0.01, 0.02, 3.0]])
    with benchmark_module("lr_offset_predictability") as module:
        out = module.probe_transforms(linear)
    np.testing.assert_allclose(out[0, :2], [1.0, 1.0])
    assert out[1, 0] < 0 and out[1, 1] == 4.0  # an overshoot at 1x, an explosion at 8x (clipped)
    assert out[1, 2] == pytest.approx(np.log(1e-7))  # no decrease at 1x: the log's floor


def test_the_report_reads_a_pool_built_over_its_seeds(bench, tmp_path):
    recipe = smoke_recipe_around_best(tmp_path)
    pool = smoke_task_pool(tmp_path, recipe, tasks=5)
    out = tmp_path / "offset.md"
    probe = ["env.init_lr_scale=[1.0,1.0]", "env.features=lr_probe", "env.decision_steps=[0]"]
    bench.main([str(recipe), *probe, "--episodes", "5", "--first-seed", "3", "--task-pool", str(pool), "--out", str(out)])
    rows = [line for line in out.read_text().splitlines() if line.startswith("| the") or line.startswith("| step")]
    assert len(rows) == 6 and "5 runs" in out.read_text()
    assert len(json.loads(pool.read_text())["tasks"]) == 5
    with pytest.raises(SystemExit):  # no LR probe in the recipe's features
        bench.main([str(recipe), probe[0], "--episodes", "5", "--first-seed", "3", "--task-pool", str(pool),
                    "--out", str(out)])
