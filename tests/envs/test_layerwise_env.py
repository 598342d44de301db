import functools
import math

import pytest
import torch
from torch import nn
from envtasks import (
    DepthFamily,
    DiesLater,
    DropsThenSpikes,
    EmptyData,
    EmptyStream,
    Exploding,
    Frozen,
    RaisesInTrainingStep,
    RaisesLater,
)
from helpers import TinyRegressor, ValidatedRegressor
from torchrl.collectors import Collector
from torchrl.envs import ParallelEnv
from torchrl.envs.utils import check_env_specs

from ganno_lightning import FEATURE_NAMES
from ganno_lightning.envs import (
    EnvConfig,
    LayerwiseLREnv,
    SingleTask,
    TaskError,
    keys,
    load_config,
)
from ganno_lightning.envs.config import env_config

SMALL = dict(horizon=32, interval=4)


def tiny_env(factory=lambda: TinyRegressor(optimizer="adam", lr=0.01), seed=0, **settings):
    return LayerwiseLREnv(SingleTask(factory), EnvConfig(**{**SMALL, **settings}), seed=seed)


def fixed_actions(env, n_steps, pattern=(6, 0)):
    td = env.reset()
    out = []
    for _ in range(n_steps):
        action = torch.tensor([pattern[i % len(pattern)] for i in range(env.max_agents)])
        td.set(keys.ACTION, action)
        td = env.step(td)
        out.append(td["next"].clone())
        if td["next", "done"].item():
            break
        td = td["next"]
    return out


def test_specs_pass_torchrl_checks():
    env = tiny_env()
    check_env_specs(env)
    assert env.observation_spec[keys.OBSERVATION].shape == (2, len(FEATURE_NAMES))
    assert env.action_spec[keys.ACTION].space.n == 7


