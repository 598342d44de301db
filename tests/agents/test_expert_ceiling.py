"""benchmarks/expert_ceiling.py: runs replayed from one seed under different policies, and their summary."""

import json
import math

import pytest
import torch
from helpers import GANNO_SMOKE, benchmark_module, smoke_recipe_around_best, smoke_task_pool

from ganno_lightning.envs import keys

SMOKE = str(GANNO_SMOKE)


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("expert_ceiling") as module:
        yield module


def test_a_run_replays_exactly_from_its_seed_and_the_policy_changes_it(bench):
    config, _ = bench.recipe_env_config(SMOKE, [])
    multipliers = [float(m) for m in bench.env_config(config).action_multipliers]
    keep = bench.constant_policy(multipliers)
    first, again = bench.replay(config, 3, keep).final_val_loss, bench.replay(config, 3, keep).final_val_loss
    assert math.isfinite(first) and first == again
    highest = lambda td: torch.full(td[keys.MASK].shape, len(multipliers) - 1, dtype=torch.long)  # noqa: E731
    assert bench.replay(config, 3, highest).final_val_loss != first
    assert bench.replay(config, 4, keep).final_val_loss != first  # another seed, another run


def test_summary_counts_wins_ties_harm_and_divergence_as_the_evaluation_does(bench):
    pairs = [(0.5, 1.0), (0.99, 1.0), (2.0, 2.0), (1.01, 1.0), (1.5, 1.0), (math.inf, 1.0), (1.0, math.inf),
             (math.inf, math.inf), (0.0, 1e-5), (bench.SOLVED / 2, 2 * bench.SOLVED), (1.0, 500.0)]
    s = bench.summary(pairs)
    assert (s["runs"], s["below"], s["equal"], s["harm"], s["diverged"]) == (11, 5 / 11, 3 / 11, 2 / 11, 1)
    ratios = [0.5, 0.99, 1.0, 1.01, 1.5, 100, 1 / 100, 1.0, 1.0, 0.5, 1 / 100]  # a divergence and 500x both at 100x
    assert s["geomean"] == pytest.approx(math.exp(sum(map(math.log, ratios)) / 11))
    assert 0 < s["low"] <= s["geomean"] <= s["high"] < math.inf


def test_the_report_scores_the_expert_and_an_agent_against_the_constant_lr(bench, tmp_path):
    from ganno_lightning.layerwise.agent import GANNOAgent

    agent = GANNOAgent.create(hidden_sizes=(8,), interval=10, seed=0).save(tmp_path / "agent.pt")
    out = tmp_path / "ceiling.md"
    bench.main([SMOKE, "env.init_lr_scale=[1.0,1.0]", "--agent", str(agent), "--episodes", "2",
                "--oracle-grid", "0.5,1", "--out", str(out)])
    report = out.read_text()
    assert "| expert |" in report and "| agent (mode) |" in report and "| tuned cosine (oracle) |" in report
    assert "tuned constant (oracle): factor picked per run (of [0.5, 1.0]): x0.5 " in report
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert set(runs) == {"constant", "expert", "agent (mode)", "tuned constant (oracle)", "tuned cosine (oracle)"}
    assert all(len(v) == 2 for v in runs.values())
    assert [r["task"] for r in runs["expert"]] == [r["task"] for r in runs["constant"]]  # replays of the same runs
    assert "| mlp_digits | expert | 2 |" in report
    out.write_text("")
    bench.main(["--rescore", str(out.with_suffix(".json"))])  # the report again, from the saved runs alone
    assert out.read_text() == report


def test_the_per_task_expert_aims_at_each_runs_own_tuned_lr(bench, tmp_path):
    recipe = smoke_recipe_around_best(tmp_path)
    pool = smoke_task_pool(tmp_path, recipe, tasks=2)
    out = tmp_path / "ceiling.md"
    overrides = [str(recipe), "env.init_lr_scale=[1.0,1.0]", "--episodes", "2", "--first-seed", "3", "--out", str(out)]
    bench.main([*overrides, "--task-pool", str(pool), "--oracle-grid", "0.25,1,4"])
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    tasks = json.loads(pool.read_text())["tasks"]
    for run, oracle, constant, task in zip(runs["per-task expert"], runs["tuned constant (oracle)"], runs["constant"],
                                           tasks):
        assert run["task"] == oracle["task"] == constant["task"] == task["task"]
        # it keeps a run already at its task's best and moves one that is not
        assert (run["final_val_loss"] == constant["final_val_loss"]) == (task["best_factor"] == 1.0)
    assert "| all runs | per-task expert | 2 |" in out.read_text()
    assert "| all runs | per-task calibrated expert | 2 |" in out.read_text()
    with pytest.raises(SystemExit):  # seeds the pool was not built over
        bench.main([*overrides[:-4], "--first-seed", "5", "--out", str(out), "--task-pool", str(pool)])
    with pytest.raises(SystemExit):  # runs that do not start at the task's drawn LR
        bench.main([str(recipe), "--episodes", "2", "--first-seed", "3", "--out", str(out), "--task-pool", str(pool)])


def test_bad_arguments_are_named(bench, tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main([SMOKE, "--episodes", "1", "--out", str(tmp_path / "x.md")])
    from ganno_lightning.layerwise.agent import GANNOAgent

    agent = GANNOAgent.create(hidden_sizes=(8,), interval=10, seed=0).save(tmp_path / "agent.pt")
    with pytest.raises(SystemExit):  # an agent for another action set would replay with the wrong actions
        bench.main([SMOKE, "env.action_multipliers=wide", "--agent", str(agent), "--out", str(tmp_path / "x.md")])
    assert "action_multipliers" in capsys.readouterr().err
    with pytest.raises(ValueError, match="action_multipliers.*must hold 1"):
        bench.constant_policy([0.5, 2.0])


def test_the_oracles_pick_the_best_factor_of_their_grid_per_run(bench):
    config, _ = bench.recipe_env_config(SMOKE, [])
    with pytest.raises(ValueError, match=r"env.init_lr_scale.*\[0.3, 3.0\]"):
        bench.tuned_replay(config, 3, None, [1.0], "none")
    config, _ = bench.recipe_env_config(SMOKE, ["env.init_lr_scale=[1.0,1.0]"])
    keep = bench.constant_policy([float(m) for m in bench.env_config(config).action_multipliers])
    best, factor = bench.tuned_replay(config, 3, keep, [0.3, 1.0, 3.0], "none")
    tried = {f: bench.replay({**config, "env": {**config["env"], "init_lr_scale": [f, f]}}, 3, keep).final_val_loss
             for f in (0.3, 1.0, 3.0)}
    assert best.final_val_loss == min(tried.values()) and tried[factor] == best.final_val_loss
    assert tried[1.0] == bench.replay(config, 3, keep).final_val_loss  # x1 is the constant row's own run
    cosine, _ = bench.tuned_replay(config, 3, keep, [1.0], "cosine")
    assert cosine.final_val_loss != tried[1.0] and cosine.task == best.task
