import csv
import glob
import logging
import math
import pickle
import sys
import warnings

import lightning as L
import pytest
import torch
from helpers import (
    DOWN,
    UP,
    NaNLossWindow,
    NoisyRegressor,
    RecordingAgent,
    TinyRegressor,
    ValidatedRegressor,
    depth_agent,
    identity_agent,
    regression_data,
    trainer,
)
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from ganno_lightning import (
    FEATURE_NAMES,
    AgentCheckpointError,
    GANNOAgent,
    GANNOCallback,
)
from ganno_lightning.layerwise import lr_control
from ganno_lightning.layerwise.actions import WIDE_ACTION_MULTIPLIERS as WIDE
from ganno_lightning.layerwise.agent import DEFAULT_AGENT_PATH

STEPS_PER_EPOCH = 8  # 64 samples, batch 8


def expected_scales(step: int, interval: int, bounds=(1e-2, 1e2)) -> tuple[float, float]:
    """Scales of (first, last) layer in effect during optimizer step `step` (0-based) under depth_agent."""
    k = step // interval
    return min(2.0**k, bounds[1]), max(0.5**k, bounds[0])


# -- constructor and fit-time errors ------------------------------------------------------------
@pytest.mark.parametrize("interval", [0, -3, 2.5, "4", True])
def test_bad_interval_is_rejected(interval):
    with pytest.raises(ValueError, match=r"`interval` must be a positive int"):
        GANNOCallback(depth_agent(), interval=interval)


def test_bad_min_change_is_rejected():
    with pytest.raises(ValueError, match=r"`min_change` must be a finite number >= 1 .*, got 0.9"):
        GANNOCallback(depth_agent(), min_change=0.9)


def test_bad_scale_bounds_are_rejected():
    with pytest.raises(ValueError, match=r"`scale_bounds` must satisfy 0 < low <= 1 <= high"):
        GANNOCallback(depth_agent(), scale_bounds=(2.0, 10.0))


def test_missing_agent_file_is_a_clear_error(tmp_path):
    with pytest.raises(AgentCheckpointError, match="Agent file not found"):
        GANNOCallback(agent=tmp_path / "nope.pt")


def test_corrupt_agent_file_is_a_clear_error(tmp_path):
    path = tmp_path / "agent.pt"
    path.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(AgentCheckpointError, match="not a GANNO agent file"):
        GANNOCallback(agent=path)


def test_wrong_agent_type_is_rejected():
    with pytest.raises(TypeError, match="`agent` must be a GANNOAgent"):
        GANNOCallback(agent=3)


@pytest.mark.skipif(DEFAULT_AGENT_PATH.is_file(), reason="a default agent ships")
def test_without_default_agent_the_error_says_how_to_train_one():
    with pytest.raises(AgentCheckpointError, match="ganno-train"):
        GANNOCallback()


def test_manual_optimization_is_rejected_before_training():
    class Manual(TinyRegressor):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

    with pytest.raises(MisconfigurationException, match="GANNOCallback needs automatic optimization"):
        trainer(callbacks=[GANNOCallback(depth_agent())]).fit(Manual())


def test_lbfgs_is_rejected_before_training():
    class WithLBFGS(TinyRegressor):
        def configure_optimizers(self):
            return torch.optim.LBFGS(self.parameters(), lr=0.5)

    with pytest.raises(MisconfigurationException, match="torch's LBFGS takes exactly one: use another optimizer"):
        trainer(callbacks=[GANNOCallback(depth_agent())]).fit(WithLBFGS())


def test_frozen_model_is_a_clear_error():
    model = TinyRegressor()
    for p in model.parameters():
        p.requires_grad_(False)

    model.configure_optimizers = lambda: torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="no trainable parameter"):
        trainer(callbacks=[GANNOCallback(depth_agent())]).fit(model)


# -- the schedule follows the policy ------------------------------------------------------------
def test_each_layer_lr_moves_exactly_as_the_policy_says():
    interval = 4
    model = TinyRegressor(lr=0.05)
    callback = GANNOCallback(depth_agent(interval), exploration="mode")
    trainer(max_epochs=2, callbacks=[callback]).fit(model)

    optimizer = model.trainer.optimizers[0]
    seen = optimizer.seen_lrs
    assert len(seen) == 2 * STEPS_PER_EPOCH
    for step, lrs in enumerate(seen):
        up, down = expected_scales(step, interval)
        # during the fit the optimizer holds one group per layer: [net.0, net.2]
        assert lrs == pytest.approx([0.05 * up, 0.05 * down])
    # outside the step, and after fit, the groups carry the unscaled LR in the user's layout
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["lr"] == 0.05

    schedule = callback.schedule
    assert schedule.steps == [0, 4, 8, 12, 16]
    assert schedule.lrs_of("net.0") == pytest.approx([0.05 * 2**k for k in range(5)])
    assert schedule.lrs_of("net.2") == pytest.approx([0.05 * 0.5**k for k in range(5)])
    assert schedule.actions[1:] == [[UP, DOWN]] * 4


def test_scales_are_clipped_to_bounds():
    model = TinyRegressor(lr=0.05)
    callback = GANNOCallback(depth_agent(2), scale_bounds=(0.25, 4.0))
    trainer(max_epochs=2, callbacks=[callback]).fit(model)
    assert max(row[0] for row in callback.schedule.scales) == 4.0
    assert min(row[1] for row in callback.schedule.scales) == 0.25