def test_episode_length_and_telescoping_return():
    env = tiny_env()
    td = env.rollout(100)
    assert td.shape == (SMALL["horizon"] // SMALL["interval"] - 1,)  # the first interval runs at reset
    assert td["next", "done"][-1].item() and td["next", "truncated"][-1].item()
    assert not td["next", "done"][:-1].any()
    rewards = td["next", keys.GROUP, "reward"][:, 0, 0]
    first, last = td[keys.EPISODE_LOSS][0].item(), td["next", keys.EPISODE_LOSS][-1].item()
    assert rewards.sum().item() == pytest.approx(math.log(first / last), rel=1e-4)
    assert (td["next", keys.GROUP, "reward"] == td["next", keys.GROUP, "reward"][:, :1]).all()  # team reward


def test_actions_set_the_layer_scales():
    env = tiny_env()
    fixed_actions(env, 3)
    assert env.controller.lr.scales == pytest.approx([8.0, 0.125])


def test_same_seed_and_actions_give_identical_rollouts():
    a, b = fixed_actions(tiny_env(seed=5), 5), fixed_actions(tiny_env(seed=5), 5)
    for x, y in zip(a, b):
        assert (x == y).all()
    c = fixed_actions(tiny_env(seed=6, init_lr_scale=[0.1, 10.0]), 5)
    d = fixed_actions(tiny_env(seed=7, init_lr_scale=[0.1, 10.0]), 5)
    assert not torch.equal(c[0][keys.OBSERVATION], d[0][keys.OBSERVATION])


def test_reset_samples_a_new_task_with_fresh_weights():
    env = LayerwiseLREnv(DepthFamily(), EnvConfig(**SMALL), seed=0)
    depths, first_weights = set(), []
    for _ in range(6):
        env.reset()
        depths.add(env.task.info["depth"])
        first_weights.append(next(env.task.module.parameters()).detach().clone())
    assert len(depths) > 1
    assert not torch.equal(first_weights[0], first_weights[1])


def test_diverging_run_ends_the_episode_with_the_penalty():
    env = LayerwiseLREnv(SingleTask(Exploding), EnvConfig(horizon=200, interval=2, max_reset_attempts=1,
                                                          divergence_penalty=3.0), seed=0)
    td = env.rollout(100)  # (the first interval at reset stays finite with these seeds)
    assert td["next", "terminated"][-1].item() and td["next", "done"][-1].item()
    assert td["next", keys.GROUP, "reward"][-1, 0, 0].item() == -3.0
    assert torch.isfinite(td["next", keys.OBSERVATION]).all()


@pytest.mark.parametrize(("reference", "steps"), [("first", 7), ("best", 4)])
def test_divergence_is_measured_against_the_first_or_the_best_loss(reference, steps):
    # intervals of 4 steps: losses 1.0, 1.0, 0.1, 0.1, 0.5, ...; 0.5 is above 3 x 0.1 but not 3 x 1.0
    env = tiny_env(DropsThenSpikes, divergence_factor=3.0, divergence_reference=reference, divergence_penalty=2.0)
    td = env.rollout(100)
    assert td.shape[0] == steps
    assert env.rollout(100).shape[0] == steps  # each episode measures against its own losses
    rewards = td["next", keys.GROUP, "reward"][:, 0, 0]
    if reference == "best":
        assert td["next", "terminated"][-1].item() and rewards[-1].item() == -2.0
    else:
        assert not td["next", "terminated"].any() and td["next", "truncated"][-1].item()
        assert rewards[3].item() == pytest.approx(math.log(0.1 / 0.5))  # the spike costs its log-ratio only
    with pytest.raises(ValueError, match=r"`env.divergence_reference` must be one of \['first', 'best'\], got 'min'"):
        EnvConfig(divergence_reference="min").validate()


def test_training_step_raising_mid_episode_ends_it_as_diverged():
    env = tiny_env(RaisesLater)
    with pytest.warns(RuntimeWarning, match="FloatingPointError: loss check failed"):
        td = env.rollout(100)
    assert td["next", "terminated"][-1].item()
    assert env.reset() is not None  # and the env lives on


@pytest.mark.parametrize("factory, match", [
    (RaisesInTrainingStep, r"training_step.*KeyError.*label column missing"),
    (EmptyData, "`train_dataloader` is empty"),
    (EmptyStream, r"^Task \S+: `train_dataloader` yielded no batch in epoch 0; it must yield at least one batch"),
    (Frozen, "no trainable parameter"),
])
def test_bad_tasks_are_clear_errors_at_reset(factory, match):
    env = LayerwiseLREnv(SingleTask(factory, max_layers=2), EnvConfig(**SMALL))
    with pytest.raises(TaskError, match=match):
        env.reset()


def test_validation_and_unknown_length_reach_the_observation():
    from helpers import ValidatedRegressor

    env = tiny_env(ValidatedRegressor, val_every=1, val_prob=1.0, unknown_total_prob=1.0, val_weight=1.0)
    td = env.rollout(3)
    has_val = td["next", keys.OBSERVATION][..., FEATURE_NAMES.index("has_val_loss")]
    assert (has_val[:, :2] == 1).all()
    unknown = td["next", keys.OBSERVATION][..., FEATURE_NAMES.index("progress_unknown")]
    assert (unknown[:, :2] == 1).all()
    env = tiny_env(ValidatedRegressor, val_every=1, val_prob=0.0, unknown_total_prob=0.0)
    td = env.rollout(3)
    assert (td["next", keys.OBSERVATION][..., FEATURE_NAMES.index("has_val_loss")] == 0).all()
    assert (td["next", keys.OBSERVATION][..., FEATURE_NAMES.index("progress")][:, 0] > 0).all()


def test_validation_measures_the_same_batches_every_time():
    from helpers import ValidatedRegressor, regression_data
    from torch.utils.data import DataLoader

    class ReshuffledValidation(ValidatedRegressor):
        def val_dataloader(self):  # a different order and batch split on every pass
            return DataLoader(regression_data(64, seed=1), batch_size=16, shuffle=True)

    env = tiny_env(ReshuffledValidation, val_every=1, val_prob=1.0, val_batches=2)
    env.reset()
    first = env.run.validation_loss()
    assert first is not None and env.run.validation_loss() == first  # no training in between: same value
    env.rollout(2)
    assert env.run.validation_loss() != first  # training moves it


def test_non_positive_loss_is_a_clear_error_at_reset():
    class Negative(TinyRegressor):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx) - 10.0

    with pytest.raises(TaskError, match="training loss must be positive"):
        tiny_env(Negative).reset()


