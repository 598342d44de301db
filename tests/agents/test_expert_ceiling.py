"""benchmarks/expert_ceiling.py: runs replayed from one seed under different policies, and their summary."""

import importlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from ganno_lightning.envs import keys

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "ganno_smoke.yaml")


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("expert_ceiling")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_a_run_replays_exactly_from_its_seed_and_the_policy_changes_it(bench):
    config, _ = bench.recipe_env_config(SMOKE, [])
    multipliers = [float(m) for m in bench.env_config(config).action_multipliers]
    keep = bench.constant_policy(multipliers)
    first, again = bench.replay(config, 3, keep).final_val_loss, bench.replay(config, 3, keep).final_val_loss
    assert math.isfinite(first) and first == again
    highest = lambda td: torch.full(td[keys.MASK].shape, len(multipliers) - 1, dtype=torch.long)  # noqa: E731
    assert bench.replay(config, 3, highest).final_val_loss != first
    assert bench.replay(config, 4, keep).final_val_loss != first  # another seed, another run


def test_summary_counts_wins_harm_and_divergence(bench):
    s = bench.summary([0.5, 0.99, 1.0, 1.01, 1.5, math.inf])
    assert (s["runs"], s["below"], s["harm"], s["diverged"]) == (6, 2 / 6, 2 / 6, 1)
    assert s["geomean"] == pytest.approx(math.exp(sum(map(math.log, [0.5, 0.99, 1.0, 1.01, 1.5])) / 5))
    assert s["low"] <= s["geomean"] <= s["high"]


def test_the_report_scores_the_expert_and_an_agent_against_the_constant_lr(bench, tmp_path):
    from ganno_lightning.layerwise.agent import GANNOAgent

    agent = GANNOAgent.create(hidden_sizes=(8,), interval=10, seed=0).save(tmp_path / "agent.pt")
    out = tmp_path / "ceiling.md"
    bench.main([SMOKE, "--agent", str(agent), "--episodes", "2", "--out", str(out)])
    report = out.read_text()
    assert "| expert |" in report and "| agent (mode) |" in report
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert set(runs) == {"constant", "expert", "agent (mode)"} and all(len(v) == 2 for v in runs.values())
    assert [r["task"] for r in runs["expert"]] == [r["task"] for r in runs["constant"]]  # replays of the same runs
    assert "| mlp_digits | expert | 2 |" in report


def test_bad_arguments_are_named(bench, tmp_path):
    with pytest.raises(SystemExit):
        bench.main([SMOKE, "--episodes", "1", "--out", str(tmp_path / "x.md")])
    with pytest.raises(ValueError, match="action_multipliers.*must hold 1"):
        bench.constant_policy([0.5, 2.0])
