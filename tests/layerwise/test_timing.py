"""When agents decide (decision steps, the step-0 probe) and the LR they act around (the prior), in the controller."""

import math

import pytest
import torch
from torch import nn

from ganno_lightning import FEATURE_NAMES
from ganno_lightning.layerwise.controller import LayerwiseController
from ganno_lightning.layerwise.decisions import DecisionSteps, resolve_decision_steps
from ganno_lightning.layerwise.features import LR_PROBE_FEATURES, LR_PROBE_MULTIPLIERS
from ganno_lightning.layerwise.prior import LRPrior, check_prior
from ganno_lightning.lr_schedules import cosine, warmup_cosine

MULTIPLIERS = [0.5, 1.0, 2.0]


# -- decision steps ---------------------------------------------------------------------------
@pytest.mark.parametrize("spec, expected", [
    (None, ()), ("none", ()), ([], ()), ("front_loaded", (0, 5, 12)), ([0, 5, 12, 25], (0, 5, 12, 25)), ((3,), (3,)),
])
def test_decision_steps_resolve(spec, expected):
    assert resolve_decision_steps(spec, 25) == expected


def test_front_loaded_steps_follow_the_interval():
    assert resolve_decision_steps("front_loaded", 10) == (0, 2, 5)
    assert resolve_decision_steps("front_loaded", 4) == (0, 2)  # 4 // 5 is 0: one step 0, not two
    assert resolve_decision_steps("front_loaded", 1) == (0,)


@pytest.mark.parametrize("spec", ["early", [5, 3], [0, 0], [-1, 4], [1.5], [True], 7])
def test_bad_decision_steps_are_rejected(spec):
    with pytest.raises(ValueError, match=r"`decision_steps` must be 'none', 'front_loaded' or a list of increasing"):
        resolve_decision_steps(spec, 25)


def test_decision_steps_come_early_then_every_interval():
    steps, decided = DecisionSteps(25, (0, 5, 12)), []
    step = steps.first
    while step <= 100:
        decided.append(step)
        step = steps.after(step)
    assert decided == [0, 5, 12, 25, 50, 75, 100]
    assert [DecisionSteps(25, (3, 40)).after(s) for s in (0, 3, 25, 40)] == [3, 25, 40, 50]  # 25 is kept
    default = DecisionSteps(25)
    assert (default.first, default.after(25), default.after(30)) == (25, 50, 50)


# -- the prior --------------------------------------------------------------------------------
def test_prior_follows_the_baseline_curves():
    assert [LRPrior("cosine", 10).factor(s) for s in range(10)] == [cosine(s, 10) for s in range(10)]
    assert [LRPrior("warmup_cosine", 40).factor(s) for s in range(40)] == [warmup_cosine(s, 40) for s in range(40)]
    assert LRPrior("none", 10).factor(3) == 1.0 and not LRPrior("none", 10).active


def test_prior_gives_way_to_a_scheduler_and_to_an_unknown_length():
    with_scheduler = LRPrior("cosine", 10, has_scheduler=True)
    unknown = LRPrior("warmup_cosine", None)
    assert not with_scheduler.active and "scheduler of its own" in with_scheduler.inactive_reason
    assert not unknown.active and unknown.inactive_reason == "the run length is unknown"
    assert with_scheduler.factor(5) == unknown.factor(5) == 1.0
    assert LRPrior("none", None).inactive_reason is None  # nothing asked for, nothing to warn about


@pytest.mark.parametrize("prior", ["linear", None, 1])
def test_bad_prior_is_rejected(prior):
    with pytest.raises(ValueError, match=r"`prior` must be one of \['none', 'cosine', 'warmup_cosine'\]"):
        check_prior(prior)


# -- the controller -----------------------------------------------------------------------------
class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x)


