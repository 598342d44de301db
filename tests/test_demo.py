import csv
from pathlib import Path

import pytest

from ganno_lightning import GANNOAgent, GANNOCallback
from ganno_lightning.agents.train import parse_config, resolved_config
from ganno_lightning.demo import main
from ganno_lightning.layerwise.agent import DEFAULT_AGENT_PATH


@pytest.mark.skipif(not DEFAULT_AGENT_PATH.is_file(), reason="no default agent ships")
def test_demo_trains_and_writes_the_schedule(tmp_path, capsys):
    metrics = main(["--epochs", "2", "--out", str(tmp_path)])  # the shipped agent decides at steps 0, 5, 12 and 25
    assert metrics["val_loss"] < 2.31  # below chance level (log 10) after two epochs on digits
    with open(tmp_path / "ganno_schedule.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["layer"] for r in rows} == {"net.0", "net.2", "net.4"}
    assert (tmp_path / "ganno_schedule.png").is_file()
    out = capsys.readouterr().out
    # the agent's action (the scale) is printed beside the effective LR it gave, layer by layer
    titles, header, *table = out[out.index("Per-layer LR scales"):].split("\n\n")[0].splitlines()[1:]
    assert "agent's LR scale (its action)" in titles and "effective LR (scheduler LR x scale)" in titles
    assert header.split() == ["step", "net.0", "net.2", "net.4", "net.0", "net.2", "net.4"]
    assert [row.split()[0] for row in table] == ["0", "5", "12", "25"]
    assert all(scale != "1.000" for scale in table[0].split()[1:4])  # it acted before the first update (a probe)
    step, *values = table[-1].split()
    assert step == "25" and values[0] != "1.000"
    scales = [r["scale"] for r in rows if r["step"] == step]
    lrs = [r["lr"] for r in rows if r["step"] == step]
    assert values == [f"{float(v):.3f}" for v in scales] + [f"{float(v):.3e}" for v in lrs]


def test_the_demo_without_the_agent_trains_the_same_model_on_its_schedule_alone(tmp_path, capsys):
    metrics = main(["--epochs", "2", "--out", str(tmp_path), "--without-agent"])
    assert metrics["val_loss"] < 2.31
    out = capsys.readouterr().out
    assert "Per-layer LR scales" not in out and "(without the agent: the cosine schedule alone)" in out
    assert not (tmp_path / "ganno_schedule.csv").exists()


@pytest.mark.skipif(not DEFAULT_AGENT_PATH.is_file(), reason="no default agent ships")
def test_the_bundled_default_agent_loads_and_stays_small():
    agent = GANNOAgent.default()
    assert DEFAULT_AGENT_PATH.stat().st_size < 200_000
    assert agent.training_config["algo"]["algorithm"] in ("mappo", "ippo")
    assert GANNOCallback().agent.interval == agent.interval


@pytest.mark.skipif(not DEFAULT_AGENT_PATH.is_file(), reason="no default agent ships")
def test_the_bundled_default_agent_was_trained_by_the_committed_default_config():
    # The README promises the shipped file is reproducible from configs/ganno_default.yaml: every
    # setting but where its outputs went must match the config it recorded while training.
    config_path = Path(__file__).resolve().parents[1] / "configs" / "ganno_default.yaml"
    config = parse_config(config_path)
    expected = resolved_config(config)
    trained = dict(GANNOAgent.default().training_config)
    assert trained.pop("trained_frames") >= config.run.total_frames
    trained.pop("iterations")
    for settings in (trained, expected):  # where the outputs went, and whether a bar showed, is free
        settings["run"] = {k: v for k, v in settings["run"].items() if k not in ("out_dir", "export", "progress")}
    # Keys added since the shipped agent was trained, at the values that reproduce how it was trained
    # (list (section, key, value) here when a new setting's default reproduces the shipped file).
    for section, key, value in ADDED_SINCE_THE_SHIPPED_AGENT:
        assert key not in trained[section] and expected[section].pop(key) == value, (section, key)
    assert trained == expected


# (section, key, default): options added to the config after the shipped agent was trained; it ran with the default
ADDED_SINCE_THE_SHIPPED_AGENT: list = [("algo", "critic_warmup_frames", 0), ("algo", "anchor_coef", 0.0),
                                        ("algo", "hold_short_runs", False), ("run", "init_agent", None)]
