"""Task pools: each task's own tuned LR from grid replays, and an env that replays the pool's tasks."""

import json
import math

import pytest
import torch
import yaml
from helpers import GANNO_SMOKE, read_metrics

from ganno_lightning import GANNOAgent
from ganno_lightning.agents.train import train

from ganno_lightning.envs import build_task_pool, keys
from ganno_lightning.envs import layerwise_env as env_module
from ganno_lightning.envs.config import env_config, make_env
from ganno_lightning.envs.replay import constant_policy, replay_config
from ganno_lightning.envs.task_pool import TaskPool

FAMILY = {"name": "mlp_digits", "train": {"depth": [1, 2], "width": [8, 16], "batch_size": [16, 32]}}
ENV = {"horizon": 40, "interval": 10, "val_every": 0}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A two-task pool over seeds 5 and 6 (grid x0.5-x2, widened within x1/16-x16), built in this process."""
    root = tmp_path_factory.mktemp("pool")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"env": ENV, "family": FAMILY}))
    overrides = [f"recipe={recipe}", "tasks=2", "first_seed=5", "grid=[0.5,1.0,2.0]", "limits=[0.0625,16.0]",
                 "workers=1", f"out={root / 'pool.json'}", f"log={root / 'replays.jsonl'}"]
    config = build_task_pool.load_config({}, overrides)
    return build_task_pool.build(config), config, recipe


def test_each_task_gets_its_best_grid_lr_never_at_an_edge_short_of_the_limits(pool):
    built, config, _ = pool
    assert [t["seed"] for t in built["tasks"]] == [5, 6] and built["dropped"] == []
    for task in built["tasks"]:
        losses = {float(f): (math.inf if v is None else v) for f, v in task["losses"].items()}
        assert {0.5, 1.0, 2.0} <= set(losses)
        assert task["best_loss"] == min(losses.values()) == losses[task["best_factor"]]
        assert task["best_lr"] == pytest.approx(task["best_factor"] * task["task_lr"], rel=1e-5)
        inside = min(losses) < task["best_factor"] < max(losses)
        assert inside or task["best_factor"] in (config.limits[0], config.limits[1])
    assert TaskPool.load(config.out).tasks[0].best_lr == built["tasks"][0]["best_lr"]


def test_a_rerun_resumes_from_the_log_and_writes_the_same_pool(pool, monkeypatch):
    built, config, _ = pool
    monkeypatch.setattr(build_task_pool, "replay_at_factor", lambda job: pytest.fail("replayed a logged run"))
    assert build_task_pool.build(config, command=built["command"]) == built


def test_a_replay_at_another_factor_that_drew_another_task_counts_as_diverged(pool, monkeypatch, tmp_path):
    """An env whose first interval diverges draws the next task; that task's loss must not become this one's."""
    _, config, recipe = pool
    real = build_task_pool.replay_at_factor

    def first_interval_diverges_at_x2(job):
        result = real(job)
        return {**result, "task": "another task", "loss": 1e-6} if job["factor"] == 2.0 else result

    monkeypatch.setattr(build_task_pool, "replay_at_factor", first_interval_diverges_at_x2)
    built = build_task_pool.build(build_task_pool.load_config({}, [
        f"recipe={recipe}", "tasks=1", "first_seed=5", "grid=[0.5,1.0,2.0]", "limits=[0.5,2.0]", "workers=1",
        f"out={tmp_path / 'pool.json'}", f"log={tmp_path / 'replays.jsonl'}"]))
    task = built["tasks"][0]
    assert task["losses"]["2"] is None and task["best_factor"] != 2.0 and task["best_loss"] > 1e-6


def test_replays_turn_off_pools_and_rollbacks_and_refuse_per_layer_lr_draws(pool):
    _, config, recipe = pool
    env = replay_config({"env": {**ENV, "task_pool": "p.json", "final_val_reference": "pool",
                                 "recover_on_spike": True}, "family": FAMILY})["env"]
    assert (env["task_pool"], env["final_val_reference"], env["recover_on_spike"]) == (None, "start", False)
    assert "recover_on_spike" not in replay_config({"env": ENV, "family": FAMILY})["env"]  # nothing added
    spread = recipe.with_name("spread.yaml")
    spread.write_text(yaml.safe_dump({"env": {**ENV, "layer_lr_spread": 3.0}, "family": FAMILY}))
    with pytest.raises(ValueError, match=r"layer_lr_spread. must be 1 .* got 3\.0"):
        build_task_pool.load_config({}, [f"recipe={spread}"])
    with pytest.raises(ValueError, match=r"layer_lr_spread. must be 1 with .env\.task_pool"):
        make_env({"env": {**ENV, "task_pool": config.out, "layer_lr_spread": 3.0}, "family": FAMILY})


def test_meta_training_refuses_a_pool_built_for_another_recipe(pool, tmp_path):
    from ganno_lightning.agents.train import parse_config

    _, config, _ = pool
    recipe = tmp_path / "train.yaml"
    recipe.write_text(yaml.safe_dump({"env": {**ENV, "task_pool": config.out, "horizon": 60}, "family": FAMILY}))
    with pytest.raises(ValueError, match=r"built with env\.horizon=40, but this config has env\.horizon=60"):
        parse_config(str(recipe))


def test_a_pool_env_replays_its_tasks_and_at_the_best_lr_reproduces_the_best_loss(pool, monkeypatch):
    built, config, _ = pool
    pooled = {"env": {**ENV, "task_pool": config.out}, "family": FAMILY}
    env = make_env({**pooled, "env": {**pooled["env"], "privileged": True}}, seed=0)
    starts = []
    for _ in range(4):
        td = env.reset()
        assert env.task.name in {t["task"] for t in built["tasks"]}
        starts.append(td[keys.PRIVILEGED][0, 0].item())  # log10(LR / the task's own best)
    env.close()
    assert all(-1 <= s <= 1 for s in starts) and len(set(starts)) == 4  # within 10x, a fresh LR each episode
    monkeypatch.setattr(env_module, "around", lambda best, generator, spread: best)  # start at the task's best
    keep = constant_policy(env_config(pooled).action_multipliers)
    env = make_env({**pooled, "env": {**pooled["env"], "privileged": True, "final_val_weight": 1.0}}, seed=0)
    td = env.reset()
    assert td[keys.PRIVILEGED][0, 0].item() == pytest.approx(0.0, abs=1e-6)
    while not td["done"].item():
        td = env.step(td.set(keys.ACTION, keep(td)))["next"]
    task = next(t for t in built["tasks"] if t["task"] == env.task.name)
    assert env.run.validation_loss() == pytest.approx(task["best_loss"], rel=1e-5)
    env.close()


def test_the_terminal_reward_can_measure_a_run_against_its_tasks_tuned_run(pool, monkeypatch):
    built, config, _ = pool
    monkeypatch.setattr(env_module, "around", lambda best, generator, spread: best)  # the tuned run itself
    scored = {"env": {**ENV, "task_pool": config.out, "final_val_reference": "pool", "final_val_weight": 1.0,
                      "train_loss_weight": 0.0}, "family": FAMILY}
    keep = constant_policy(env_config(scored).action_multipliers)
    env = make_env(scored, seed=1)
    td, rewards = env.reset(), []
    while not td["done"].item():
        td = env.step(td.set(keys.ACTION, keep(td)))["next"]
        rewards.append(td[keys.REWARD][0, 0].item())
    env.close()
    assert td[keys.TERMINATED].item() and rewards[:-1] == [0.0] * (len(rewards) - 1)
    assert rewards[-1] == pytest.approx(0.0, abs=1e-5)  # log(tuned loss / its own replay's loss)
    with pytest.raises(ValueError, match=r"final_val_reference: pool. needs .env\.task_pool"):
        make_env({**scored, "env": {**scored["env"], "task_pool": None}})


def test_pool_start_spread_narrows_the_starts_around_each_tasks_best(pool):
    _, config, _ = pool

    def starts(**settings):
        env = make_env({"env": {**ENV, "task_pool": config.out, "privileged": True, **settings}, "family": FAMILY},
                       seed=2)
        drawn = [env.reset()[keys.PRIVILEGED][0, 0].item() for _ in range(6)]  # log10(LR / the task's own best)
        env.close()
        return drawn

    wide, narrow = starts(), starts(pool_start_spread=3.0)
    assert all(abs(s) <= math.log10(3.0) + 1e-6 for s in narrow)
    # the same draws, scaled: log10(3) / log10(10) of each wide start (the same tasks, the same uniform numbers)
    assert narrow == pytest.approx([s * math.log10(3.0) for s in wide], abs=1e-5)
    assert max(abs(s) for s in wide) > math.log10(3.0)
    assert starts(pool_start_spread=1.0) == pytest.approx([0.0] * 6, abs=1e-6)  # every episode at its task's best


@pytest.mark.parametrize("settings, message", [
    ({"pool_start_spread": 0.5}, r"`env.pool_start_spread` must be a number >= 1 .*got 0.5"),
    ({"pool_start_spread": float("inf")}, r"`env.pool_start_spread` must be a number >= 1 .*got inf"),
    ({"pool_start_spread": 3.0, "task_pool": None}, r"`env.pool_start_spread` needs `env.task_pool`.*got 3.0"),
])
def test_a_bad_pool_start_spread_is_named(pool, settings, message):
    _, config, _ = pool
    with pytest.raises(ValueError, match=message):
        make_env({"env": {**ENV, "task_pool": config.out, **settings}, "family": FAMILY})


def test_a_pool_that_does_not_match_the_config_is_refused_by_name(pool, tmp_path):
    _, config, _ = pool
    pooled = {"env": {**ENV, "task_pool": config.out}, "family": FAMILY}
    with pytest.raises(ValueError, match=r"family section"):
        make_env({**pooled, "family": {**FAMILY, "train": {"depth": [1]}}})
    with pytest.raises(ValueError, match=r"env\.horizon=40.*env\.horizon=50"):
        make_env({**pooled, "env": {**pooled["env"], "horizon": 50}})
    with pytest.raises(ValueError, match=r"init_lr_scale.*task_pool"):
        make_env({**pooled, "env": {**pooled["env"], "init_lr_scale": [0.3, 3.0]}})
    with pytest.raises(ValueError, match=r"no pool file at .*ganno-build-task-pool"):
        make_env({**pooled, "env": {**pooled["env"], "task_pool": str(tmp_path / "none.json")}})
    (tmp_path / "bad.json").write_text(json.dumps({"tasks": [{"seed": 1}]}))
    with pytest.raises(ValueError, match=r"is not a task pool"):
        make_env({**pooled, "env": {**pooled["env"], "task_pool": str(tmp_path / "bad.json")}})


@pytest.mark.parametrize("override, message", [
    ("tasks=0", r"`tasks` must be a positive int, got 0"),
    ("grid=[0.5,2.0]", r"`grid` must hold .* 1 among them"),
    ("limits=[1.0,10.0]", r"`limits` must be \[low, high\] around the grid"),
    ("recipe=missing.yaml", r"`recipe` .missing.yaml.: Config file not found"),
    ("horizon=45", r"`horizon` \(45\) does not fit the recipe .*must be a multiple of .* or null for its own"),
])
def test_bad_build_settings_are_named(pool, override, message):
    _, _, recipe = pool
    with pytest.raises(ValueError, match=message):
        build_task_pool.load_config({}, [f"recipe={recipe}", override])


@pytest.fixture(scope="module")
def long_pool(pool, tmp_path_factory):
    """The same two tasks replayed as runs ten times as long (``horizon=400``), in a subfolder log made on the way."""
    _, config, recipe = pool
    root = tmp_path_factory.mktemp("long_pool")
    overrides = [f"recipe={recipe}", "horizon=400", "tasks=2", "first_seed=5", "grid=[0.5,1.0,2.0]",
                 "limits=[0.0625,16.0]", "workers=1", f"out={root / 'pool.json'}",
                 f"log={root / 'not_made_yet' / 'replays.jsonl'}"]
    return build_task_pool.build(build_task_pool.load_config({}, overrides)), root / "pool.json"


def test_a_long_runs_pool_replays_the_same_tasks_for_longer(pool, long_pool):
    short, _, _ = pool
    built, _ = long_pool
    assert built["env"]["horizon"] == 400 and short["env"]["horizon"] == 40
    assert [t["task"] for t in built["tasks"]] == [t["task"] for t in short["tasks"]]
    assert [t["losses"] for t in built["tasks"]] != [t["losses"] for t in short["tasks"]]


def test_a_long_episode_starts_where_a_short_run_of_its_task_starts(pool, long_pool, monkeypatch):
    built, config, _ = pool
    long_built, long_path = long_pool
    monkeypatch.setattr(env_module, "around", lambda best, generator, spread: best)  # start at the drawn best itself
    env = make_env({"env": {**ENV, "privileged": True, "task_pool": config.out, "long_run_prob": 1.0,
                            "long_horizon": 400, "long_task_pool": str(long_path)}, "family": FAMILY}, seed=0)
    short = {t["seed"]: t["best_lr"] for t in built["tasks"]}
    long = {t["seed"]: t["best_lr"] for t in long_built["tasks"]}
    assert short != long  # one of the two tasks has another best LR for runs ten times as long
    seen = set()
    for _ in range(6):
        td = env.reset()
        seed = env.pool_task.seed
        seen.add(seed)
        # log10(LR / the task's best for this run's length): started at its short runs' best
        assert td[keys.PRIVILEGED][0, 0].item() == pytest.approx(math.log10(short[seed] / long[seed]), abs=1e-5)
    env.close()
    assert seen == {5, 6}


def test_replays_of_a_recipe_with_long_runs_turn_them_off():
    sections = build_task_pool.replay_sections("configs/experiments/ganno_imitation_task_pool_long_runs_candidate.yaml",
                                               horizon=1200)
    env = sections["env"]
    assert (env["horizon"], env["long_run_prob"], env["task_pool"], env["long_task_pool"]) == (1200, 0.0, None, None)


def test_long_episodes_run_their_own_length_from_their_own_pool(pool, long_pool):
    _, config, _ = pool
    _, long_path = long_pool
    mixed = {"env": {**ENV, "privileged": True, "task_pool": config.out, "long_run_prob": 0.5, "long_horizon": 400,
                     "long_task_pool": str(long_path)}, "family": FAMILY}
    keep = constant_policy(env_config(mixed).action_multipliers)
    env = make_env(mixed, seed=1)  # draws a short run, then a long one
    lengths, marked = [], []
    for _ in range(2):
        td = env.reset()
        marks = {td[keys.LONG_RUN].item()}
        while not td["done"].item():
            td = env.step(td.set(keys.ACTION, keep(td)))["next"]
            marks.add(td[keys.LONG_RUN].item())
        lengths.append(env.controller.step)
        marked.append(marks)
        pool_of_run = TaskPool.load(long_path if env.horizon == 400 else config.out)
        assert env.pool_task in pool_of_run.tasks  # its task and best LR from the pool of its length
    env.close()
    assert lengths == [40, 400]
    assert marked == [{False}, {True}]  # every step says which kind of run it belongs to
    # off (the default): no draw, so a recipe without long runs draws the episodes it drew before; any draw
    # (long runs on, however rarely) shifts the episodes' random stream
    def starts(env_settings):
        env = make_env({"env": {**ENV, "privileged": True, "task_pool": config.out, **env_settings}, "family": FAMILY},
                       seed=3)
        drawn = [env.reset()[keys.PRIVILEGED][0, 0].item() for _ in range(3)]
        env.close()
        return drawn

    before = starts({})
    assert starts({"long_run_prob": 0.0, "long_horizon": 80}) == before
    assert starts({"long_run_prob": 1e-9, "long_horizon": 400, "long_task_pool": str(long_path)}) != before


@pytest.mark.parametrize("env, message", [
    ({"long_run_prob": 0.3}, r"`env\.long_horizon` must be a multiple of `env\.interval` \(10\) above `env\.horizon` "
                             r"\(40\) when `env\.long_run_prob` > 0, got None; e\.g\. 160"),
    ({"long_run_prob": 0.3, "long_horizon": 85}, r"`env\.long_horizon` must be .* got 85"),
    ({"long_run_prob": 1.5, "long_horizon": 80}, r"`env\.long_run_prob` must be a probability in \[0, 1\], got 1\.5"),
    ({"long_task_pool": "long.json"}, r"`env\.long_task_pool` needs `env\.task_pool`"),
])
def test_bad_long_run_settings_are_named(env, message):
    with pytest.raises(ValueError, match=message):
        env_config({"env": {**ENV, **env}, "family": FAMILY})


def test_a_pool_for_long_runs_must_match_them(pool, long_pool):
    _, config, _ = pool
    _, long_path = long_pool
    mixed = {"env": {**ENV, "task_pool": config.out, "long_run_prob": 0.5, "long_horizon": 80}, "family": FAMILY}
    with pytest.raises(ValueError, match=r"`env\.task_pool` and `env\.long_task_pool` are required with long runs "
                                         r".*got '.*pool\.json' and None: build .* horizon=80 out=<path>"):
        make_env(mixed)
    with pytest.raises(ValueError, match=r"required with long runs .* got None and None"):
        make_env({**mixed, "env": {**mixed["env"], "task_pool": None}})  # not even the short runs' best LRs
    with pytest.raises(ValueError, match=r"`env\.long_task_pool` .* built with env\.horizon=400, but this config has "
                                         r"env\.long_horizon=120"):
        make_env({**mixed, "env": {**mixed["env"], "long_horizon": 120, "long_task_pool": str(long_path)}})
    with pytest.raises(ValueError, match=r"`env\.long_task_pool` .* built with env\.horizon=40, but this config has "
                                         r"env\.long_horizon=80"):
        make_env({**mixed, "env": {**mixed["env"], "long_task_pool": config.out}})
    with pytest.raises(ValueError, match=r"`env\.long_task_pool`: no pool file at .*horizon=<env\.long_horizon> out="
                                         r".*or set `env\.long_run_prob: 0`"):
        make_env({**mixed, "env": {**mixed["env"], "long_task_pool": str(long_path.with_name("none.json"))}})


def test_held_short_runs_keep_the_actor_near_its_start_while_long_runs_train_it(pool, long_pool, tmp_path):
    """``algo.hold_short_runs``: PPO learns from long-run episodes only; short ones only anchor the actor."""
    _, config, _ = pool
    _, long_path = long_pool
    pooled = ["run.wandb=false", "env.horizon=40", "env.val_every=0", "env.init_lr_scale=[1.0,1.0]",
              "env.privileged=true", f"env.task_pool={config.out}", "env.long_horizon=400",
              f"env.long_task_pool={long_path}"]
    start_path = train(GANNO_SMOKE, [*pooled, f"run.out_dir={tmp_path / 'start'}", "run.total_frames=16"])
    start = GANNOAgent.load(start_path)
    continued = [*pooled, f"run.init_agent={start_path}", "run.total_frames=64", "algo.lr=0.02"]
    holding = ["algo.hold_short_runs=true", "algo.anchor_coef=1.0"]

    def run(name, *overrides):
        agent = GANNOAgent.load(train(GANNO_SMOKE, [*continued, f"run.out_dir={tmp_path / name}", *overrides]))
        return agent, read_metrics(tmp_path / name)

    free, _ = run("free", "env.long_run_prob=1e-9")  # short runs, PPO on them as without the option
    held, held_rows = run("held", "env.long_run_prob=1e-9", *holding)
    trained, trained_rows = run("trained", "env.long_run_prob=1.0", *holding)
    observation = torch.randn(64, 3, len(start.feature_names), generator=torch.Generator().manual_seed(0))

    def drift(agent):  # KL(start || agent) of the action distributions
        reference = torch.log_softmax(start.logits(observation), -1)
        return float((reference.exp() * (reference - torch.log_softmax(agent.logits(observation), -1))).sum(-1).mean())

    assert drift(held) < 0.5 * drift(free)
    assert drift(trained) > 2 * drift(held)
    assert all(r["losses/objective"] == "" and r["losses/anchor_kl"] != "" for r in held_rows)
    assert all(r["losses/objective"] != "" and r["losses/anchor_kl"] == "" for r in trained_rows)
    refused = [*pooled, f"run.init_agent={start_path}", "env.long_run_prob=0.5", f"run.out_dir={tmp_path / 'refused'}"]
    with pytest.raises(ValueError, match=r"`algo.hold_short_runs=true` .* needs `algo.anchor_coef` > 0 \(got 0.0\)"):
        train(GANNO_SMOKE, [*refused, "algo.hold_short_runs=true"])
    with pytest.raises(ValueError, match=r"no imitation phase, .*\(`algo.imitation_frames: 0`, got 16\)"):
        train(GANNO_SMOKE, [*refused, *holding, "algo.imitation_frames=16"])