def test_default_exploration_applies_the_policys_expected_change():
    # The first layer's policy is a coin flip between x2 and x1: "mean" moves it by sqrt(2) per
    # decision (the drift its samples would have), "mode" would double it every time.
    agent = depth_agent(4)
    with torch.no_grad():
        linear = agent.actor.mlp[0]
        keep = agent.action_multipliers.index(1.0)
        linear.bias[keep], linear.weight[keep] = linear.bias[UP], linear.weight[UP]
    callback = GANNOCallback(agent)
    assert callback.exploration == "mean"
    trainer(max_epochs=2, callbacks=[callback]).fit(TinyRegressor(lr=0.05))
    assert callback.schedule.lrs_of("net.0") == pytest.approx([0.05 * 2 ** (k / 2) for k in range(5)])
    assert callback.schedule.lrs_of("net.2") == pytest.approx([0.05 * 0.5**k for k in range(5)])
    assert callback.schedule.actions[1:] == [None] * 4  # no single action was taken


@pytest.mark.parametrize("exploration", ["greedy", None, "MEAN"])
def test_bad_exploration_is_rejected(exploration):
    with pytest.raises(ValueError, match=r"`exploration` must be one of \['mean', 'mode', 'random'\], got "):
        GANNOCallback(depth_agent(), exploration=exploration)


@pytest.mark.parametrize("deterministic, exploration", [(True, "mode"), (False, "random")])
def test_deprecated_deterministic_maps_to_an_exploration(deterministic, exploration):
    with pytest.deprecated_call(match=f"now means `exploration='{exploration}'`"):
        assert GANNOCallback(depth_agent(), deterministic=deterministic).exploration == exploration


def test_an_agent_whose_decide_returns_no_decision_is_named():
    class OldStyleAgent(RecordingAgent):
        def decide(self, observation, *args, **kwargs):
            return super().decide(observation, *args, **kwargs)[1:]  # (actions, state), the old contract

    with pytest.raises(TypeError, match=r"OldStyleAgent.decide must return a ganno_lightning.layerwise.agent.Decision"):
        trainer(max_epochs=1, callbacks=[GANNOCallback(OldStyleAgent(depth_agent(4)))]).fit(TinyRegressor())


def test_interval_argument_overrides_the_agent():
    callback = GANNOCallback(depth_agent(4), interval=2)
    trainer(max_epochs=1, callbacks=[callback]).fit(TinyRegressor())
    assert callback.schedule.steps == [0, 2, 4, 6, 8]


def test_a_scaled_interval_stretches_the_agents_grid_to_a_longer_fit_but_not_its_early_steps():
    agent = depth_agent(2, decision_steps=[0, 1], training_config={"env": {"horizon": 8}})  # trained on 8-step runs
    callback = GANNOCallback(agent, interval="scaled")
    trainer(max_epochs=4, callbacks=[callback]).fit(TinyRegressor())  # 32 steps: 4x its training runs
    assert callback.schedule.steps == [0, 1, 8, 16, 24, 32]  # the early ones, then every 2 x 4 steps
    again = trainer(max_epochs=1, callbacks=[callback])  # the same callback on a fit as long as training's
    again.fit(TinyRegressor())
    assert callback.schedule.steps == [0, 1, 2, 4, 6, 8]


def test_a_scaled_interval_resumes_on_its_grid_and_warns_when_the_fits_length_changes(tmp_path):
    def fit(max_epochs, directory, resume=None):
        L.seed_everything(7)
        callback = GANNOCallback(depth_agent(2, training_config={"env": {"horizon": 8}}), interval="scaled")
        checkpoint = ModelCheckpoint(dirpath=directory, save_last=True, every_n_epochs=1, save_top_k=-1)
        trainer(max_epochs=max_epochs, enable_checkpointing=True, callbacks=[callback, checkpoint],
                num_sanity_val_steps=0).fit(ValidatedRegressor(optimizer="adam", lr=0.01), ckpt_path=resume)
        return callback

    straight = fit(4, tmp_path / "a")  # 32 steps: every 8
    halfway = tmp_path / "a" / f"epoch=1-step={2 * STEPS_PER_EPOCH}.ckpt"
    assert fit(4, tmp_path / "b", resume=halfway).schedule.steps == straight.schedule.steps == [0, 8, 16, 24, 32]
    with pytest.warns(UserWarning, match=r"the checkpoint's fit decided every 8 steps, this one every 16"):
        fit(8, tmp_path / "c", resume=halfway)  # 64 steps: every 16 from here


def test_a_scaled_interval_keeps_the_grid_of_an_agent_without_a_recorded_horizon():
    with pytest.warns(UserWarning, match=r"`interval='scaled'` keeps the agent's interval: its file records no"):
        callback = GANNOCallback(depth_agent(4), interval="scaled")
    trainer(max_epochs=4, callbacks=[callback]).fit(TinyRegressor())
    assert callback.schedule.steps == list(range(0, 33, 4))


def test_a_fit_far_longer_than_the_agents_training_runs_warns_once_at_its_start():
    agent = depth_agent(2, training_config={"env": {"horizon": 8}})  # trained on 8-step runs
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer(max_epochs=4, callbacks=[GANNOCallback(agent)]).fit(TinyRegressor())  # 32 steps: 4x, no warning
    with pytest.warns(UserWarning) as record:
        trainer(max_epochs=5, callbacks=[GANNOCallback(agent)]).fit(TinyRegressor())  # 40 steps: 5x
    messages = [str(w.message) for w in record if "meta-trained on" in str(w.message)]
    assert len(messages) == 1
    assert "this fit's 40 optimizer steps are 5x the longest runs the agent was meta-trained on (8 steps)" in messages[0]


