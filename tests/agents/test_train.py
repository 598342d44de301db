import datetime
import glob
import math
import re
from pathlib import Path

import pytest
import torch
from helpers import read_metrics

from ganno_lightning import GANNOAgent, GANNOCallback
from ganno_lightning.agents.networks import LOG_PROB, RunningNormalizer, make_modules
from ganno_lightning.agents.train import (
    RAY_WEIGHT_SYNC_TIMEOUT,
    main,
    parse_config,
    resolved_config,
    start_from_agent,
    train,
)
from ganno_lightning.envs import keys
from ganno_lightning.envs.config import make_env
from ganno_lightning.agents.imitation import CRITIC_PRIVILEGED_COLUMNS
from ganno_lightning.layerwise.features import FEATURE_SETS
from ganno_lightning.layerwise.lr_search import InitialLRSearch
from ganno_lightning.layerwise.rollback import SpikeRule

SMOKE = Path(__file__).parents[2] / "configs" / "ganno_smoke.yaml"


def test_smoke_run_exports_an_agent_the_callback_loads(tmp_path):
    agent_path = train(SMOKE, [f"run.out_dir={tmp_path}"])
    agent = GANNOAgent.load(agent_path)
    assert agent.interval == 10
    assert agent.training_config["algo"]["algorithm"] == "mappo"
    assert agent.training_config["family"]["name"] == "mlp_digits"
    assert agent.training_config["trained_frames"] == 48
    rows = read_metrics(tmp_path)
    assert [int(r["frames"]) for r in rows] == [16, 32, 48]
    for column in ("losses/approx_kl", "losses/clip_fraction", "losses/explained_variance", "charts/env_steps_per_s"):
        assert all(r[column] != "" for r in rows), column
    assert all(len(r["charts/action_fractions"].split()) == 7 for r in rows)
    assert glob.glob(f"{tmp_path}/wandb/offline-run-*")
    GANNOCallback(agent_path)  # deployable as is


def test_training_changes_the_policy_and_the_normaliser(tmp_path):
    torch.manual_seed(0)
    fresh = GANNOAgent.create(hidden_sizes=(16,), interval=10, seed=0)
    trained = GANNOAgent.load(train(SMOKE, [f"run.out_dir={tmp_path}", "run.wandb=false"]))
    assert not torch.equal(fresh.actor.mlp[0].weight, trained.actor.mlp[0].weight)
    assert not torch.equal(trained.normalizer.mean, torch.zeros_like(trained.normalizer.mean))


def test_meta_training_shows_its_progress_unless_told_not_to(tmp_path, capsys):
    assert parse_config(SMOKE.with_name("ganno_default.yaml")).run.progress  # the shipped configs show it too
    overrides = [f"run.out_dir={tmp_path}", "run.wandb=false", "run.total_frames=32"]
    train(SMOKE, overrides)
    bar = capsys.readouterr().err
    assert re.search(r"meta-training:  50%.*\| 16/32 \[.*env step/s, return=(nan|-?\d+\.\d{3}), kl=", bar), bar
    assert re.search(r"meta-training: 100%.*\| 32/32 ", bar), bar
    train(SMOKE, [*overrides, "run.total_frames=48", "run.resume=true", "run.progress=false"])
    assert "meta-training" not in capsys.readouterr().err


def test_resume_continues_from_the_checkpoint(tmp_path):
    overrides = [f"run.out_dir={tmp_path}", "run.wandb=false", "run.workers=2"]
    train(SMOKE, [*overrides, "run.total_frames=32"])
    path = train(SMOKE, [*overrides, "run.total_frames=64", "run.resume=true"])
    assert [int(r["iteration"]) for r in read_metrics(tmp_path)] == [1, 2, 3, 4]
    assert GANNOAgent.load(path).training_config["trained_frames"] == 64


def test_a_resumed_run_continues_its_wandb_run(tmp_path):
    overrides = [f"run.out_dir={tmp_path}", "run.progress=false"]
    train(SMOKE, [*overrides, "run.total_frames=16"])
    train(SMOKE, [*overrides, "run.total_frames=32", "run.resume=true"])
    runs = glob.glob(f"{tmp_path}/wandb/offline-run-*")
    ids = {re.search(r"offline-run-\d+_\d+-([0-9a-z]+)", path).group(1) for path in runs}
    assert len(runs) == 2 and len(ids) == 1  # two sessions of one run id