def _run(steps=12, interval=4, probe=False, prior="none", total_steps=12, scheduler=False, **kwargs):
    """Train Noisy with every decision keeping the scales; returns (controller, losses, model)."""
    torch.manual_seed(0)
    model = Noisy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedulers = [torch.optim.lr_scheduler.StepLR(opt, 4, 0.5)] if scheduler else []
    data = torch.randn(steps, 16, 3, generator=torch.Generator().manual_seed(1))
    control = LayerwiseController(model, opt, action_multipliers=MULTIPLIERS, interval=interval,
                                  decision_steps=[0] if probe else (), prior=prior, total_steps=total_steps,
                                  lr_schedulers=schedulers, **kwargs)
    losses = []

    def loss_on(x):
        return model(x).pow(2).mean()

    if control.probe_due:
        control.probe(lambda: loss_on(data[0]))
        control.apply([1] * control.num_agents)
    for x in data:
        loss = loss_on(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        for s in schedulers:
            s.step()
        control.record_loss(loss.detach())
        losses.append(loss.item())
        if control.decision_due:
            control.observe()
            control.apply([1] * control.num_agents)
    return control, losses, model


def test_a_probe_observes_before_any_update_and_perturbs_nothing():
    plain, plain_losses, plain_model = _run()
    probed, probed_losses, probed_model = _run(probe=True)
    # same losses, weights and BatchNorm statistics: dropout draws, gradients and buffers were put back
    assert probed_losses == plain_losses
    for a, b in zip(plain_model.state_dict().values(), probed_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert probed.schedule.steps == plain.schedule.steps == [0, 4, 8, 12]  # one row per step


def test_the_probe_observation_has_gradients_and_the_initial_loss():
    torch.manual_seed(0)
    model = Noisy()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    control = LayerwiseController(model, opt, action_multipliers=MULTIPLIERS, interval=4, decision_steps=(0, 2))
    assert control.decision_due and control.probe_due and control.steps_to_decision == 0
    x = torch.randn(16, 3)

    control.probe(lambda: model(x).pow(2).mean())
    assert all(p.grad is None for p in model.parameters())  # given back as they were
    observation = control.observe()
    grad = observation[:, FEATURE_NAMES.index("log_grad_rms")]
    assert torch.isfinite(observation).all() and (grad > -20).all()  # measured, not the log floor
    assert control.last_interval_loss > 0 and math.isfinite(control.last_interval_loss)
    control.apply([2] * control.num_agents)
    assert control.step == 0 and control.next_decision == 2 and not control.decision_due
    assert control.lr.scales == [2.0] * control.num_agents


def test_short_early_intervals_sample_their_own_gradient_steps():
    torch.manual_seed(0)
    model = Noisy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    control = LayerwiseController(model, opt, action_multipliers=MULTIPLIERS, interval=8, decision_steps=(3,),
                                  grad_samples=2)
    assert control.observer.interval_length == 3 and control.observer._sample_steps == {2, 3}
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 3)).pow(2).mean().backward()
        opt.step()
    assert control.decision_due and control.observer._grad_count == 2
    control.observe()
    control.apply([1] * control.num_agents)
    assert control.next_decision == 8 and control.observer._sample_steps == {3, 5}


@pytest.mark.parametrize("prior", ["cosine", "warmup_cosine"])
def test_the_prior_multiplies_every_lr_under_the_scales(prior):
    control, _, model = _run(prior=prior, total_steps=12)
    curve = cosine if prior == "cosine" else warmup_cosine
    assert control.prior.active
    # the optimizer stepped with lr x prior(step) x scale; outside the step it holds the user's LR
    opt = control.lr.optimizer
    assert all(g["lr"] == 0.1 for g in opt.param_groups)
    assert control.schedule.lrs[1] == pytest.approx([0.1 * curve(4, 12)] * control.num_agents)


def test_the_prior_reaches_the_optimizer_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    control = LayerwiseController(model, opt, action_multipliers=MULTIPLIERS, interval=2, prior="cosine",
                                  total_steps=4)
    for step in range(4):
        x = torch.randn(3, 2)
        opt.zero_grad()
        model(x).sum().backward()
        # the LR the update will use, read inside the step
        handle = opt.register_step_pre_hook(lambda o, a, k: seen.append([g["lr"] for g in o.param_groups]))
        opt.step()
        handle.remove()
        control.record_loss(1.0)
        if control.decision_due:
            control.observe()
            control.apply([2, 1])
    # hooks run in registration order: ours (the controller's) first, so the LRs are already scaled
    expected = [[0.1 * cosine(s, 4) * a, 0.1 * cosine(s, 4) * b] for s, (a, b) in
                enumerate([(1, 1), (1, 1), (2, 1), (2, 1)])]
    assert seen == [pytest.approx(e) for e in expected]


def test_a_user_scheduler_stays_the_prior():
    control, _, _ = _run(prior="cosine", scheduler=True)
    assert not control.prior.active and control.lr.prior_factor == 1.0
    assert control.schedule.lrs[1] == pytest.approx([0.05] * control.num_agents)  # StepLR halved at step 4