def test_sampling_mode_is_reproducible_from_seed():
    def run(seed):
        callback = GANNOCallback(GANNOAgent.create(interval=2, seed=1), exploration="random", seed=seed)
        L.seed_everything(0)
        trainer(max_epochs=1, callbacks=[callback]).fit(TinyRegressor())
        return callback.schedule.actions

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_a_nonfinite_loss_holds_the_scales_warns_once_and_deciding_resumes_after():
    model = NaNLossWindow(4, 12, lr=0.05)  # intervals 4-7 and 8-11 are NaN
    callback = GANNOCallback(depth_agent(4))
    with pytest.warns(UserWarning) as record:
        trainer(max_epochs=2, callbacks=[callback]).fit(model)
    messages = [str(w.message) for w in record if "GANNOCallback: the training loss" in str(w.message)]
    assert len(messages) == 1
    assert "is nan (mean of the 4 optimizer steps up to global step 8); every layer keeps its LR scale" in messages[0]
    assert callback.schedule.steps == [0, 4, 16]  # no decision at 8 or 12
    assert callback.schedule.lrs_of("net.0") == pytest.approx([0.05, 0.1, 0.2])
    seen = model.trainer.optimizers[0].seen_lrs
    assert seen[4:] == [pytest.approx([0.1, 0.025])] * 12  # the scales reached before the NaN