@pytest.mark.parametrize("key", ["run.out_dir", "run.export"])
def test_an_unwritable_output_folder_is_one_line_and_status_2_before_training(tmp_path, capsys, key):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    bad = blocker / "out" if key == "run.out_dir" else blocker / "agent.pt"
    good = [f"run.out_dir={tmp_path / 'run'}"] if key == "run.export" else []
    with pytest.raises(SystemExit) as exit_info:
        main([str(SMOKE), *good, f"{key}={bad}", "run.wandb=false"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert re.match(rf"ganno-train: error: `{re.escape(key)}` must be a writable directory, got '.*a_file", err), err
    assert not list(tmp_path.rglob("checkpoint.pt"))  # nothing trained
    with pytest.raises(PermissionError, match=rf"`{re.escape(key)}` must be a writable directory"):
        train(SMOKE, [*good, f"{key}={bad}", "run.wandb=false"])  # the Python entry point checks it too


def test_resuming_a_checkpoint_of_another_network_says_how_to_start_fresh(tmp_path):
    overrides = [f"run.out_dir={tmp_path}", "run.wandb=false", "run.total_frames=16"]
    train(SMOKE, overrides)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    del state["config"]  # no stored config to compare (another version's file): loading the weights decides
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"`run.resume=true`: .*checkpoint.pt was written by a different network.*"
                                         r"another `run.out_dir`"):
        train(SMOKE, [*overrides, "run.total_frames=32", "run.resume=true", "algo.hidden_sizes=[8]"])


def test_resume_cuts_the_metrics_back_to_the_rows_the_checkpoint_holds(tmp_path):
    overrides = [f"run.out_dir={tmp_path}", "run.wandb=false", "run.progress=false"]
    train(SMOKE, [*overrides, "run.total_frames=16"])
    first_checkpoint = (tmp_path / "checkpoint.pt").read_bytes()  # iteration 1
    train(SMOKE, [*overrides, "run.total_frames=48", "run.resume=true"])
    first_row = read_metrics(tmp_path)[0]
    # as if killed during iteration 4 with its last checkpoint at iteration 1: rows 2 and 3 and half a row after it
    (tmp_path / "checkpoint.pt").write_bytes(first_checkpoint)
    with open(tmp_path / "metrics.csv", "a") as handle:
        handle.write("4,64,0.1")
    train(SMOKE, [*overrides, "run.total_frames=48", "run.resume=true"])
    rows = read_metrics(tmp_path)
    assert [(int(r["iteration"]), int(r["frames"])) for r in rows] == [(1, 16), (2, 32), (3, 48)]
    assert rows[0] == first_row
    assert not list(tmp_path.glob("metrics.csv.tmp-*"))


@pytest.mark.parametrize("override, key, stored, current", [
    ("run.seed=7", "run.seed", "0", "7"),
    ("family.name=teacher_student", "family.name", "'mlp_digits'", "'teacher_student'"),
    ("env.horizon=100", "env.horizon", "50", "100"),
    ("algo.lr=0.001", "algo.lr", "0.0003", "0.001"),
    ("run.frames_per_batch=32", "run.frames_per_batch", "16", "32"),
])
def test_resuming_under_a_config_that_trains_something_else_names_the_key(tmp_path, capsys, override, key, stored,
                                                                         current):
    overrides = [f"run.out_dir={tmp_path}", "run.wandb=false", "run.progress=false"]
    train(SMOKE, [*overrides, "run.total_frames=16"])
    message = (rf"`run.resume=true`: .*checkpoint.pt was trained with `{re.escape(key)}`={re.escape(stored)}, this "
               rf"config has {re.escape(current)}.*Set `{re.escape(key)}` back to {re.escape(stored)}.*new `run.out_dir`")
    resumed = [*overrides, "run.total_frames=64", "run.resume=true", override]
    with pytest.raises(ValueError, match=message):
        train(SMOKE, resumed)
    with pytest.raises(SystemExit) as exit_info:
        main([str(SMOKE), *resumed])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.match(f"ganno-train: error: {message}", err), err
    assert [int(r["iteration"]) for r in read_metrics(tmp_path)] == [1]  # nothing trained


def test_resuming_changes_only_bookkeeping_and_starts_fresh_without_a_checkpoint(tmp_path, capsys):
    overrides = ["run.wandb=false", "run.progress=false"]
    train(SMOKE, [*overrides, f"run.out_dir={tmp_path / 'run'}", "run.total_frames=16"])
    capsys.readouterr()
    # the run's length and reporting, the deployed settings, and an env default written out train the same
    train(SMOKE, [*overrides, f"run.out_dir={tmp_path / 'run'}", "run.total_frames=32", "run.resume=true",
                  "run.checkpoint_every=5", "run.threads=2", "deploy.prior_above=0", "env.grad_samples=2"])
    assert "Resumed from" in capsys.readouterr().err
    assert [int(r["iteration"]) for r in read_metrics(tmp_path / "run")] == [1, 2]
    train(SMOKE, [*overrides, f"run.out_dir={tmp_path / 'typo'}", "run.total_frames=16", "run.resume=true"])
    notices = [line for line in capsys.readouterr().err.splitlines() if "starting a fresh run" in line]
    assert notices == [f"`run.resume=true`, but {tmp_path / 'typo'} holds no checkpoint.pt: starting a fresh run."]
    assert [int(r["iteration"]) for r in read_metrics(tmp_path / "typo")] == [1]


def _unusable_device() -> str:
    if not torch.cuda.is_available():
        return "cuda"
    return f"cuda:{torch.cuda.device_count()}"  # one past the last GPU


@pytest.mark.parametrize("override, match", [
    ("env.max_agents=1", r"`env.max_agents` is 1, but tasks of family 'mlp_digits' \(env.split='train'\) have up to 3 "
                         r"layers.*set `env.max_agents` to at least 3, or null"),
    (f"env.device={_unusable_device()}", rf"`env.device` is '{_unusable_device()}', but torch sees .*CUDA "
                                         r"device.*set `env.device: cpu`"),
    ("env.device=gpu", r"`env.device` must be a torch device such as 'cpu' or 'cuda:0', got 'gpu'"),
])
def test_an_env_this_machine_cannot_run_is_one_line_and_status_2_before_training(tmp_path, capsys, override, match):
    with pytest.raises(SystemExit) as exit_info:
        main([str(SMOKE), f"run.out_dir={tmp_path}", "run.wandb=false", override])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.match(f"ganno-train: error: {match}", err), err
    assert not (tmp_path / "metrics.csv").exists()
    with pytest.raises(ValueError, match=match):
        train(SMOKE, [f"run.out_dir={tmp_path}", "run.wandb=false", override])


def test_a_run_started_from_an_agent_file_keeps_its_actor_while_the_critic_warms_up(tmp_path):
    base = [f"run.out_dir={tmp_path / 'first'}", "run.wandb=false", "run.total_frames=32"]
    first = GANNOAgent.load(train(SMOKE, base))
    overrides = ["run.wandb=false", f"run.init_agent={tmp_path / 'first' / 'agent.pt'}"]
    warm = GANNOAgent.load(train(SMOKE, [*overrides, f"run.out_dir={tmp_path / 'warm'}", "run.total_frames=32",
                                         "algo.critic_warmup_frames=32"]))
    for name, weights in first.actor.state_dict().items():  # the critic trained, the actor did not move
        assert torch.equal(weights, warm.actor.state_dict()[name]), name
    rows = read_metrics(tmp_path / "warm")
    assert all(r["losses/critic"] != "" and r["losses/objective"] == "" for r in rows)
    # the observation statistics go on from the first agent's, moved by the new batches but not replaced
    assert not torch.equal(warm.normalizer.mean, first.normalizer.mean)
    assert torch.allclose(warm.normalizer.mean, first.normalizer.mean, atol=0.5 * first.normalizer.var.max().sqrt())
    on = GANNOAgent.load(train(SMOKE, [*overrides, f"run.out_dir={tmp_path / 'on'}", "run.total_frames=48",
                                       "algo.critic_warmup_frames=16"]))
    assert not torch.equal(on.actor.mlp[0].weight, first.actor.mlp[0].weight)  # after the warm-up PPO moves it
    assert [r["losses/objective"] != "" for r in read_metrics(tmp_path / "on")] == [False, True, True]
    with pytest.raises(ValueError, match=r"`run.init_agent`: .* has another actor network than this config"):
        train(SMOKE, [*overrides, f"run.out_dir={tmp_path / 'other'}", "algo.hidden_sizes=[8]"])
    with pytest.raises(ValueError, match=r"`run.init_agent`: .* has interval=10, this config 5"):
        train(SMOKE, [*overrides, f"run.out_dir={tmp_path / 'other'}", "env.interval=5"])
    with pytest.raises(ValueError, match=r"`run.init_agent`: .* has prior_above=0, this config 600"):
        train(SMOKE, [*overrides, f"run.out_dir={tmp_path / 'other'}", "env.prior_above=600"])


def test_deploy_settings_change_the_exported_file_but_not_the_training(tmp_path):
    base = ["run.wandb=false", "run.total_frames=32", "env.prior=cosine", "env.prior_above=600"]
    plain = GANNOAgent.load(train(SMOKE, [*base, f"run.out_dir={tmp_path / 'plain'}"]))
    deployed = GANNOAgent.load(train(SMOKE, [*base, f"run.out_dir={tmp_path / 'deployed'}", "deploy.prior_above=0",
                                             "deploy.lr_search={steps: 5, factors: [1, 3], held_batches: 1}",
                                             "deploy.recover_on_spike={spike_factor: 5}"]))
    for name, weights in plain.actor.state_dict().items():
        assert torch.equal(weights, deployed.actor.state_dict()[name]), name
    assert torch.equal(plain.normalizer.mean, deployed.normalizer.mean)
    untimed = [{k: v for k, v in row.items() if "per_s" not in k} for row in read_metrics(tmp_path / "plain")]
    assert untimed == [{k: v for k, v in row.items() if "per_s" not in k} for row in read_metrics(tmp_path / "deployed")]
    assert "deploy" not in plain.training_config  # a run without the section records what runs before it did
    assert (plain.prior_above, plain.lr_search) == (600, None)
    assert deployed.prior_above == 0 and deployed.lr_search == InitialLRSearch(5, (1.0, 3.0), 1)
    assert deployed.recover_on_spike == SpikeRule(spike_factor=5.0) and plain.recover_on_spike is None
    assert deployed.training_config["deploy"] == {"prior_above": 0, "lr_search": {"steps": 5, "factors": [1, 3],
                                                                                  "held_batches": 1},
                                                  "recover_on_spike": {"spike_factor": 5}}
    with pytest.raises(ValueError, match=r"`deploy.lr_search`: `factors` must be distinct and include 1.0"):
        train(SMOKE, [*base, f"run.out_dir={tmp_path / 'bad'}", "deploy.lr_search={factors: [3]}"])
    with pytest.raises(ValueError, match=r"`deploy.recover_on_spike`: `spike_factor` must be a number > 1"):
        train(SMOKE, [*base, f"run.out_dir={tmp_path / 'bad'}", "deploy.recover_on_spike={spike_factor: 1}"])


def test_an_anchor_keeps_a_continued_run_near_the_agent_it_started_from(tmp_path):
    start_path = train(SMOKE, [f"run.out_dir={tmp_path / 'start'}", "run.wandb=false", "run.total_frames=16"])
    start = GANNOAgent.load(start_path)
    continued = ["run.wandb=false", f"run.init_agent={start_path}", "run.total_frames=64", "algo.lr=0.02"]
    free = GANNOAgent.load(train(SMOKE, [*continued, f"run.out_dir={tmp_path / 'free'}"]))
    anchored = GANNOAgent.load(train(SMOKE, [*continued, f"run.out_dir={tmp_path / 'anchored'}",
                                             "algo.anchor_coef=50"]))
    observation = torch.randn(64, 3, len(start.feature_names), generator=torch.Generator().manual_seed(0))

    def drift(agent):  # KL(start || agent) of the action distributions, over observations none was trained on
        reference = torch.log_softmax(start.logits(observation), -1)
        return float((reference.exp() * (reference - torch.log_softmax(agent.logits(observation), -1))).sum(-1).mean())

    assert drift(anchored) < 0.5 * drift(free)
    assert all(float(r["losses/anchor_kl"]) >= 0 for r in read_metrics(tmp_path / "anchored"))
    assert all(r["losses/anchor_kl"] == "" for r in read_metrics(tmp_path / "free"))


def test_a_run_that_observes_more_features_starts_as_the_agent_it_came_from(tmp_path):
    first_path = train(SMOKE, [f"run.out_dir={tmp_path / 'first'}", "run.wandb=false", "run.total_frames=32"])
    first = GANNOAgent.load(first_path)
    wider = GANNOAgent.create(hidden_sizes=(16,), interval=10, seed=1, feature_names="hypergradient")
    stats = RunningNormalizer(wider.normalizer)
    start_from_agent(wider, stats, str(first_path))
    added = [i for i, name in enumerate(wider.feature_names) if name not in first.feature_names]
    kept = [wider.feature_names.index(name) for name in first.feature_names]
    assert len(added) == len(FEATURE_SETS["hypergradient"]) - len(first.feature_names) > 0
    observation = torch.randn(4, len(wider.feature_names), generator=torch.Generator().manual_seed(0))
    for value in (0.0, 3.0):  # whatever the new features read, the started agent acts as the first one
        observation[:, added] = value
        assert torch.allclose(wider.logits(observation), first.logits(observation[:, kept]), atol=1e-6)
    assert stats.count[kept].tolist() == [32.0] * len(kept) and stats.count[added].tolist() == [0.0] * len(added)
    batch = torch.randn(5, len(wider.feature_names), generator=torch.Generator().manual_seed(1)) + 7.0
    stats.update(batch, torch.ones(5, dtype=torch.bool))
    stats.apply()  # the new features' statistics come from their first batch alone, the kept ones move by 5 in 37
    assert torch.allclose(wider.normalizer.mean[added], batch[:, added].mean(0))
    assert torch.allclose(wider.normalizer.mean[kept], (32 * first.normalizer.mean + 5 * batch[:, kept].mean(0)) / 37)
    # and in a run: the run trains on from there; an agent cannot start a narrower one
    train(SMOKE, ["run.wandb=false", f"run.init_agent={first_path}", "env.features=hypergradient",
                  f"run.out_dir={tmp_path / 'wider'}", "run.total_frames=16"])
    with pytest.raises(ValueError, match=r"`run.init_agent`: .* observes \['update_grad_cos'.*which this config's"):
        train(SMOKE, ["run.wandb=false", f"run.init_agent={tmp_path / 'wider' / 'agent.pt'}",
                      f"run.out_dir={tmp_path / 'narrower'}"])


@pytest.mark.parametrize("override, match", [
    ("algo.learning_rate=0.1",
     "Unknown config key `algo.learning_rate` in the overrides.*Known keys: algorithm, .*lr"),
    ("algo.foo.bar=1", "Unknown config key `algo.foo` in the overrides"),
    ("run.seed=one", "`run.seed` in the overrides must be an int, got 'one'"),
    ("run.workers=0", "`run.workers` must be a positive int"),
    ("algo.algorithm=dqn", "`algo.algorithm` must be 'mappo' or 'ippo'"),
    ("run.frames_per_batch=15", "must be a multiple of `run.workers`|must not exceed"),
    ("env.horizn=3", r"Unknown config key `env.horizn` in the config \(did you mean `horizon`\?\)"),
    ("algo.lr", r"Override 'algo.lr' must be key=value"),
    ("algo.hidden_sizes[3]=8", r"`algo.hidden_sizes` has 1 entry, so it has no index 3.*algo.hidden_sizes=\[...\]"),
    ("run.wandb_mode=ofline", r"`run.wandb_mode` must be 'online', 'offline' or 'disabled', got 'ofline'"),
    ("env.horizon=abc", r"`env.horizon` in the config must be an int, got 'abc'"),
    ("run.init_agent=missing.pt", r"`run.init_agent`: no agent file at 'missing.pt'; give an agent file's path"),
    ("algo.critic_warmup_frames=-1", r"`algo.critic_warmup_frames` must be >= 0"),
    ("algo.anchor_coef=1", r"`algo.anchor_coef=1.0` needs `run.init_agent`"),
    ("algo.anchor_coef=-1", r"`algo.anchor_coef` must be a number >= 0"),
])
def test_config_errors_name_the_field(override, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        train(SMOKE, [f"run.out_dir={tmp_path}", override])


def test_an_unknown_key_in_the_file_names_the_file(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text(SMOKE.read_text().replace("algo:", "algo:\n  gama: 0.9", 1))
    with pytest.raises(ValueError, match=rf"Unknown config key `algo.gama` in {re.escape(str(config))} \(did you mean `gamma`"):
        parse_config(config)


def test_an_override_sets_one_entry_of_a_list_from_the_file():
    config = parse_config(SMOKE.with_name("ganno_default.yaml"), ["algo.critic_hidden_sizes[1]=16", "run.seed=3"])
    assert config.algo.critic_hidden_sizes == [64, 16] and config.run.seed == 3
    assert resolved_config(config)["algo"]["critic_hidden_sizes"] == [64, 16]  # the stored resolved config agrees
    config = parse_config(SMOKE, ["algo={lr: 0.001, epochs: 2}", "run={seed: 5}"])  # whole sections too
    assert (config.algo.lr, config.algo.epochs, config.run.seed) == (0.001, 2, 5)


def test_the_stored_config_records_the_run_length_a_default_gave():
    from ganno_lightning.envs.config import EnvConfig

    config = parse_config({"env": {"interval": 10}, "family": {"name": "mlp_digits"}})
    env = resolved_config(config)["env"]
    assert env == {"interval": 10, "horizon": EnvConfig().horizon}  # the rest stays as written
    agent = GANNOAgent.create(hidden_sizes=[4], interval=10)
    agent.training_config = resolved_config(config)  # as train() records it
    assert agent.trained_horizon == EnvConfig().horizon  # so interval="scaled" can pace a run by it


def test_unknown_section_is_rejected():
    with pytest.raises(ValueError, match="Unknown config key `trainer`.*Known keys: env, family"):
        parse_config(SMOKE, ["trainer.max_epochs=3"])


@pytest.mark.parametrize("algorithm", ["mappo", "ippo"])
def test_padded_agents_take_no_part_in_the_loss(algorithm):
    from torchrl.objectives.multiagent import IPPOLoss, MAPPOLoss

    config = parse_config(SMOKE, ["env.max_agents=5"])  # at most 3 layers: two or more padded agents
    env = make_env({"env": config.env, "family": config.family}, seed=0)
    agent = GANNOAgent.create(hidden_sizes=(16,), interval=10, seed=0)
    actor, critic = make_modules(agent, (16,), algorithm)
    loss = (MAPPOLoss if algorithm == "mappo" else IPPOLoss)(actor, critic)
    loss.set_keys(action=keys.ACTION, sample_log_prob=LOG_PROB, value=("agents", "state_value"),
                  reward=keys.REWARD, done=keys.DONE, terminated=keys.TERMINATED)
    loss.loss_mask_key = keys.MASK
    loss.make_value_estimator(gamma=0.99, lmbda=0.95)
    with torch.no_grad():
        batch = env.rollout(4, actor)
    padded = ~batch[keys.MASK]
    assert padded.any() and (~padded).any()
    with torch.no_grad():
        loss.value_estimator(batch, params=loss.critic_network_params, target_params=loss.target_critic_network_params)
    torch.manual_seed(0)
    reference = loss(batch.clone())
    changed = batch.clone()
    changed[keys.ACTION][padded] = (changed[keys.ACTION][padded] + 3) % 7
    changed[LOG_PROB][padded] = -5.0
    changed["advantage"][padded] = 100.0
    torch.manual_seed(0)
    other = loss(changed)
    for key in ("loss_objective", "loss_critic"):
        torch.testing.assert_close(reference[key], other[key])


def test_recurrent_actor_trains_on_worker_processes_and_deploys(tmp_path):
    from helpers import TinyRegressor, trainer

    path = train(SMOKE, [f"run.out_dir={tmp_path}", "run.wandb=false", "run.workers=2", "algo.recurrent_size=8"])
    agent = GANNOAgent.load(path)
    assert agent.recurrent and agent.actor.config["recurrent_size"] == 8
    callback = GANNOCallback(agent, interval=2)
    trainer(max_epochs=1, callbacks=[callback]).fit(TinyRegressor(optimizer="sgd", lr=0.05))
    assert callback.state_dict()["policy_state"].shape == (len(callback.schedule.layer_names), 8)


def test_recurrent_state_is_zero_at_reset_and_carried_between_steps():
    from ganno_lightning.agents.networks import POLICY_STATE, recurrent_env
    from ganno_lightning.envs.config import env_config, family_from_config

    config = parse_config(SMOKE)
    sections = {"env": config.env, "family": config.family}
    env = recurrent_env(family_from_config(sections), env_config(sections), seed=0, state_size=8)
    agent = GANNOAgent.create(hidden_sizes=(16,), interval=10, recurrent_size=8, seed=0)
    actor, _ = make_modules(agent, (16,), "mappo")
    with torch.no_grad():
        batch = env.rollout(4, actor)
    states, next_states = batch[POLICY_STATE], batch[("next", *POLICY_STATE)]
    assert (states[0] == 0).all()  # a new training run starts with an empty memory
    torch.testing.assert_close(states[1:], next_states[:-1])  # each step reads the state the last one wrote
    assert not torch.equal(states[1], states[2])
    with torch.no_grad():  # and what it wrote is the deployable agent's own next state
        expected = agent.decide(batch[keys.OBSERVATION][1], states[1], mask=batch[keys.MASK][1]).state
    torch.testing.assert_close(next_states[1], expected)


def test_smoke_run_with_the_act_early_options_trains_and_deploys_them(tmp_path):
    overrides = [f"run.out_dir={tmp_path}", "run.wandb=false", "env.decision_steps=front_loaded", "env.prior=cosine",
                 "env.action_multipliers=wide", "algo.identity_init=0.8"]
    agent = GANNOAgent.load(train(SMOKE, overrides))
    assert (agent.decision_steps, agent.prior, len(agent.action_multipliers)) == ((0, 2, 5), "cosine", 11)
    assert agent.training_config["algo"]["identity_init"] == 0.8
    assert agent.training_config["env"]["decision_steps"] == "front_loaded"  # as written
    assert all(len(r["charts/action_fractions"].split()) == 11 for r in read_metrics(tmp_path))
    callback = GANNOCallback(agent)
    assert (callback.decision_steps, callback.prior) == ((0, 2, 5), "cosine")


def test_smoke_run_with_the_hypergradient_features_deploys_them(tmp_path):
    from helpers import RecordingAgent, TinyRegressor, trainer

    agent = GANNOAgent.load(train(SMOKE, [f"run.out_dir={tmp_path}", "run.wandb=false", "env.features=hypergradient"]))
    names = FEATURE_SETS["hypergradient"]
    assert agent.feature_names == names
    recording = RecordingAgent(agent)
    trainer(max_epochs=5, callbacks=[GANNOCallback(recording)]).fit(TinyRegressor())  # 40 steps: 4 decisions
    observations = torch.stack(recording.observations)  # [decisions, layers, features]
    assert observations.shape[1:] == (2, len(names))
    cosines = observations[..., names.index("update_grad_cos")]
    assert cosines.abs().le(1).all() and cosines.ne(0).all()  # every interval of 10 steps measures two
    progress = observations[:, 0, names.index("log_loss_vs_initial")]
    assert progress[0] == 0 and progress[-1] < 0  # the loss falls from its first interval's


@pytest.mark.parametrize("override, match", [
    ("algo.identity_init=1.0", r"`algo.identity_init` must be in \[0, 1\)"),
    ("env.prior=linear", r"`env.prior` must be one of"),
    ("env.features=lr_probe", r"`env.decision_steps` must include step 0 for the LR probe features"),
    ("env.features=scale_invariant", r"`env.features` must be one of \['default', 'hypergradient', 'lr_probe', 'run_length', 'scale_free'\]"),
])
def test_option_errors_name_the_field(override, match):
    with pytest.raises(ValueError, match=match):
        parse_config(SMOKE, [override])


def test_smoke_run_with_a_privileged_critic_trains_and_the_actor_stays_deployable(tmp_path):
    from helpers import TinyRegressor, trainer

    overrides = [f"run.out_dir={tmp_path}", "run.wandb=false", "env.privileged=true",
                 "family.lr_sampling=around_best"]
    agent = GANNOAgent.load(train(SMOKE, overrides))
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    first_critic_layer = next(v for k, v in checkpoint["loss_module"].items()
                              if k.startswith("critic_network_params") and k.endswith("weight"))
    num_features = len(agent.feature_names)
    # own and pooled, observation + privileged
    # the constant expert's critic reads the LR's distance from the best, whether it is known, the prior
    assert first_critic_layer.shape[1] == 3 * (num_features + CRITIC_PRIVILEGED_COLUMNS["constant"]) == 3 * (num_features + 3)
    assert agent.actor.config["num_features"] == num_features  # the actor reads observations only
    trainer(max_epochs=3, callbacks=[GANNOCallback(agent)]).fit(TinyRegressor())


def test_imitation_phase_teaches_the_actor_the_privileged_experts_actions(tmp_path):
    from ganno_lightning.agents.imitation import expert_actions

    overrides = [f"run.out_dir={tmp_path}", "run.wandb=false", "env.privileged=true", "family.lr_sampling=around_best",
                 "algo.imitation_frames=320", "run.total_frames=320", "algo.epochs=8", "algo.lr=0.01"]
    agent = GANNOAgent.load(train(SMOKE, overrides))
    rows = read_metrics(tmp_path)
    agreement = [float(r["charts/expert_agreement"]) for r in rows]  # of the actions the actor sampled
    assert all(r["losses/imitation"] and not r["losses/approx_kl"] for r in rows)  # imitation only, no PPO step
    chance = 1 / len(agent.action_multipliers)
    assert agreement[0] < 0.2 and sum(agreement[-10:]) / 10 > 2 * chance  # from chance to twice chance or more
    # the trained actor points the way the expert does: down from 10x too high, up from 10x too low
    too_high, too_low = torch.tensor([[1.0, 1.0, 0.0, 0.5]]), torch.tensor([[-1.0, 1.0, 0.0, 0.5]])
    multipliers = torch.tensor(agent.action_multipliers)
    assert multipliers[expert_actions(too_high, agent.action_multipliers)] < 1 < \
        multipliers[expert_actions(too_low, agent.action_multipliers)]
    with pytest.raises(ValueError, match=r"`algo.imitation_frames=64` needs `env.privileged: true`"):
        parse_config(SMOKE, ["algo.imitation_frames=64"])
    with pytest.raises(ValueError, match=r"`algo.ppo_imitation_coef=0.5` needs `env.privileged: true`"):
        parse_config(SMOKE, ["algo.ppo_imitation_coef=0.5"])
    with pytest.raises(ValueError, match=r"`algo.ppo_imitation_coef` must be a number >= 0 .* got -1.0"):
        parse_config(SMOKE, ["algo.ppo_imitation_coef=-1.0", "env.privileged=true"])
    with pytest.raises(ValueError, match=r"`algo.expert_peak_factor` must be a positive number .* got 0.0"):
        parse_config(SMOKE, ["algo.expert_peak_factor=0.0"])
    with pytest.raises(ValueError, match=r"`algo.expert_schedule` must be one of \['constant', 'cosine', 'calibrated'\].* got 'linear'"):
        parse_config(SMOKE, ["algo.expert_schedule=linear"])


def test_ppo_with_an_imitation_term_keeps_the_actor_nearer_its_teacher(tmp_path):
    base = ["run.wandb=false", "env.privileged=true", "family.lr_sampling=around_best", "algo.imitation_frames=160",
            "run.total_frames=320", "algo.epochs=8", "algo.lr=0.01"]
    # a negligible term measures the imitation loss of (almost) plain PPO; a strong one keeps the actor near the teacher
    train(SMOKE, [f"run.out_dir={tmp_path / 'free'}", *base, "algo.ppo_imitation_coef=0.001"])
    train(SMOKE, [f"run.out_dir={tmp_path / 'kept'}", *base, "algo.ppo_imitation_coef=5.0"])
    free, kept = read_metrics(tmp_path / "free"), read_metrics(tmp_path / "kept")
    assert all(r["losses/approx_kl"] and r["losses/imitation"] for r in kept[10:] + free[10:])  # PPO, measured
    assert not any(r["losses/approx_kl"] for r in kept[:10])  # imitation only before the switch
    imitation = lambda rows: [float(r["losses/imitation"]) for r in rows]  # noqa: E731
    assert imitation(kept[:10]) == imitation(free[:10])  # the same draws up to the switch
    assert sum(imitation(kept[10:])) < 0.95 * sum(imitation(free[10:]))


def test_the_cosine_expert_anneals_from_its_peak_and_holds_where_it_cannot():
    from ganno_lightning.agents.imitation import expert_actions

    multipliers = [2.0 ** (k / 3) for k in range(-3, 4)]  # the default set, 2^-1 .. 2
    at_best = lambda progress, prior=0.0: torch.tensor([[0.0, 1.0, prior, progress]])  # noqa: E731
    chosen = lambda row, **kw: multipliers[int(expert_actions(row, multipliers, **kw))]  # noqa: E731
    # early, it raises a layer at the best constant LR towards the peak; late, it cuts; mid-run the cosine
    # is at half its peak of 2x the best, so it keeps the best
    assert chosen(at_best(0.05), peak_factor=2.0, schedule="cosine") == 2.0
    assert chosen(at_best(0.95), peak_factor=2.0, schedule="cosine") == 0.5
    assert chosen(at_best(0.5), peak_factor=2.0, schedule="cosine") == 1.0
    # the cosine's target over the run, followed from the best LR by the expert's own actions: down all the way
    log_lr, path = 0.0, []
    for progress in [(k + 0.5) / 12 for k in range(12)]:
        log_lr += math.log10(chosen(torch.tensor([[log_lr, 1.0, 0.0, progress]]), peak_factor=2.0, schedule="cosine"))
        path.append(log_lr)
    assert max(path) == pytest.approx(math.log10(2.0)) and path[-1] < -1.2  # up to the peak, then below 1/15
    assert all(b <= a + 1e-9 for a, b in zip(path[2:], path[3:]))  # and never back up once it decays
    # where the episode hides its length or a prior already decays the LR, no anneal of its own
    assert chosen(at_best(-1.0), peak_factor=2.0, schedule="cosine") == 1.0
    assert chosen(at_best(0.95, prior=1.0), peak_factor=2.0, schedule="cosine") == 2.0
    assert chosen(at_best(0.95), peak_factor=2.0) == 1.0  # the constant expert: the best LR, whatever the progress
    with pytest.raises(ValueError, match=r"`schedule` must be one of"):
        expert_actions(at_best(0.5), multipliers, schedule="step")


def test_the_calibrated_expert_follows_the_cosine_only_where_it_trains_the_cell_better():
    from ganno_lightning.agents.imitation import expert_actions

    multipliers = [2.0 ** (k / 3) for k in range(-3, 4)]
    # at the best constant LR; the cell's best cosine peaks at 4x it (and wins) or at 2x it (and loses)
    row = lambda progress, cosine_wins: torch.tensor([[0.0, 1.0, 0.0, progress, math.log10(4.0 if cosine_wins else 2.0),  # noqa: E731
                                                       float(cosine_wins)]])
    chosen = lambda r: multipliers[int(expert_actions(r, multipliers, peak_factor=8.0, schedule="calibrated"))]  # noqa: E731
    assert chosen(row(0.05, True)) == 2.0 and chosen(row(0.95, True)) == 0.5  # up towards its peak, then anneal
    # mid-run the cosine from 4x is at 2x: still up (the annealing expert's fixed peak_factor plays no part)
    assert chosen(row(0.5, True)) == 2.0
    assert chosen(row(0.05, False)) == chosen(row(0.95, False)) == 1.0  # the constant wins: hold the best LR
    assert chosen(row(-1.0, True)) == 1.0  # a hidden length: nothing to anneal towards


def test_a_factorised_head_over_augmented_tasks_trains_and_deploys(tmp_path):
    from helpers import TinyRegressor, trainer

    from ganno_lightning.layerwise.policy import FactorisedHead

    overrides = [f"run.out_dir={tmp_path}", "run.wandb=false", "algo.policy_head=factorised",
                 "algo.layer_offset_factor=1.5", "env.layer_lr_spread=3.0", "algo.recurrent_size=8"]
    agent = GANNOAgent.load(train(SMOKE, overrides))
    assert isinstance(agent.actor.head, FactorisedHead) and agent.actor.head.max_offset == pytest.approx(math.log(1.5))
    fresh = GANNOAgent.create(hidden_sizes=[16], recurrent_size=8, policy_head="factorised", seed=0)
    assert agent.actor.head.log_width.item() != fresh.actor.head.log_width.item()  # PPO trained the head
    trainer(max_epochs=3, callbacks=[GANNOCallback(agent)]).fit(TinyRegressor())
    with pytest.raises(ValueError, match=r"`algo.policy_head` must be one of \['categorical', 'factorised'\]"):
        parse_config(SMOKE, ["algo.policy_head=pooled"])
    with pytest.raises(ValueError, match=r"`algo.layer_offset_factor` must be a number > 1 .*got 0.5"):
        parse_config(SMOKE, ["algo.layer_offset_factor=0.5"])


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_a_run_on_worker_processes_or_ray_is_reproducible(tmp_path, backend):
    # The policy samples its actions inside the collector's workers (processes or Ray actors): their RNGs must be
    # seeded too.
    if backend == "ray":
        ray = pytest.importorskip("ray")
    runs = []
    try:
        for name in ("a", "b"):
            path = train(SMOKE, [f"run.out_dir={tmp_path / name}", "run.wandb=false", "run.workers=2",
                                 "run.total_frames=32", f"run.backend={backend}"])
            runs.append((GANNOAgent.load(path).actor.state_dict(), read_metrics(tmp_path / name)))
    finally:
        if backend == "ray":
            ray.shutdown()
    (first, first_metrics), (second, second_metrics) = runs
    if backend == "ray":  # TorchRL's fixed 60 s wait for the actors' weight sync, raised (agents/train.py)
        from torchrl.weight_update import _ray
        assert _ray._DIST_TIMEOUT == RAY_WEIGHT_SYNC_TIMEOUT > datetime.timedelta(seconds=60)
    assert [int(r["frames"]) for r in first_metrics] == [16, 32]
    assert [r["charts/episode_return"] for r in first_metrics] == [r["charts/episode_return"] for r in second_metrics]
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