def test_too_many_layers_for_max_agents():
    env = LayerwiseLREnv(DepthFamily(), EnvConfig(**SMALL, max_agents=1))
    with pytest.raises(ValueError, match="raise `env.max_agents`"):
        env.reset()


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="Unknown config key `env.horizn`"):
        env_config(load_config({"env": {"horizn": 10}}))
    with pytest.raises(ValueError, match=r"`env.init_lr_scale` must be \[low, high\]"):
        env_config(load_config({"env": {"init_lr_scale": [3.0, 1.0]}}))
    with pytest.raises(ValueError, match="`env.split` must be one of"):
        env_config(load_config({"env": {"split": "test"}}))
    with pytest.raises(ValueError, match="`env.horizon`"):
        env_config(load_config({"env": {}}, ["env.horizon=abc"]))
    with pytest.raises(ValueError, match=r"`env.horizon` \(110\) must be a multiple of `env.interval`"):
        env_config(load_config({"env": {"horizon": 110, "interval": 25}}))
    with pytest.raises(ValueError, match="`env.val_prob` must be a probability"):
        env_config(load_config({"env": {"val_prob": 1.5}}))


def test_parallel_env_over_tasks_of_different_depth():
    env = ParallelEnv(2, [functools.partial(LayerwiseLREnv, DepthFamily(), EnvConfig(**SMALL), seed=0),
                          functools.partial(LayerwiseLREnv, DepthFamily(), EnvConfig(**SMALL), seed=3)])
    try:
        td = env.rollout(4)
        assert td[keys.OBSERVATION].shape == (2, 4, 4, len(FEATURE_NAMES))
        counts = td[keys.MASK].sum(-1)[:, 0]
        assert (counts == td[keys.NUM_AGENTS][:, 0, 0]).all()
        assert counts[0] != counts[1]  # the two workers train networks of different depth
        padded = ~td[keys.MASK]
        assert (td[keys.OBSERVATION][padded] == 0).all()
    finally:
        env.close()


def test_collector_with_a_random_policy():
    collector = Collector(tiny_env(), policy=None, frames_per_batch=10, total_frames=20)
    try:
        batches = list(collector)
    finally:
        collector.shutdown()
    assert len(batches) == 2 and batches[0].numel() == 10
    assert batches[0]["next", "done"].sum() >= 1  # an episode is 7 steps, so one ended


def test_dead_worker_is_reported_not_hung():
    # functools.partial, not a lambda: TorchRL would run a lambda's env once in this process.
    env = ParallelEnv(2, functools.partial(LayerwiseLREnv, SingleTask(DiesLater), EnvConfig(**SMALL)))
    with pytest.raises(RuntimeError, match="worker .* dead"):
        env.rollout(10)
    with pytest.raises(RuntimeError, match=r"worker \d \(exit code 3\)"):
        env.close()


def test_smoke_config_builds_a_working_env():
    from pathlib import Path

    from ganno_lightning.envs.config import make_env

    root = Path(__file__).parents[2]
    for name in ("env_smoke.yaml", "env_default.yaml"):
        env = make_env(load_config(root / "configs" / name), seed=0)
        check_env_specs(env) if name == "env_smoke.yaml" else env.reset()
    with pytest.raises(ValueError, match="Unknown config key `trainer`.*Known keys: env, family"):
        make_env(load_config({"env": {}, "family": {"name": "mlp_digits"}, "trainer": {}}))
    with pytest.raises(ValueError, match=r"Unknown config key `family.depth`. Known keys: name, train, heldout."):
        make_env(load_config({"family": {"name": "mlp_digits", "depth": 3}}))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_training_on_a_gpu_is_reproducible():
    # The same seed on the same device gives the same rollout, bit for bit (observations included:
    # the observer sums gradient statistics in a fixed order on CUDA). Across devices float
    # arithmetic differs, so a CPU rollout is only close.
    a = fixed_actions(tiny_env(seed=2, device="cuda"), 4)
    b = fixed_actions(tiny_env(seed=2, device="cuda"), 4)
    on_cpu = fixed_actions(tiny_env(seed=2, device="cpu"), 4)
    assert len(a) == len(b) == len(on_cpu) == 4
    for step, (x, y, z) in enumerate(zip(a, b, on_cpu)):
        for key in x.keys(include_nested=True, leaves_only=True):
            assert x[key].device.type == "cpu", (step, key)  # the env's outputs stay on the CPU; only training moves
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=0,
                                       msg=lambda m, key=key, step=step: f"step {step}, {key}: {m}")
            torch.testing.assert_close(x[key], z[key], rtol=1e-3, atol=1e-3,
                                       msg=lambda m, key=key, step=step: f"cuda vs cpu, step {step}, {key}: {m}")


