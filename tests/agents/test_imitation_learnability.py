"""benchmarks/imitation_learnability.py: teacher actions recorded from replays, scored by held-out classifiers."""

import math

import numpy as np
import pytest
from helpers import GANNO_SMOKE as SMOKE
from helpers import benchmark_module, smoke_recipe_around_best


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("imitation_learnability") as module:
        yield module


def test_a_predictable_teacher_scores_far_below_the_prior_and_a_random_one_does_not(bench):
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(300, 3))
    groups = np.repeat(np.arange(30), 10)
    predictable = np.digitize(inputs[:, 0], [-0.5, 0.5])  # three actions, a function of one input
    scores = bench.held_out_scores(inputs, predictable, groups, num_actions=3, tree_iterations=30)
    assert scores["gradient-boosted trees"][1] > 0.9
    assert scores["gradient-boosted trees"][0] < 0.5 * scores["class frequencies"][0]
    noise = rng.integers(0, 3, size=300)
    scores = bench.held_out_scores(inputs, noise, groups, num_actions=3, tree_iterations=30)
    assert scores["class frequencies"][0] == pytest.approx(math.log(3), abs=0.05)
    assert scores["logistic regression"][0] > 0.95 * scores["class frequencies"][0]


def test_the_report_scores_the_cell_expert_on_replayed_runs(bench, tmp_path):
    recipe = smoke_recipe_around_best(tmp_path)
    from ganno_lightning.layerwise.agent import GANNOAgent

    agent = GANNOAgent.create(hidden_sizes=(8,), interval=10, seed=0).save(tmp_path / "agent.pt")
    out = tmp_path / "learnability.md"
    bench.main([str(recipe), "--episodes", "5", "--first-seed", "3", "--agent", str(agent), "--out", str(out)])
    rows = [line for line in out.read_text().splitlines() if line.startswith("| cell expert |")]
    # three input sets (the last: first decisions only) x three models, and the agent's own on all and first rows
    assert len(rows) == 11 and "first decisions only" in rows[6] and "first decisions only" in rows[-1]
    # an untrained agent is near uniform over the 7 actions: its cross-entropy is about log(7)
    assert float(rows[-2].split("|")[4]) == pytest.approx(math.log(7), abs=0.3)
    for row in rows:
        nats, accuracy = row.split("|")[4:6]
        assert 0.0 <= float(nats) < 20 and 0 <= int(accuracy.strip().rstrip("%")) <= 100
    assert "5 runs" in out.read_text()


def test_an_agent_for_other_features_actions_or_decisions_is_refused(bench, tmp_path, capsys):
    from ganno_lightning.layerwise.agent import GANNOAgent

    agent = GANNOAgent.create(hidden_sizes=(8,), interval=10, seed=0).save(tmp_path / "agent.pt")
    with pytest.raises(SystemExit):
        bench.main([str(SMOKE), "env.action_multipliers=wide", "--agent", str(agent), "--out", str(tmp_path / "x.md")])
    assert "action_multipliers" in capsys.readouterr().err


@pytest.mark.parametrize("argument", [["--episodes", "2"], ["--epsilon", "1.5"]])
def test_bad_arguments_are_named(bench, tmp_path, argument, capsys):
    with pytest.raises(SystemExit):
        bench.main([str(SMOKE), *argument, "--out", str(tmp_path / "x.md")])
    assert argument[0] in capsys.readouterr().err
