from pathlib import Path

import pytest
import torch

from ganno_lightning import GANNOAgent
from ganno_lightning.agents.ensemble import build_ensemble, build_from_config, load_config, main

SMOKE = Path(__file__).parents[2] / "configs" / "ganno_smoke.yaml"
SHIPPED_EXAMPLE = Path(__file__).parents[2] / "configs" / "ganno_ensemble.yaml"


def _agents(folder, count=3, interval=25):
    return [GANNOAgent.create(hidden_sizes=(16,), recurrent_size=8, interval=interval, seed=s)
            .save(folder / f"seed{s}.pt") for s in range(count)]


def test_the_command_line_ensembles_agent_files_and_refuses_what_would_go_wrong(tmp_path, capsys):
    paths = _agents(tmp_path)
    assert main([str(p) for p in paths] + ["--out", str(tmp_path / "ensemble.pt")]) == 0
    assert f"ensemble of 3 agents written to {tmp_path / 'ensemble.pt'}" in capsys.readouterr().out
    recorded = GANNOAgent.load(tmp_path / "ensemble.pt").training_config["ensemble"]
    assert [m["source"] for m in recorded] == [str(p) for p in paths]
    with pytest.raises(ValueError, match="at least two agent files"):
        build_ensemble(paths[:1], tmp_path / "one.pt")
    with pytest.raises(ValueError, match="more than once"):
        build_ensemble([paths[0], paths[1], paths[0]], tmp_path / "twice.pt")
    with pytest.raises(ValueError, match="one of the members"):
        build_ensemble(paths, paths[1])
    with pytest.raises(SystemExit):  # argparse's error: the message on stderr, exit status 2
        main([str(paths[0]), "--out", str(tmp_path / "x.pt")])
    assert "at least two agent files" in capsys.readouterr().err
    assert not (tmp_path / "one.pt").exists() and not (tmp_path / "x.pt").exists()


def test_a_recipe_ensemble_trains_its_members_once_and_records_how(tmp_path):
    trained = _agents(tmp_path, count=1, interval=10)[0]  # acts as the smoke recipe's agents do
    config = load_config({
        "members": [{"config": str(SMOKE), "overrides": ["run.seed=0", "run.wandb=false"]},
                    {"config": str(SMOKE), "overrides": ["run.seed=1", "run.wandb=false"]},
                    {"agent": str(trained)}],
        "out_dir": str(tmp_path / "ensemble"), "export": str(tmp_path / "shipped" / "agent.pt")})
    path = build_from_config(config)
    assert path == tmp_path / "shipped" / "agent.pt"
    ensemble = GANNOAgent.load(path)
    recorded = ensemble.training_config["ensemble"]
    assert [m["source"] for m in recorded] == [f"ganno-train {SMOKE} run.seed=0 run.wandb=false",
                                               f"ganno-train {SMOKE} run.seed=1 run.wandb=false", str(trained)]
    assert [m["training_config"]["run"]["seed"] for m in recorded[:2]] == [0, 1]
    assert recorded[0]["fingerprint"] != recorded[1]["fingerprint"]  # two seeds, two agents
    metrics = (tmp_path / "ensemble" / "member0" / "metrics.csv").read_text()

    # a rerun reads the finished members back: no iteration is trained again, the same ensemble results
    again = GANNOAgent.load(build_from_config(config))
    assert (tmp_path / "ensemble" / "member0" / "metrics.csv").read_text() == metrics
    assert again.fingerprint() == ensemble.fingerprint()
    assert GANNOAgent.load(tmp_path / "ensemble" / "agent.pt").fingerprint() == ensemble.fingerprint()
    observation = torch.randn(3, len(ensemble.feature_names))
    torch.testing.assert_close(again.decide(observation).multipliers, ensemble.decide(observation).multipliers)


def test_the_command_line_routes_agent_files_by_fit_length(tmp_path, capsys):
    short = GANNOAgent.create(hidden_sizes=(16,), seed=0, feature_names="hypergradient").save(tmp_path / "short.pt")
    long = GANNOAgent.create(hidden_sizes=(16,), seed=1, feature_names="run_length").save(tmp_path / "long.pt")
    assert main([str(short), str(long), "--boundaries", "600", "--out", str(tmp_path / "routed.pt")]) == 0
    assert f"routed agent of 2 agents written to {tmp_path / 'routed.pt'}" in capsys.readouterr().out
    routes = GANNOAgent.load(tmp_path / "routed.pt").training_config["routes"]
    assert [(r["source"], r["fits"]) for r in routes] == [(str(short), "<= 600"), (str(long), "> 600")]
    other = GANNOAgent.create(hidden_sizes=(16,), seed=2, feature_names="hypergradient").save(tmp_path / "other.pt")
    with pytest.raises(SystemExit):  # neither agent observes a fit's length: nothing to route by
        main([str(short), str(other), "--boundaries", "600", "--out", str(tmp_path / "x.pt")])
    assert "must observe (`log_total_steps`" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
    with pytest.raises(ValueError, match=r"`boundaries` must hold one fit length fewer than the 2 members"):
        load_config({"members": [{"agent": str(short)}, {"agent": str(long)}], "boundaries": [300, 600]})


@pytest.mark.parametrize("members, match", [
    ([{"agent": "a.pt"}], "at least two agents"),
    ([{"agent": "a.pt"}, {}], r"`members\[1\]` must set exactly one of `agent`"),
    ([{"agent": "a.pt", "config": "c.yaml"}, {"agent": "b.pt"}], r"`members\[0\]` must set exactly one"),
    ([{"agent": "a.pt", "overrides": ["run.seed=1"]}, {"agent": "b.pt"}], r"`members\[0\].overrides`"),
])
def test_config_errors_name_the_member(members, match):
    with pytest.raises(ValueError, match=match):
        load_config({"members": members})


def test_the_committed_example_names_configs_that_exist():
    config = load_config(SHIPPED_EXAMPLE)
    assert all(Path(SHIPPED_EXAMPLE.parents[1] / m.config).is_file() for m in config.members)


def test_a_bad_config_on_the_command_line_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(SHIPPED_EXAMPLE), "members=[]"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == ("ganno-ensemble: error: `members` must list at least two agents to "
                                               "ensemble, got 0. See configs/ganno_ensemble.yaml.")