def test_an_unknown_length_leaves_the_lr_constant():
    control, _, _ = _run(prior="cosine", total_steps=None)
    assert control.prior.inactive_reason == "the run length is unknown"
    assert control.schedule.lrs[-1] == pytest.approx([0.1] * control.num_agents)


def test_controller_state_restores_the_next_decision_and_the_prior():
    control, _, _ = _run(steps=6, interval=4, prior="cosine", total_steps=12)
    state = control.state_dict()
    assert state["next_decision"] == 8 and state["observer"]["interval_length"] == 4
    torch.manual_seed(0)
    model = Noisy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    other = LayerwiseController(model, opt, action_multipliers=MULTIPLIERS, interval=4, prior="cosine",
                                total_steps=12)
    other.load_state_dict(state)
    assert other.next_decision == 8 and other.lr.prior_factor == cosine(6, 12)
    legacy = {k: v for k, v in state.items() if k != "next_decision"}  # a checkpoint of an earlier release
    other.load_state_dict(legacy)
    assert other.next_decision == 8


# -- the LR probe: the first update tried at 1/8x, 1x and 8x ------------------------------------
def test_an_lr_probe_leaves_the_run_as_it_was():
    plain, plain_losses, plain_model = _run()
    probed, probed_losses, probed_model = _run(probe=True, feature_names="lr_probe")
    assert probed.observer.measures_lr_probe
    # the trial update's weights and SGD momentum buffers were undone: the same training to the last bit
    assert probed_losses == plain_losses
    for a, b in zip(plain_model.state_dict().values(), probed_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    plain_state, probed_state = plain.lr.optimizer.state_dict(), probed.lr.optimizer.state_dict()
    assert plain_state["param_groups"] == probed_state["param_groups"]
    for a, b in zip(plain_state["state"].values(), probed_state["state"].values()):
        torch.testing.assert_close(a["momentum_buffer"], b["momentum_buffer"], rtol=0, atol=0)
    assert probed.schedule.steps == plain.schedule.steps == [0, 4, 8, 12]


def test_the_lr_probe_measures_the_loss_after_the_scaled_first_update():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    lr, params = 0.05, dict(model.named_parameters())

    def loss_of(weights=None):
        out = torch.func.functional_call(model, weights, (x,)) if weights else model(x)
        return (out - y).pow(2).mean()

    before = loss_of()
    grads = dict(zip(params, torch.autograd.grad(before, list(params.values()))))
    with torch.no_grad():  # SGD's first update is -lr x gradient
        expected = [(loss_of({k: p - m * lr * grads[k] for k, p in params.items()}) - before).item() / before.item()
                    for m in LR_PROBE_MULTIPLIERS]
    weights = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    control = LayerwiseController(model, opt, action_multipliers=MULTIPLIERS, interval=2, decision_steps=(0,),
                                  feature_names="lr_probe")
    control.probe(loss_of)
    columns = [control.observer.feature_names.index(name) for name in LR_PROBE_FEATURES]
    seen = control.observe()[:, columns]
    assert expected[0] < 0 and expected[0] > expected[1]  # the larger step is the better one here
    torch.testing.assert_close(seen, torch.tensor([expected] * 2), rtol=1e-4, atol=1e-6)
    # nothing of the trial update is left: weights, momentum buffers, gradients, the step count
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert not opt.state and all(p.grad is None for p in model.parameters()) and control.step == 0
    # kept for the whole run, and through a checkpoint of the controller's state
    control.apply([1, 1])
    for _ in range(2):
        opt.zero_grad()
        loss = loss_of()
        loss.backward()
        opt.step()
        control.record_loss(loss.detach())
    state = control.state_dict()
    assert torch.equal(control.observe()[:, columns], seen)
    resumed = LayerwiseController(model, torch.optim.SGD(model.parameters(), lr=lr), action_multipliers=MULTIPLIERS,
                                  interval=2, feature_names="lr_probe")
    resumed.load_state_dict(state)
    assert torch.equal(resumed.observe()[:, columns], seen)


def test_the_lr_probe_is_bounded_and_absent_without_a_step_0_decision():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    x = torch.randn(16, 3)
    opt = torch.optim.SGD(model.parameters(), lr=5.0)  # 8x this step overshoots by orders of magnitude
    control = LayerwiseController(model, opt, action_multipliers=MULTIPLIERS, interval=2, decision_steps=(0,),
                                  feature_names="lr_probe")
    control.probe(lambda: model(x).pow(2).mean())
    probe = control.observe()[0, [control.observer.feature_names.index(n) for n in LR_PROBE_FEATURES]]
    assert probe[-1] == 3.0 and (probe >= -1).all() and (probe <= 3).all()
    without = LayerwiseController(model, torch.optim.SGD(model.parameters(), lr=5.0), action_multipliers=MULTIPLIERS,
                                  interval=1, feature_names="lr_probe")
    opt = without.lr.optimizer
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()
    without.record_loss(1.0)
    assert without.observe()[:, -len(LR_PROBE_FEATURES):].eq(0).all()


def test_the_lr_probe_forwards_draw_the_probes_own_dropout():
    # a zero update (lr=0) leaves the weights where they were: with the same dropout draws every loss equals L_0
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Dropout(0.5), nn.Linear(16, 1))
    x = torch.randn(32, 3)
    control = LayerwiseController(model, torch.optim.SGD(model.parameters(), lr=0.0), action_multipliers=MULTIPLIERS,
                                  interval=2, decision_steps=(0,), feature_names="lr_probe")
    control.probe(lambda: model(x).pow(2).mean())
    losses = control.observer._lr_probe
    assert losses[0] > 0 and torch.equal(losses, losses[:1].expand(4))