# -- composition with Lightning features --------------------------------------------------------
def test_several_param_groups_keep_their_hyperparameters():
    model = TinyRegressor(lr=0.1, groups=True)
    callback = GANNOCallback(depth_agent(4))

    class Inspect(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            self.groups = [{k: v for k, v in g.items() if k != "params"} for g in trainer.optimizers[0].param_groups]

    inspect = Inspect()
    trainer(max_epochs=1, callbacks=[callback, inspect]).fit(model)
    assert [(g["tag"], g["weight_decay"], g["momentum"], g["ganno_agent"]) for g in inspect.groups] == [
        ("body", 0.01, 0.9, 0), ("head", 0.0, 0.9, 1)]
    for step, lrs in enumerate(model.trainer.optimizers[0].seen_lrs):
        up, down = expected_scales(step, 4)
        assert lrs == pytest.approx([0.1 * up, 0.01 * down])
    assert [g["tag"] for g in model.trainer.optimizers[0].param_groups] == ["body", "head"]


def _logged(logger) -> list[dict[str, str]]:
    with open(f"{logger.log_dir}/metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("monitor_first", [True, False])
def test_learning_rate_monitor_names_each_layers_series_and_shows_the_scheduler_lr(tmp_path, monitor_first):
    logger = CSVLogger(tmp_path)
    callbacks = [LearningRateMonitor(), GANNOCallback(depth_agent(4))]
    trainer(max_epochs=1, logger=logger, log_every_n_steps=1, callbacks=callbacks if monitor_first else callbacks[::-1]
            ).fit(TinyRegressor(optimizer="adam", lr=0.1, scheduler="lambda"))
    rows = _logged(logger)
    assert {key for row in rows for key, value in row.items() if value and key.startswith("lr-")} == {
        "lr-Adam/net.0", "lr-Adam/net.2"}
    monitored = [(int(r["step"]), float(r["lr-Adam/net.0"]), float(r["lr-Adam/net.2"])) for r in rows
                 if r["lr-Adam/net.0"]]
    # the monitor reads the groups outside optimizer.step(): the scheduler's LR, the same for every layer ...
    assert monitored == [(s, pytest.approx(0.1 * 0.9**s), pytest.approx(0.1 * 0.9**s)) for s in range(8)]
    # ... while the agent's scale applies inside the step: the effective LR is ganno/lr/<layer>
    assert [float(r["ganno/lr/net.0"]) for r in rows if r["ganno/lr/net.0"]] == pytest.approx(
        [0.1 * 0.9**4 * 2, 0.1 * 0.9**8 * 4])


class WeightsAndBiasesApart(TinyRegressor):
    """The weight-decay idiom: weights in one param group, biases in another (the first optionally named)."""

    def __init__(self, name=None):
        super().__init__(optimizer="adam")
        self.name = name

    def configure_optimizers(self):
        weights = [p for n, p in self.named_parameters() if n.endswith("weight")]
        biases = [p for n, p in self.named_parameters() if n.endswith("bias")]
        return torch.optim.AdamW([{"params": weights, "weight_decay": 0.01, **({"name": self.name} if self.name else {})},
                                  {"params": biases, "weight_decay": 0.0}], lr=0.01)


@pytest.mark.parametrize("name, first", [(None, "pg1"), ("decay", "decay")])
def test_learning_rate_monitor_keys_keep_the_users_group_names(tmp_path, name, first):
    logger = CSVLogger(tmp_path)
    model = WeightsAndBiasesApart(name)
    trainer(max_epochs=1, logger=logger, log_every_n_steps=1,
            callbacks=[LearningRateMonitor(), GANNOCallback(depth_agent(4))]).fit(model)
    assert {key for row in _logged(logger) for key, value in row.items() if value and key.startswith("lr-")} == {
        f"lr-AdamW/{first}/net.0", f"lr-AdamW/{first}/net.2", "lr-AdamW/pg2/net.0", "lr-AdamW/pg2/net.2"}
    assert [g.get("name") for g in model.trainer.optimizers[0].param_groups] == [name, None]


def test_lr_scheduler_keeps_working_under_the_scales():
    model = TinyRegressor(lr=0.1, scheduler="lambda")
    callback = GANNOCallback(depth_agent(4))
    trainer(max_epochs=1, callbacks=[callback]).fit(model)
    for step, lrs in enumerate(model.trainer.optimizers[0].seen_lrs):
        up, down = expected_scales(step, 4)
        assert lrs == pytest.approx([0.1 * 0.9**step * up, 0.1 * 0.9**step * down])


def test_gradient_accumulation_counts_optimizer_steps_and_true_losses():
    model = TinyRegressor()
    agent = RecordingAgent(depth_agent(2))
    callback = GANNOCallback(agent)
    trainer(max_epochs=1, accumulate_grad_batches=2, callbacks=[callback]).fit(model)
    assert len(model.trainer.optimizers[0].seen_lrs) == 4
    assert callback.schedule.steps == [0, 2, 4]
    # the second decision summarises batches 4..7 with their un-normalised losses
    expected = math.log(sum(model.losses[4:8]) / 4)
    smoothed_first = sum(model.losses[:4]) / 4
    smoothed = 0.9 * smoothed_first + 0.1 * math.exp(expected)
    log_loss = agent.observations[1][0, FEATURE_NAMES.index("log_loss")].item()
    assert log_loss == pytest.approx(math.log(smoothed), rel=1e-4)


def test_gradient_clipping_is_seen_by_the_observation():
    agent = RecordingAgent(depth_agent(2))
    trainer(max_epochs=1, gradient_clip_val=1e-4, callbacks=[GANNOCallback(agent)]).fit(TinyRegressor())
    grad_rms = FEATURE_NAMES.index("log_grad_rms")
    numel = torch.tensor([8 * 16 + 16, 16 + 1], dtype=torch.float32)
    for observation in agent.observations:
        # the total norm is clipped to 1e-4, so no layer's RMS can exceed 1e-4 / sqrt(numel)
        assert (observation[:, grad_rms] <= torch.log(1e-4 / numel.sqrt()) + 1e-4).all()


def test_bf16_mixed_precision():
    model = TinyRegressor(lr=0.05)
    agent = RecordingAgent(depth_agent(4))
    trainer(max_epochs=1, precision="bf16-mixed", callbacks=[GANNOCallback(agent)]).fit(model)
    for step, lrs in enumerate(model.trainer.optimizers[0].seen_lrs):
        up, down = expected_scales(step, 4)
        assert lrs == pytest.approx([0.05 * up, 0.05 * down])
    assert all(torch.isfinite(o).all() for o in agent.observations)


class _InfGradient(torch.autograd.Function):
    """Identity forward; an infinite gradient backward: a finite loss whose update a GradScaler skips."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


class InfGradientRegressor(TinyRegressor):
    """TinyRegressor whose gradients are infinite on the batches in `inf_batches`."""

    def __init__(self, inf_batches=(), **kwargs):
        super().__init__(**kwargs)
        self.inf_batches = set(inf_batches)

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self.net(x)
        if batch_idx in self.inf_batches:
            out = _InfGradient.apply(out)
        loss = torch.nn.functional.mse_loss(out.float(), y)
        self.losses.append(loss.item())
        return loss


class AppliedSteps(Callback):
    """The trainer's optimizer steps (0-based) on which the optimizer really updated."""

    def __init__(self):
        self.applied: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        seen = trainer.optimizers[0].seen_lrs  # RecordingSGD records only steps it ran
        if len(seen) > len(self.applied):
            self.applied.append(trainer.global_step - 1)


def check_decisions_follow_the_trainers_steps(model, callback, agent, applied, max_epochs=1):
    """Skipped steps count: decisions every 4 trainer steps, and every update sees its step's scales."""
    steps = max_epochs * STEPS_PER_EPOCH
    assert model.trainer.global_step == steps
    assert callback.schedule.steps == list(range(0, steps + 1, 4))
    assert len(agent.observations) == steps // 4
    assert all(torch.isfinite(o).all() for o in agent.observations)
    seen = model.trainer.optimizers[0].seen_lrs
    assert len(seen) == len(applied.applied)
    for step, lrs in zip(applied.applied, seen):
        up, down = expected_scales(step, 4)
        assert lrs == pytest.approx([0.05 * up, 0.05 * down])


def test_steps_a_grad_scaler_skips_count_toward_the_interval():
    # fp16 mixed precision on the CPU, with a real GradScaler: it skips the updates whose gradients
    # are infinite (batches 1, 2 and 7); the trainer still counts those steps, and so does the agent.
    from lightning.pytorch.plugins.precision import MixedPrecision

    model = InfGradientRegressor(inf_batches=(1, 2, 7), lr=0.05)
    agent, applied = RecordingAgent(depth_agent(4)), AppliedSteps()
    callback = GANNOCallback(agent)
    # a small initial scale: no other step overflows fp16
    precision = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=1.0))
    trainer(max_epochs=1, plugins=[precision], callbacks=[callback, applied]).fit(model)
    assert applied.applied == [0, 3, 4, 5, 6]
    check_decisions_follow_the_trainers_steps(model, callback, agent, applied)
    # the gradient sample due on the first interval's 2nd step (skipped, as was the 3rd) was taken on its 4th
    grad_rms = FEATURE_NAMES.index("log_grad_rms")
    assert (agent.observations[0][:, grad_rms] > -10).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="16-mixed needs a GPU")
def test_fp16_mixed_precision_on_gpu():
    # GradScaler starts at 2**16, so it usually skips the first update(s) while it calibrates;
    # the decisions still fall every 4 trainer steps, skipped or not.
    model = TinyRegressor(lr=0.05)
    agent, applied = RecordingAgent(depth_agent(4)), AppliedSteps()
    callback = GANNOCallback(agent)
    trainer(accelerator="gpu", max_epochs=1, precision="16-mixed", callbacks=[callback, applied]).fit(model)
    check_decisions_follow_the_trainers_steps(model, callback, agent, applied)


def test_validation_loss_reaches_the_observation():
    agent = RecordingAgent(depth_agent(4))
    trainer(max_epochs=2, callbacks=[GANNOCallback(agent)], num_sanity_val_steps=0).fit(ValidatedRegressor())
    has_val = FEATURE_NAMES.index("has_val_loss")
    assert [o[0, has_val].item() for o in agent.observations] == [0.0, 0.0, 1.0, 1.0]