# -- #18 options: decision steps with a step-0 probe, wide actions, the LR prior -----------------
def identity_episode(env, keep=3):
    """Play "keep the LR" to the end; the (reset, step outputs) of the episode."""
    td = env.reset()
    outputs = [td.clone()]
    while True:
        td.set(keys.ACTION, torch.full((env.max_agents,), keep))
        td = env.step(td)["next"]
        outputs.append(td.clone())
        if td["done"].item():
            return outputs


def test_a_step_0_decision_probes_at_reset_and_leaves_the_run_unchanged():
    from helpers import NoisyRegressor

    def factory():
        return NoisyRegressor(optimizer="adam", lr=0.01)

    plain = tiny_env(factory, seed=4, unknown_total_prob=0.0)
    probed = tiny_env(factory, seed=4, unknown_total_prob=0.0, decision_steps=[0])
    plain_outputs, probed_outputs = identity_episode(plain), identity_episode(probed)
    assert probed.controller.schedule.steps == [0, 4, 8, 12, 16, 20, 24, 28]
    assert len(probed_outputs) == len(plain_outputs) + 1  # one more decision: at step 0
    assert probed_outputs[0][keys.OBSERVATION][:, FEATURE_NAMES.index("progress")].eq(0).all()
    # shuffled batches, dropout and BatchNorm statistics: the same training after the probe
    assert probed.task.module.losses[1:] == plain.task.module.losses
    for a, b in zip(plain.task.module.state_dict().values(), probed.task.module.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the interval losses after the first are the same; the first reward compares with the loss at init
    torch.testing.assert_close(torch.stack([o[keys.EPISODE_LOSS] for o in probed_outputs[2:]]),
                               torch.stack([o[keys.EPISODE_LOSS] for o in plain_outputs[1:]]), rtol=0, atol=0)


def test_front_loaded_decisions_shorten_the_first_intervals():
    env = tiny_env(decision_steps="front_loaded", horizon=32, interval=8)
    identity_episode(env)
    assert env.controller.schedule.steps == [0, 1, 4, 8, 16, 24]
    assert env.controller.step == 32


def test_wide_actions_reach_the_specs_and_the_scales():
    env = tiny_env(action_multipliers="wide")
    assert env.action_spec[keys.ACTION].space.n == 11 and env.config.action_multipliers[0] == 0.125
    check_env_specs(env)
    fixed_actions(env, 2, pattern=(10, 0))
    assert env.controller.lr.scales == pytest.approx([64.0, 1 / 64])


@pytest.mark.parametrize("prior", ["cosine", "warmup_cosine"])
def test_the_prior_sets_the_lr_of_an_episode(prior):
    from ganno_lightning.lr_schedules import SCHEDULES

    env = tiny_env(prior=prior, unknown_total_prob=0.0)
    identity_episode(env)
    lrs = env.controller.schedule.lrs_of("net.0")
    assert lrs == pytest.approx([0.01 * SCHEDULES[prior](s, 32) for s in env.controller.schedule.steps])
    hidden = tiny_env(prior=prior, unknown_total_prob=1.0)  # an episode that hides its length: constant LR
    identity_episode(hidden)
    assert hidden.controller.prior.inactive_reason == "the run length is unknown"
    assert hidden.controller.schedule.lrs_of("net.0") == pytest.approx([0.01] * 8)
    scheduled = tiny_env(lambda: TinyRegressor(optimizer="adam", lr=0.01, scheduler="lambda"), prior=prior)
    scheduled.reset()
    assert not scheduled.controller.prior.active  # the task's own scheduler stays the prior
    for above, acts in ((32, False), (31, True)):  # a prior for longer runs than the episode's 32 steps, or not
        bounded = tiny_env(prior=prior, prior_above=above, unknown_total_prob=0.0)
        identity_episode(bounded)
        assert bounded.controller.prior.active == acts and bounded.controller.prior.inactive_reason is None
        assert (bounded.controller.schedule.lrs_of("net.0") == pytest.approx(lrs)) == acts


def test_option_errors_name_the_field():
    with pytest.raises(ValueError, match=r"`env.decision_steps` must be 'none', 'front_loaded' or a list"):
        env_config(load_config({"env": {"decision_steps": [3, 1]}}))
    with pytest.raises(ValueError, match=r"`env.decision_steps` must lie before `env.horizon` \(500\), got \[0, 600\]"):
        env_config(load_config({"env": {"decision_steps": [0, 600]}}))
    with pytest.raises(ValueError, match=r"`env.prior` must be one of \['none', 'cosine', 'warmup_cosine'\]"):
        env_config(load_config({"env": {"prior": "linear"}}))
    with pytest.raises(ValueError, match=r"`env.prior_above` must be an int >= 0 .*got -3"):
        env_config(load_config({"env": {"prior_above": -3}}))
    with pytest.raises(ValueError, match=r"`env.action_multipliers` must name an action set \(one of \['default', "
                                         r"'wide'\]\)"):
        env_config(load_config({"env": {"action_multipliers": "huge"}}))
    settings = env_config(load_config({"env": {}}, ["env.decision_steps=front_loaded", "env.prior=cosine",
                                                    "env.action_multipliers=wide"]))
    assert (settings.decision_steps, settings.prior, len(settings.action_multipliers)) == ([0, 5, 12], "cosine", 11)
    assert env_config(load_config({"env": {"decision_steps": [0, 5, 12, 25]}})).decision_steps == [0, 5, 12, 25]


def test_privileged_facts_give_each_layer_its_lr_relative_to_the_tasks_best():
    from ganno_lightning.envs.tasks import make_family

    config = EnvConfig(horizon=20, interval=10, privileged=True, unknown_total_prob=0.0)
    env = LayerwiseLREnv(make_family("mlp_digits", lr_sampling="around_best"), config, seed=3)
    check_env_specs(env)
    td = env.reset()
    n, info = env.controller.num_agents, env.task.info
    privileged = td[keys.PRIVILEGED]
    assert privileged[:n, 0] == pytest.approx([math.log10(info["lr"] / info["best_lr"])] * n, abs=1e-5)
    assert privileged[:n, 1].eq(1).all() and privileged[n:].eq(0).all()  # padding carries nothing
    # the schedule that trains the task's cell best, and how far its peak LR sits from the best constant one
    assert privileged[:n, 4] == pytest.approx([math.log10(info["best_schedule_lr"] / info["best_lr"])] * n, abs=1e-5)
    assert privileged[:n, 5].tolist() == [float(info["best_schedule"] == "cosine")] * n
    action = torch.full((env.max_agents,), env.config.action_multipliers.index(2.0))
    td = env.step(td.set(keys.ACTION, action))["next"]  # every layer's LR doubles
    assert td[keys.PRIVILEGED][:n, 0] == pytest.approx([math.log10(2 * info["lr"] / info["best_lr"])] * n, abs=1e-5)
    assert privileged[:, 2].eq(0).all()  # no prior decays the LR
    # the progress at the middle of the interval the coming action governs: reset trains steps 0-10, so the
    # first action governs steps 10-20 of 20; the next observation comes at the end (clipped to 1)
    assert privileged[:n, 3].tolist() == [0.75] * n and td[keys.PRIVILEGED][:n, 3].tolist() == [1.0] * n
    unknown = tiny_env(privileged=True, unknown_total_prob=0.0).reset()[keys.PRIVILEGED]  # no calibrated best LR
    assert unknown[..., :3].eq(0).all()
    hidden = LayerwiseLREnv(make_family("mlp_digits", lr_sampling="around_best"),
                            EnvConfig(horizon=20, interval=10, privileged=True, unknown_total_prob=1.0), seed=3)
    assert hidden.reset()[keys.PRIVILEGED][:n, 3].eq(-1).all()  # the episode hides its length: no progress
    # under a cosine prior: the LR the prior decays from (the peak), and the prior's flag
    config = EnvConfig(horizon=20, interval=10, privileged=True, unknown_total_prob=0.0, prior="cosine")
    env = LayerwiseLREnv(make_family("mlp_digits", lr_sampling="around_best"), config, seed=3)
    td = env.step(env.reset().set(keys.ACTION, action))["next"]
    n, info = env.controller.num_agents, env.task.info
    assert env.controller.lr.prior_factor < 0.9  # decayed by step 10 of 20 ...
    assert td[keys.PRIVILEGED][:n, 0] == pytest.approx([math.log10(2 * info["lr"] / info["best_lr"])] * n, abs=1e-5)
    assert td[keys.PRIVILEGED][:n, 2].eq(1).all() and td[keys.PRIVILEGED][n:].eq(0).all()  # ... but not the peak
    assert keys.PRIVILEGED not in tiny_env().reset().keys(True)  # off by default: the actor's view only


def test_recover_on_spike_turns_a_divergence_into_a_penalty_and_a_rollback():
    settings = dict(horizon=40, interval=2, max_reset_attempts=1, divergence_penalty=3.0)
    assert LayerwiseLREnv(SingleTask(Exploding), EnvConfig(**settings), seed=0).rollout(100)["next", "terminated"].any()
    env = LayerwiseLREnv(SingleTask(Exploding), EnvConfig(**settings, recover_on_spike=True, spike_lr_cut=0.25), seed=0)
    identity = env.config.action_multipliers.index(1.0)
    td = env.rollout(100, policy=lambda td: td.set(keys.ACTION, torch.full((env.max_agents,), identity)))
    assert td.shape[0] == 19 and not td["next", "terminated"].any() and td["next", "truncated"][-1].item()
    penalties = int((td["next", keys.GROUP, "reward"][:, 0, 0] == -3.0).sum())
    rollbacks = env.controller.rollback.rollbacks  # one more if the first interval (at reset) spiked
    assert penalties >= 1 and rollbacks in (penalties, penalties + 1)
    assert env.controller.lr.scales[0] == pytest.approx(max(0.25 ** rollbacks, env.config.scale_bounds[0]))
    assert torch.isfinite(td["next", keys.OBSERVATION]).all()
    with pytest.raises(ValueError, match=r"`env.spike_lr_cut` must be in \(0, 1\)"):
        EnvConfig(recover_on_spike=True, spike_lr_cut=2.0).validate()


def test_layer_lr_spread_starts_each_layer_at_its_own_lr_and_the_expert_sees_it():
    from ganno_lightning.envs.tasks import make_family

    def start(spread):
        config = EnvConfig(horizon=20, interval=10, privileged=True, unknown_total_prob=0.0, layer_lr_spread=spread)
        env = LayerwiseLREnv(make_family("mlp_digits", lr_sampling="around_best"), config, seed=3)
        return env, env.reset()

    plain, plain_td = start(1.0)
    spread, td = start(3.0)
    assert spread.task.info["lr"] == plain.task.info["lr"]  # the same task: the draws come after it
    ratios = torch.tensor(spread.controller.lr.anchor_lrs()) / plain.task.info["lr"]
    assert ratios.log().abs().max() <= math.log(3.0) + 1e-6 and ratios.std() > 0.05
    assert spread.controller.lr.scales == [1.0] * spread.controller.num_agents  # the agent's own scales: untouched
    assert spread.controller.schedule.steps == [0]
    assert spread.controller.schedule.lrs[0] == pytest.approx(spread.controller.lr.effective_lrs())  # recorded as drawn
    n = spread.controller.num_agents
    assert td[keys.PRIVILEGED][:n, 0] == pytest.approx(
        (ratios * plain.task.info["lr"] / plain.task.info["best_lr"]).log10().tolist(), abs=1e-5)
    assert plain.controller.lr.anchor_lrs() == pytest.approx([plain.task.info["lr"]] * n)
    with pytest.raises(ValueError, match=r"`env.layer_lr_spread` must be a number >= 1 .*got 0.5"):
        env_config(load_config({"env": {"layer_lr_spread": 0.5}}))


# -- #18 item 4: a terminal reward on the final validation loss ----------------------------------
def scored_episode(env):
    """Keep every LR to the end; the validation loss at the first decision and at the end, and the step outputs."""
    td = env.reset()
    start, outputs = env.run.validation_loss(), []  # nothing trained since reset measured it: the same value
    while not td["done"].item():
        td.set(keys.ACTION, torch.full((env.max_agents,), 3))
        td = env.step(td)["next"]
        outputs.append(td.clone())
    return start, env.run.validation_loss(), outputs


@pytest.mark.parametrize("val_prob, val_every", [(0.0, 2), (1.0, 2), (1.0, 1), (1.0, 0)])
def test_the_final_val_reward_scores_the_end_of_the_run_against_its_start(val_prob, val_every):
    from helpers import ValidatedRegressor

    env = tiny_env(ValidatedRegressor, val_every=val_every, val_prob=val_prob, unknown_total_prob=0.0,
                   train_loss_weight=0.0, final_val_weight=2.0, final_val_clip=3.0)
    rng_before = torch.get_rng_state()
    start, end, outputs = scored_episode(env)
    assert len(outputs) == SMALL["horizon"] // SMALL["interval"] - 1 and end != start
    rewards = torch.stack([o[keys.REWARD][0, 0] for o in outputs])
    assert (rewards[:-1] == 0).all()  # no training-loss term: the run is scored once, at its end
    assert rewards[-1].item() == pytest.approx(2.0 * math.log(start / end), rel=1e-5)
    last = outputs[-1]  # the score ends the episode: nothing after it for the critic to bootstrap
    assert last["terminated"].item() and not last["truncated"].item() and not last[keys.DIVERGED].item()
    observed = torch.stack([o[keys.OBSERVATION][0, FEATURE_NAMES.index("has_val_loss")] for o in outputs])
    assert (observed > 0).any() == (val_prob == 1.0 and val_every > 0)  # the reward's measurements are not seen
    assert torch.equal(torch.get_rng_state(), rng_before)  # measuring leaves the policy's RNG alone


def test_the_final_val_reward_is_clipped_and_absent_when_off():
    from helpers import ValidatedRegressor

    clipped = tiny_env(ValidatedRegressor, val_prob=0.0, final_val_weight=1.0, final_val_clip=0.01,
                       train_loss_weight=0.0)
    start, end, outputs = scored_episode(clipped)
    assert abs(math.log(start / end)) > 0.01
    assert outputs[-1][keys.REWARD][0, 0].item() == pytest.approx(math.copysign(0.01, math.log(start / end)))
    plain = identity_episode(tiny_env(ValidatedRegressor, val_prob=0.0))
    weighted = identity_episode(tiny_env(ValidatedRegressor, val_prob=0.0, train_loss_weight=0.5))
    assert plain[-1]["truncated"].item() and not plain[-1]["terminated"].item()  # cut at the horizon, as before
    for a, b in zip(plain[1:], weighted[1:]):  # the same run: the weight only scales the training-loss term
        assert b[keys.REWARD][0, 0].item() == pytest.approx(0.5 * a[keys.REWARD][0, 0].item(), rel=1e-5, abs=1e-7)


def test_a_run_that_diverges_gets_the_penalty_and_no_final_score():
    from helpers import ValidatedRegressor

    config = EnvConfig(horizon=200, interval=2, max_reset_attempts=1, final_val_weight=1.0, train_loss_weight=0.0)
    env = LayerwiseLREnv(SingleTask(lambda: ValidatedRegressor(optimizer="sgd", lr=50.0)), config, seed=0)
    td = env.rollout(100)  # (the first interval at reset stays finite with these seeds)
    last = td["next"][-1]
    assert env._start_val is not None  # a score was due at the end
    assert last[keys.DIVERGED].item() and last["terminated"].item() and not last["truncated"].item()
    assert last[keys.REWARD][0, 0].item() == -env.config.divergence_penalty


@pytest.mark.parametrize("setting, match", [
    ({"final_val_weight": -1.0}, r"`env.final_val_weight` must be a finite number >= 0 \(0: off; e.g. 1.0\), got -1.0"),
    ({"train_loss_weight": "x"}, r"`env.train_loss_weight`"),
    ({"final_val_clip": 0.0}, r"`env.final_val_clip` must be a finite number > 0 .*got 0.0"),
])
def test_bad_reward_weights_are_named(setting, match):
    with pytest.raises(ValueError, match=match):
        env_config(load_config({"env": setting}))


class SkipsLastBatch(TinyRegressor):
    """8 batches an epoch, the last skipped (None), an LR halved every epoch."""

    def __init__(self):
        super().__init__(optimizer="adam", lr=0.01, scheduler="epoch")

    def training_step(self, batch, batch_idx):
        return None if batch_idx == 7 else super().training_step(batch, batch_idx)


def test_a_skipped_batch_counts_as_a_step_as_in_lightning():
    env = tiny_env(SkipsLastBatch)
    steps = fixed_actions(env, 20)
    assert len(steps) == 7 and env.controller.step == 32  # decisions every 4 steps (the first at reset) to 32
    assert env.run.epoch == 4 and env.run.schedulers[0].last_epoch == 4  # epochs and epoch schedulers go on


def test_a_training_step_that_skips_every_batch_is_named():
    class SkipsAll(TinyRegressor):
        def training_step(self, batch, batch_idx):
            return None

    with pytest.raises(TaskError, match=r"`training_step` returned None for every batch of the first interval \(4 steps\)"):
        tiny_env(SkipsAll).reset()


def test_a_loss_that_turns_negative_mid_episode_is_a_clear_error():
    class TurnsNegative(TinyRegressor):
        def training_step(self, batch, batch_idx):
            self.calls = getattr(self, "calls", 0) + 1
            return super().training_step(batch, batch_idx) - (10.0 if self.calls > 8 else 0.0)

    with pytest.raises(TaskError, match=r"the training loss must stay positive .* got -9\.\d+ at step 12"):
        fixed_actions(tiny_env(TurnsNegative), 8)


class FrozenNormalisedInput(ValidatedRegressor):
    """A BatchNorm its owner put in eval mode (frozen statistics), as a fine-tuned backbone's."""

    def __init__(self):
        super().__init__(optimizer="adam", lr=0.01)
        self.norm = nn.BatchNorm1d(8).eval()

    def training_step(self, batch, batch_idx):
        return super().training_step((self.norm(batch[0]), batch[1]), batch_idx)


def test_a_submodule_in_eval_mode_stays_so_as_under_a_trainer():
    env = tiny_env(FrozenNormalisedInput, val_every=1, val_prob=1.0)
    fixed_actions(env, 3)
    assert env.run.validation_loss() is not None  # validated: every submodule went to eval and back
    norm = env.run.module.norm
    assert not norm.training and torch.equal(norm.running_mean, torch.zeros(8))
    assert env.run.module.training and env.run.module.net.training


class BuildsInConfigureModel(TinyRegressor):
    def __init__(self):
        super().__init__(optimizer="adam", lr=0.01)
        self.net = None

    def configure_model(self):
        if self.net is None:
            self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


def test_layers_built_in_configure_model_are_agents():
    env = tiny_env(BuildsInConfigureModel)
    env.reset()
    assert env.controller.num_agents == 2 and env.max_agents == 2