@pytest.mark.parametrize("optimizer", ["adam", "adamw_foreach"])
def test_the_lr_probe_puts_back_an_adam_state_it_found(optimizer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    opt = (torch.optim.Adam(model.parameters(), lr=0.01) if optimizer == "adam"
           else torch.optim.AdamW(model.parameters(), lr=0.01, foreach=True))
    for _ in range(2):  # a state of its own before the controller comes (a run resumed without GANNO state)
        opt.zero_grad()
        model(torch.randn(8, 3)).pow(2).mean().backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    weights = [p.detach().clone() for p in model.parameters()]
    state = {k: {n: v.clone() if torch.is_tensor(v) else v for n, v in s.items()} for k, s in opt.state.items()}
    control = LayerwiseController(model, opt, action_multipliers=MULTIPLIERS, interval=2, decision_steps=(0,),
                                  feature_names="lr_probe")
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]  # as the controller split them
    control.probe(lambda: model(torch.ones(8, 3)).pow(2).mean())
    assert control.observer._lr_probe[1:].ne(control.observer._lr_probe[0]).all()  # the trial update moved the loss
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert groups == [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    for p, saved in state.items():
        assert opt.state[p].keys() == saved.keys() and all(torch.equal(opt.state[p][k], v) for k, v in saved.items())


def test_an_old_observer_state_loads_without_lr_probe_values():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    make = lambda: LayerwiseController(model, torch.optim.SGD(model.parameters(), lr=0.1),  # noqa: E731
                                       action_multipliers=MULTIPLIERS, interval=2, feature_names="lr_probe")
    state = make().state_dict()
    del state["observer"]["lr_probe"]  # as written before the LR probe existed
    resumed = make()
    resumed.load_state_dict(state)
    assert resumed.observer._lr_probe.eq(0).all()


def test_lr_probe_misuse_gets_clear_errors():
    model = nn.Linear(3, 1)
    control = LayerwiseController(model, torch.optim.LBFGS(model.parameters()), action_multipliers=MULTIPLIERS,
                                  interval=2, decision_steps=(0,), feature_names="lr_probe")
    x = torch.randn(4, 3)
    weights = model.weight.detach().clone()
    with pytest.raises(RuntimeError, match=r"LR probe's trial update failed.*without a closure \(not LBFGS\)"):
        control.probe(lambda: model(x).pow(2).mean())
    assert torch.equal(model.weight, weights) and model.weight.grad is None  # and everything was put back
    with pytest.raises(ValueError, match=r"`training_loss` must return the training loss with its graph"):
        control.probe(lambda: model(x).pow(2).mean().detach())
    with pytest.raises(ValueError, match=r"`decision_steps` must include step 0 for the LR probe features"):
        from ganno_lightning import GANNOAgent, GANNOCallback
        GANNOCallback(GANNOAgent.create(feature_names="lr_probe", decision_steps=[0, 5]), decision_steps=[5])