# -- outputs ------------------------------------------------------------------------------------
def test_start_up_line_comes_on_its_own_line_before_the_sanity_check(capsys):
    # Lightning's log lines and the progress bar in one stream, in the order they were written.
    handler = logging.StreamHandler(sys.stdout)
    logging.getLogger("lightning.pytorch").addHandler(handler)
    try:
        trainer(max_epochs=1, enable_progress_bar=True, callbacks=[GANNOCallback(depth_agent(4))]).fit(
            ValidatedRegressor())
    finally:
        logging.getLogger("lightning.pytorch").removeHandler(handler)
    out = capsys.readouterr().out
    start_up = "GANNOCallback controls 2 layers: LayerPartition(net.0:linear, net.2:linear)\n"
    assert start_up in out.split("Sanity Checking")[0]
    # a captured log that drops the bar's carriage returns still shows it on a line of its own
    assert f"\n{start_up}" in out.replace("\r", "")


def test_schedule_is_written_as_csv_and_png(tmp_path):
    callback = GANNOCallback(depth_agent(4), save_dir=tmp_path / "out")
    trainer(max_epochs=1, callbacks=[callback]).fit(TinyRegressor())
    with open(tmp_path / "out" / "ganno_schedule.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["step"]), r["layer"]) for r in rows[:4]] == [(0, "net.0"), (0, "net.2"), (4, "net.0"), (4, "net.2")]
    assert float(rows[2]["lr"]) == pytest.approx(0.1)
    assert (tmp_path / "out" / "ganno_schedule.png").stat().st_size > 1000


def test_metrics_reach_every_logger(tmp_path):
    csv_logger = CSVLogger(tmp_path, name="csv")
    wandb_logger = WandbLogger(project="ganno-test", save_dir=str(tmp_path), offline=True)
    callback = GANNOCallback(depth_agent(4))
    trainer(max_epochs=1, logger=[csv_logger, wandb_logger], callbacks=[callback]).fit(TinyRegressor())
    with open(f"{csv_logger.log_dir}/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("ganno/lr/net.0")]
    assert [float(r["ganno/lr/net.0"]) for r in rows] == pytest.approx([0.1, 0.2])
    assert wandb_logger.experiment.summary["ganno/scale/net.2"] == pytest.approx(0.25)
    wandb_logger.experiment.finish()
    run_dir = glob.glob(f"{tmp_path}/**/offline-run-*", recursive=True)[0]
    assert glob.glob(f"{run_dir}/files/media/table/ganno/schedule_*.table.json")
    assert glob.glob(f"{run_dir}/files/media/images/ganno/schedule_plot_*.png")


# -- checkpoints ---------------------------------------------------------------------------------
def _fit(max_epochs, ckpt_dir, resume=None, agent=None):
    L.seed_everything(7)
    model = ValidatedRegressor(optimizer="adam", lr=0.01, scheduler="lambda")
    callback = GANNOCallback(agent or depth_agent(4, first=5, last=1))
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_epochs=1, save_top_k=-1)
    trainer(max_epochs=max_epochs, enable_checkpointing=True, callbacks=[callback, checkpoint],
            num_sanity_val_steps=0).fit(model, ckpt_path=resume)
    return model, callback


@pytest.mark.parametrize("fused", [False, True], ids=["default", "fused-adam"])
def test_resume_continues_the_same_schedule(tmp_path, monkeypatch, fused):
    if fused:  # as on a GPU: the split Adam groups run torch's fused kernel
        monkeypatch.setattr(lr_control, "FUSED_DEVICE_TYPES", ("cpu",))
    straight_model, straight = _fit(4, tmp_path / "a")
    _, first_half = _fit(2, tmp_path / "b")
    resumed_model, resumed = _fit(4, tmp_path / "c", resume=tmp_path / "b" / "last.ckpt")

    assert resumed.schedule.steps == straight.schedule.steps
    torch.testing.assert_close(torch.tensor(resumed.schedule.lrs), torch.tensor(straight.schedule.lrs))
    assert resumed.schedule.actions == straight.schedule.actions
    for a, b in zip(straight_model.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(a, b)
    saved = torch.load(tmp_path / "b" / "last.ckpt", weights_only=False)["optimizer_states"][0]
    assert [(g["foreach"], g["fused"]) for g in saved["param_groups"]] == [(None, None)]  # the user's choice
    assert all(s["step"].device.type == "cpu" for s in saved["state"].values())


def test_resume_mid_interval_restores_the_observation_exactly(tmp_path):
    """Interval 3 and 8 steps per epoch: the checkpoint falls inside an interval, with losses,
    gradient sums, the weight sketch and the validation loss accumulated but not yet used."""
    straight_agent, resumed_agent = RecordingAgent(depth_agent(3)), RecordingAgent(depth_agent(3))
    _fit(4, tmp_path / "a", agent=straight_agent)
    _fit(2, tmp_path / "b", agent=RecordingAgent(depth_agent(3)))
    _fit(4, tmp_path / "c", resume=tmp_path / "b" / "last.ckpt", agent=resumed_agent)
    after_resume = straight_agent.observations[-len(resumed_agent.observations):]
    assert len(resumed_agent.observations) == 5  # decisions at steps 18, 21, 24, 27, 30
    for ours, theirs in zip(resumed_agent.observations, after_resume):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_progress_uses_the_real_length_of_the_fit():
    agent = RecordingAgent(depth_agent(4))
    trainer(max_epochs=1, max_steps=1000, callbacks=[GANNOCallback(agent)]).fit(TinyRegressor())
    progress = FEATURE_NAMES.index("progress")
    assert [o[0, progress].item() for o in agent.observations] == [0.5, 1.0]  # 8 steps, not 1000


def test_checkpoint_keeps_the_users_param_group_layout(tmp_path):
    _fit(1, tmp_path)
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    groups = checkpoint["optimizer_states"][0]["param_groups"]
    assert len(groups) == 1 and groups[0]["params"] == [0, 1, 2, 3]
    assert "ganno_agent" not in groups[0] and "name" not in groups[0]
    assert len(checkpoint["lr_schedulers"][0]["base_lrs"]) == 1
    # ... so a Trainer without the callback resumes from it too
    model = ValidatedRegressor(optimizer="adam", lr=0.01, scheduler="lambda")
    trainer(max_epochs=2, num_sanity_val_steps=0).fit(model, ckpt_path=tmp_path / "last.ckpt")
    assert model.trainer.global_step == 2 * STEPS_PER_EPOCH


def test_recurrent_agent_resumes_with_its_memory(tmp_path):
    def recurrent():
        return GANNOAgent.create(hidden_sizes=(16,), recurrent_size=8, interval=4, seed=3)

    _, straight = _fit(4, tmp_path / "a", agent=recurrent())
    halfway = tmp_path / "a" / f"epoch=1-step={2 * STEPS_PER_EPOCH}.ckpt"  # written by the straight run itself
    _, resumed = _fit(4, tmp_path / "c", resume=halfway, agent=recurrent())
    assert resumed.schedule.actions == straight.schedule.actions
    torch.testing.assert_close(resumed.state_dict()["policy_state"], straight.state_dict()["policy_state"],
                               rtol=0, atol=0)


def test_resuming_with_another_agent_keeps_the_scales_but_not_the_memory(tmp_path):
    def recurrent(seed):
        return GANNOAgent.create(hidden_sizes=(16,), recurrent_size=8, interval=4, seed=seed)

    _, first = _fit(2, tmp_path / "a", agent=recurrent(3))
    other = recurrent(4)  # same shapes, other weights: its memory would be read as nonsense
    assert first.state_dict()["agent"] == recurrent(3).fingerprint() != other.fingerprint()
    checkpoint = tmp_path / "a" / "last.ckpt"
    with pytest.warns(UserWarning, match="written with another agent.*keeping its LR scales"):
        _, resumed = _fit(3, tmp_path / "b", resume=checkpoint, agent=other)
    done = len(first.schedule.scales)  # the schedule, and so the LR scales reached, carry on
    assert resumed.schedule.scales[:done] == first.schedule.scales and len(resumed.schedule.scales) > done
    assert resumed.state_dict()["agent"] == other.fingerprint()


# -- #18 options: early decisions with a step-0 probe, the LR prior -----------------------------
@pytest.mark.parametrize("decision_steps", [[5, 3], "early", [0.5]])
def test_bad_decision_steps_are_rejected(decision_steps):
    with pytest.raises(ValueError, match=r"`decision_steps` must be 'none', 'front_loaded' or a list of increasing "
                                         r"ints >= 0 \(e.g. \[0, 5, 12\]\), got"):
        GANNOCallback(depth_agent(), decision_steps=decision_steps)


def test_bad_prior_is_rejected():
    with pytest.raises(ValueError, match=r"`prior` must be one of \['none', 'cosine', 'warmup_cosine'\], got 'linear'"):
        GANNOCallback(depth_agent(), prior="linear")


def test_the_options_default_to_the_agents_own():
    agent = identity_agent(decision_steps="front_loaded", prior="cosine")
    callback = GANNOCallback(agent)
    assert (callback.decision_steps, callback.prior) == ((0, 2), "cosine")
    callback = GANNOCallback(agent, interval=10, decision_steps="front_loaded", prior="none")
    assert (callback.decision_steps, callback.prior) == ((0, 2, 5), "none")
    assert (GANNOCallback(depth_agent()).decision_steps, GANNOCallback(depth_agent()).prior) == ((), "none")
    long_only = identity_agent(prior="cosine", prior_above=600)
    assert GANNOCallback(long_only).prior_above == 600  # the agent's own prior, for the fits it was meant for
    assert GANNOCallback(long_only, prior="cosine").prior_above == 600  # restating the agent's prior keeps its bound
    assert GANNOCallback(long_only, prior="warmup_cosine").prior_above == 0  # another prior you name: in every fit
    assert GANNOCallback(long_only, prior_above=20).prior_above == 20
    with pytest.raises(ValueError, match=r"`prior_above` must be an int >= 0 .*got -5"):
        GANNOCallback(long_only, prior_above=-5)


@pytest.mark.parametrize("epochs, anneals", [(2, False), (3, True)])
def test_a_prior_for_long_fits_acts_only_in_fits_longer_than_its_bound(epochs, anneals, recwarn):
    from ganno_lightning.lr_schedules import SCHEDULES

    model = TinyRegressor(lr=0.05)
    callback = GANNOCallback(identity_agent(4, prior="cosine", prior_above=2 * STEPS_PER_EPOCH))
    trainer(max_epochs=epochs, callbacks=[callback]).fit(model)
    total = epochs * STEPS_PER_EPOCH
    curve = [SCHEDULES["cosine"](s, total) if anneals else 1.0 for s in range(total)]
    assert model.trainer.optimizers[0].seen_lrs == [pytest.approx([0.05 * c] * 2) for c in curve]
    assert not [w for w in recwarn if "prior" in str(w.message)]  # a short fit is no reason to warn


def _noisy_fit(decision_steps, **kwargs):
    L.seed_everything(3)
    model = NoisyRegressor(optimizer="adam", lr=0.01)
    callback = GANNOCallback(identity_agent(4), decision_steps=decision_steps, **kwargs)
    trainer(max_epochs=2, callbacks=[callback]).fit(model)
    return model, callback


def test_a_step_0_decision_probes_without_changing_the_run():
    plain_model, plain = _noisy_fit("none")
    probed_model, probed = _noisy_fit([0])
    assert probed.schedule.steps == plain.schedule.steps == [0, 4, 8, 12, 16]  # one row per step
    # the probe ran training_step once more (its one visible side effect), and changed nothing after it:
    # shuffled batches, dropout draws, BatchNorm statistics, logged metrics and the weights are the same
    assert len(probed_model.losses) == len(plain_model.losses) + 1
    assert probed_model.losses[1:] == plain_model.losses
    for a, b in zip(plain_model.state_dict().values(), probed_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for key in ("train_loss_step", "train_loss_epoch"):
        assert probed_model.trainer.callback_metrics[key] == plain_model.trainer.callback_metrics[key]


def test_front_loaded_decisions_move_the_lrs_early():
    callback = GANNOCallback(depth_agent(4), decision_steps=[0, 1, 2], exploration="mode")
    model = TinyRegressor(lr=0.05)
    trainer(max_epochs=1, callbacks=[callback]).fit(model)
    assert callback.schedule.steps == [0, 1, 2, 4, 8]
    seen = model.trainer.optimizers[0].seen_lrs
    assert seen[0] == pytest.approx([0.1, 0.025])  # the first update already runs at the agent's LRs
    assert seen[-1] == pytest.approx([0.05 * 2**4, 0.05 * 0.5**4])  # decided at 0, 1, 2 and 4


@pytest.mark.parametrize("prior", ["cosine", "warmup_cosine"])
def test_the_prior_sets_the_lr_under_an_identity_agent(prior):
    from ganno_lightning.lr_schedules import SCHEDULES

    model = TinyRegressor(lr=0.05)
    callback = GANNOCallback(identity_agent(4), prior=prior)
    trainer(max_epochs=2, callbacks=[callback]).fit(model)
    optimizer = model.trainer.optimizers[0]
    total = 2 * STEPS_PER_EPOCH
    assert optimizer.seen_lrs == [pytest.approx([0.05 * SCHEDULES[prior](s, total)] * 2) for s in range(total)]
    assert optimizer.param_groups[0]["lr"] == 0.05  # the user's LR, untouched outside the steps
    assert callback.schedule.lrs_of("net.0")[1] == pytest.approx(0.05 * SCHEDULES[prior](4, total))


def test_with_a_scheduler_of_its_own_the_prior_gives_way():
    model = TinyRegressor(lr=0.05, scheduler="epoch")
    callback = GANNOCallback(identity_agent(4), prior="cosine")
    with pytest.warns(UserWarning, match=r"`prior='cosine'` is not applied, the optimizer has an LR scheduler of its "
                                         r"own.*around your scheduler's LR"):
        trainer(max_epochs=2, callbacks=[callback]).fit(model)
    assert model.trainer.optimizers[0].seen_lrs == [pytest.approx([0.05 * 0.5 ** (s // STEPS_PER_EPOCH)] * 2)
                                                    for s in range(2 * STEPS_PER_EPOCH)]


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        data = regression_data()
        return iter([data[i] for i in range(len(data))])


class StreamedTiny(TinyRegressor):
    def train_dataloader(self):
        return torch.utils.data.DataLoader(_Stream(), batch_size=self.batch_size)


def test_with_an_unknown_length_the_prior_falls_back_to_constant_with_one_warning():
    model = StreamedTiny(lr=0.05)
    callback = GANNOCallback(identity_agent(4), prior="cosine")
    with pytest.warns(UserWarning, match=r"`prior='cosine'` is not applied, the run length is unknown.*constant LR. "
                                         r"Set `max_steps`") as record:
        trainer(max_epochs=2, callbacks=[callback]).fit(model)
    assert sum("is not applied" in str(w.message) for w in record) == 1
    assert model.trainer.optimizers[0].seen_lrs == [pytest.approx([0.05, 0.05])] * (2 * STEPS_PER_EPOCH)


@pytest.mark.parametrize("module, last_lr", [(lambda: TinyRegressor(lr=0.05, scheduler="epoch"), 0.025),
                                             (lambda: StreamedTiny(lr=0.05), 0.05)])
def test_an_agents_own_prior_for_long_fits_gives_way_with_a_note_not_a_warning(module, last_lr, recwarn, caplog):
    callback = GANNOCallback(identity_agent(4, prior="cosine", prior_above=2))  # 16 steps: a long fit for it
    model = module()
    with caplog.at_level(logging.INFO):
        trainer(max_epochs=2, callbacks=[callback]).fit(model)
    assert not [w for w in recwarn if "is not applied" in str(w.message)]  # it acts where it was trained
    assert "`prior='cosine'` is not applied" in caplog.text
    assert model.trainer.optimizers[0].seen_lrs[-1] == pytest.approx([last_lr] * 2)  # the scheduler's, or constant
    named = GANNOCallback(identity_agent(4, prior="cosine", prior_above=2), prior="cosine", prior_above=2)
    with pytest.warns(UserWarning, match=r"`prior='cosine'` is not applied"):  # what you name is warned about
        trainer(max_epochs=2, callbacks=[named]).fit(module())


def _options_fit(max_epochs, ckpt_dir, resume=None):
    L.seed_everything(7)
    model = ValidatedRegressor(optimizer="adam", lr=0.01)  # no scheduler: the prior applies
    agent = GANNOAgent.create(hidden_sizes=(8,), interval=3, action_multipliers=WIDE, seed=5,
                              decision_steps=[0, 1], prior="warmup_cosine")
    callback = GANNOCallback(agent)
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_epochs=1, save_top_k=-1)
    trainer(max_epochs=max_epochs, enable_checkpointing=True, callbacks=[callback, checkpoint],
            num_sanity_val_steps=0).fit(model, ckpt_path=resume)
    return model, callback


def test_resume_with_the_options_on_continues_the_same_schedule(tmp_path):
    straight_model, straight = _options_fit(4, tmp_path / "a")
    # Resumed from the straight run's own checkpoint after 16 steps, mid-interval (decisions at 0, 1, 3,
    # 6, ..., 15, 18): a fit of 2 epochs would be another run, with a prior over 16 steps, not 32.
    halfway = tmp_path / "a" / f"epoch=1-step={2 * STEPS_PER_EPOCH}.ckpt"
    resumed_model, resumed = _options_fit(4, tmp_path / "c", resume=halfway)
    assert straight.schedule.steps[:3] == [0, 1, 3]
    assert resumed.schedule.steps == straight.schedule.steps
    torch.testing.assert_close(torch.tensor(resumed.schedule.lrs), torch.tensor(straight.schedule.lrs))
    for a, b in zip(straight_model.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(a, b)


def test_recover_on_spike_rolls_a_blown_up_run_back_and_cuts_its_lrs_until_it_trains():
    def fit(**options):
        model = TinyRegressor(lr=5.0)  # SGD with momentum: the loss explodes within the first interval
        callback = GANNOCallback(identity_agent(4), **options)
        trainer(max_epochs=6, callbacks=[callback]).fit(model)
        return model, callback

    diverged, _ = fit()
    assert not math.isfinite(diverged.losses[-1])
    with pytest.warns(UserWarning, match=r"spiked to .*the weights and optimizer state of the last decision are "
                                         r"back and every LR is cut by x0.5") as record:
        model, callback = fit(recover_on_spike=True)
    assert sum("spiked" in str(w.message) for w in record) == 1  # once per fit
    assert math.isfinite(model.losses[-1]) and model.losses[-1] < model.losses[0]
    lrs = callback.schedule.lrs_of("net.0")
    assert lrs[0] == 5.0 and lrs[-1] <= 5.0 * 0.5 ** 4  # cut at every rollback, by x0.5 each
    floor = 5.0 * 1e-2  # the lowest scale
    assert all(b in (a, a * 0.5, floor) for a, b in zip(lrs, lrs[1:]))  # the identity agent never moves them


class OffsetRegressor(TinyRegressor):
    """The MSE minus 5: the same gradients, a loss below zero (as a Gaussian NLL or an ELBO can be)."""

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) - 5.0


def test_a_negative_loss_that_keeps_falling_is_never_rolled_back():
    callback = GANNOCallback(identity_agent(4), recover_on_spike=True)
    model = OffsetRegressor(optimizer="adam", lr=0.01)
    trainer(max_epochs=3, callbacks=[callback]).fit(model)
    assert max(model.losses) < 5.0 and model.losses[-1] < model.losses[0]  # every loss seen was below zero, falling
    assert callback.rollbacks == 0
    assert set(callback.schedule.lrs_of("net.0")) == {0.01}  # no LR was cut


def test_a_pickled_callback_keeps_its_random_stream():
    callback = GANNOCallback(identity_agent(4), seed=3)
    callback._generator.manual_seed(11)
    clone = pickle.loads(pickle.dumps(callback))
    assert torch.equal(torch.rand(4, generator=clone._generator), torch.rand(4, generator=callback._generator))


def test_recover_on_spike_settings_are_checked():
    with pytest.raises(ValueError, match=r"`spike_lr_cut` must be in \(0, 1\)"):
        GANNOCallback(identity_agent(4), recover_on_spike=True, spike_lr_cut=0.0)
    with pytest.raises(ValueError, match=r"`recover_on_spike` must be True, False or None \(the agent's own\), got 'yes'"):
        GANNOCallback(identity_agent(4), recover_on_spike="yes")
    with pytest.raises(ValueError, match=r"`rollback_memory` must be one of \['host', 'device'\] .*got 'gpu'"):
        GANNOCallback(identity_agent(4), recover_on_spike=True, rollback_memory="gpu")


def test_an_agents_own_spike_rule_is_the_default_and_each_argument_overrides_its_part():
    agent = identity_agent(4, recover_on_spike={"spike_factor": 5.0})
    own = GANNOCallback(agent)
    assert (own.recover_on_spike, own.spike_factor, own.spike_lr_cut) == (True, 5.0, 0.5)
    assert not GANNOCallback(agent, recover_on_spike=False).recover_on_spike
    assert GANNOCallback(agent, spike_factor=4.0).spike_factor == 4.0
    plain = GANNOCallback(identity_agent(4))  # no rule recorded: off, with the defaults when turned on
    assert (plain.recover_on_spike, plain.spike_factor, plain.spike_lr_cut) == (False, 3.0, 0.5)
    model = TinyRegressor(lr=5.0)  # explodes within the first interval, as above
    with pytest.warns(UserWarning, match=r"spiked to"):
        trainer(max_epochs=2, callbacks=[own]).fit(model)
    assert own.schedule.lrs_of("net.0")[:4] == [5.0, 2.5, 1.25, 0.625] and math.isfinite(model.losses[-1])
    assert own.rollbacks == 3  # one per cut
    with pytest.warns(UserWarning, match=r"`spike_factor` and `spike_lr_cut` act only with the rollback"):
        GANNOCallback(identity_agent(4), spike_factor=5.0)
