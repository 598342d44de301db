import math

import pytest
import torch
from torch import nn

from ganno_lightning import FEATURE_NAMES, LayerObserver, LayerPartition
from ganno_lightning.layerwise.features import ALL_FEATURE_NAMES, FEATURE_CLIP, FEATURE_SETS

F = {name: i for i, name in enumerate(FEATURE_NAMES)}


def two_layers():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        model[1].weight.copy_(torch.tensor([[2.0, 2.0]]))
    return model


def observer_for(model, interval=2, **kwargs):
    return LayerObserver(LayerPartition.from_module(model), interval=interval, **kwargs)


def fake_step(model, observer, grads, delta=None):
    for p, g in zip(model.parameters(), grads):
        p.grad = None if g is None else g.clone()
    if delta is not None:
        with torch.no_grad():
            for p, d in zip(model.parameters(), delta):
                p.add_(d)
    observer.after_step()


def test_features_on_hand_built_gradients():
    model = two_layers()
    observer = observer_for(model, interval=2, total_steps=8)
    g0 = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    g1 = torch.tensor([[3.0, 4.0]])
    fake_step(model, observer, [g0, g1])
    fake_step(model, observer, [g0, -g1], delta=[torch.full((2, 2), 0.1), torch.zeros(1, 2)])
    for loss in (1.0, 3.0):
        observer.record_loss(torch.tensor(loss))
    obs = observer.features(scales=[2.0, 0.5], lrs=[0.2, 0.05])
    assert obs.shape == (2, len(FEATURE_NAMES))
    torch.testing.assert_close(obs[:, F["log_scale"]], torch.log(torch.tensor([2.0, 0.5])))
    torch.testing.assert_close(obs[:, F["log_lr"]], torch.log(torch.tensor([0.2, 0.05])))
    w0 = torch.tensor([[1.1, 2.1], [3.1, 4.1]])
    assert obs[0, F["log_weight_rms"]].item() == pytest.approx(math.log(w0.square().mean().sqrt().item()), rel=1e-5)
    assert obs[1, F["log_weight_rms"]].item() == pytest.approx(math.log(2.0), rel=1e-5)
    assert obs[0, F["log_grad_rms"]].item() == pytest.approx(0.0, abs=1e-6)  # rms of ones
    assert obs[1, F["log_grad_rms"]].item() == pytest.approx(math.log(5 / math.sqrt(2)), rel=1e-5)
    ratio = 0.2 / torch.tensor([[1.0, 2.0], [3.0, 4.0]]).norm().item()
    assert obs[0, F["log_update_ratio"]].item() == pytest.approx(math.log(ratio), rel=1e-4)
    assert obs[1, F["log_update_ratio"]].item() < -13  # no update: the log floor, finite
    assert obs[0, F["grad_consistency"]].item() == pytest.approx(1.0)  # same gradient twice
    assert obs[1, F["grad_consistency"]].item() == pytest.approx(0.0, abs=1e-6)  # g then -g
    assert obs[:, F["depth"]].tolist() == [0.0, 1.0]
    assert obs[:, F["kind_linear"]].tolist() == [1.0, 1.0]
    assert obs[:, F["log_param_count"]].tolist() == pytest.approx([math.log(4), math.log(2)])
    assert obs[:, F["progress"]].tolist() == [0.25, 0.25]
    assert obs[0, F["progress_unknown"]].item() == 0.0
    assert obs[0, F["log_loss"]].item() == pytest.approx(math.log(2.0))
    assert obs[0, F["loss_volatility"]].item() == pytest.approx(0.5)
    assert obs[0, F["log_loss_ratio"]].item() == 0.0  # no previous interval yet
    assert obs[0, F["has_val_loss"]].item() == 0.0
    # every layer sees the network-wide means of the two layers' own values
    for name in ("log_grad_rms", "log_update_ratio"):
        assert obs[:, F[f"net_{name}"]].tolist() == pytest.approx([obs[:, F[name]].mean().item()] * 2, rel=1e-5)

    observer.start_interval()
    fake_step(model, observer, [g0, g1])
    fake_step(model, observer, [g0, g1])
    observer.record_loss(1.0)
    observer.record_val_loss(4.0)
    obs = observer.features(scales=[1.0, 1.0], lrs=[0.1, 0.1])
    assert obs[0, F["log_loss_ratio"]].item() == pytest.approx(math.log(1.0 / 2.0))
    smoothed = 0.9 * 2.0 + 0.1 * 1.0
    assert obs[0, F["log_loss"]].item() == pytest.approx(math.log(smoothed))
    assert obs[0, F["log_val_loss_ratio"]].item() == pytest.approx(math.log(4.0 / smoothed))
    assert obs[0, F["has_val_loss"]].item() == 1.0
    assert obs[0, F["progress"]].item() == 0.5


def test_gradients_are_sampled_on_evenly_spaced_steps():
    model = two_layers()
    observer = observer_for(model, interval=8, grad_samples=2)
    big, small = torch.full((2, 2), 100.0), torch.ones(2, 2)
    for step in range(8):  # samples steps 4 and 8 (1-based)
        fake_step(model, observer, [small if step in (3, 7) else big, torch.ones(1, 2)])
    obs = observer.features([1.0, 1.0], [0.1, 0.1])
    assert obs[0, F["log_grad_rms"]].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("grads", [
    [None, None],
    [torch.zeros(2, 2), torch.zeros(1, 2)],
    [torch.full((2, 2), float("inf")), torch.full((1, 2), float("nan"))],
])
def test_features_are_finite_for_degenerate_gradients(grads):
    model = two_layers()
    observer = observer_for(model, interval=2)
    for _ in range(2):
        fake_step(model, observer, grads)
        observer.record_loss(float("nan") if grads[0] is not None and grads[0].isinf().any() else 0.0)
    observer.record_val_loss(float("inf"))
    obs = observer.features([1.0, 1e-30], [0.0, float("inf")])
    assert torch.isfinite(obs).all()
    assert obs.abs().max() <= FEATURE_CLIP


def test_features_are_finite_without_any_step_or_loss():
    obs = observer_for(two_layers()).features([1.0, 1.0], [0.1, 0.1])
    assert torch.isfinite(obs).all()
    assert obs[0, F["progress_unknown"]].item() == 1.0


def test_no_buffer_grows_with_the_model():
    model = nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 512))
    observer = observer_for(model, sketch_size=64)
    for _ in range(2):
        fake_step(model, observer, [torch.randn_like(p) for p in model.parameters()])
    sizes = [v.numel() for v in observer.state_dict().values() if isinstance(v, torch.Tensor)]
    assert max(sizes) <= 2 * 64 < sum(p.numel() for p in model.parameters()) / 1000


def test_state_round_trip_gives_identical_features():
    model = two_layers()
    observer = observer_for(model, interval=4)
    fake_step(model, observer, [torch.ones(2, 2), torch.ones(1, 2)], delta=[torch.ones(2, 2), torch.ones(1, 2)])
    observer.record_loss(2.0)
    clone = observer_for(model, interval=4)
    clone.load_state_dict(observer.state_dict())
    torch.testing.assert_close(observer.features([1.0, 1.0], [0.1, 0.1]), clone.features([1.0, 1.0], [0.1, 0.1]))


@pytest.mark.parametrize("kwargs, match", [
    ({"interval": 0}, "`interval` must be a positive int"),
    ({"interval": 2, "grad_samples": 0}, "`grad_samples`"),
    ({"interval": 2, "sketch_size": -1}, "`sketch_size`"),
    ({"interval": 2, "total_steps": 0}, "`total_steps`"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LayerObserver(LayerPartition.from_module(two_layers()), **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_features_are_computed_on_the_parameters_device():
    model = two_layers().cuda()
    observer = observer_for(model)
    fake_step(model, observer, [torch.ones(2, 2, device="cuda"), torch.ones(1, 2, device="cuda")])
    observer.record_loss(torch.tensor(1.0, device="cuda"))
    # every tensor the observer keeps (sketch positions, accumulators, losses) lives on the model's device
    kept = [v for v in vars(observer).values() if isinstance(v, torch.Tensor)]
    kept += [t for v in vars(observer).values() if isinstance(v, list) for t in v if isinstance(t, torch.Tensor)]
    kept += [index for _, index, _ in observer._sketch_index]
    assert observer.device.type == "cuda" and len(kept) >= 8
    assert {t.device.type for t in kept} == {"cuda"}
    features = observer.features([1.0, 1.0], [0.1, 0.1])
    assert features.device.type == "cpu" and torch.isfinite(features).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gradient_statistics_on_a_gpu_are_reproducible_and_match_the_cpu():
    # The per-agent sums of squared gradients: summed in a fixed order on CUDA (index_add_ would sum
    # with atomics, in an order that changes from run to run).
    torch.manual_seed(0)
    grads = [torch.randn(300, 200), torch.randn(1, 300)]
    model = nn.Sequential(nn.Linear(200, 300, bias=False), nn.Linear(300, 1, bias=False))
    runs = []
    for device in ("cpu", "cuda", "cuda"):
        model = model.to(device)
        observer = observer_for(model, interval=2, sketch_size=50_000)
        for _ in range(2):
            fake_step(model, observer, [g.to(device) for g in grads])
        runs.append(observer.features([1.0, 1.0], [0.1, 0.1]))
    assert torch.equal(runs[1], runs[2])
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-5, atol=1e-5)


def test_large_layers_are_measured_on_the_sketch_within_a_few_percent():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512, bias=False), nn.Linear(512, 512, bias=False))
    observer = observer_for(model, interval=1, sketch_size=1024)
    grads = [torch.randn(512, 512) * 3.0, torch.randn(512, 512) * 0.01]
    fake_step(model, observer, grads)
    obs = observer.features([1.0, 1.0], [0.1, 0.1])
    for i, (p, g) in enumerate(zip(model.parameters(), grads)):
        exact_w = math.log(p.detach().square().mean().sqrt().item())
        exact_g = math.log(g.square().mean().sqrt().item())
        assert obs[i, F["log_weight_rms"]].item() == pytest.approx(exact_w, abs=0.05)
        assert obs[i, F["log_grad_rms"]].item() == pytest.approx(exact_g, abs=0.05)


def test_a_skipped_step_counts_and_its_gradient_sample_is_taken_on_the_next_applied_step():
    model = two_layers()
    observer = observer_for(model, interval=4, grad_samples=2)  # samples on steps 2 and 4 of an interval
    grads = [torch.ones(2, 2), torch.ones(1, 2)]
    counts = []
    for applied in (True, False, True, True):
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
        observer.after_step(applied=applied)
        counts.append(observer._grad_count)
    assert observer.step == observer.steps_in_interval == 4
    assert counts == [0, 0, 1, 2]  # step 2 skipped: its gradients are not read; step 3 takes its sample


# -- the scale-free features of the "hypergradient" set ------------------------------------------
ALL = {name: i for i, name in enumerate(ALL_FEATURE_NAMES)}


def quadratic_steps(model, optimizer, observer, steps):
    """SGD steps on 0.5 * |w|^2 (curvature 1): lr < 1 approaches the minimum, 1 < lr < 2 overshoots it every step."""
    for _ in range(steps):
        optimizer.zero_grad()
        loss = 0.5 * model.weight.square().sum()
        loss.backward()
        optimizer.step()
        observer.record_loss(loss.detach())


def quadratic_run(lr, steps=10, interval=10, feature_names="hypergradient"):
    model = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0, 3.0, 0.5]]))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    observer = observer_for(model, interval=interval, feature_names=feature_names)
    observer.attach(optimizer)
    quadratic_steps(model, optimizer, observer, steps)
    return observer.features(scales=[1.0], lrs=[lr])[0]


def test_update_grad_cos_says_whether_the_last_update_overshot():
    # After an SGD step w <- (1 - lr) w the gradient is (1 - lr) w: along the last update's
    # direction -w when lr > 1 (overshot: cos +1), against it when lr < 1 (cos -1).
    assert quadratic_run(lr=1.9)[ALL["update_grad_cos"]] == pytest.approx(1.0, abs=1e-5)
    assert quadratic_run(lr=0.1)[ALL["update_grad_cos"]] == pytest.approx(-1.0, abs=1e-5)
    # No update before the sampled gradient (interval of 2 steps: samples at steps 1 and 2): 0
    assert quadratic_run(lr=0.1, steps=2, interval=2)[ALL["update_grad_cos"]] == 0.0


def test_log_loss_vs_initial_is_the_smoothed_loss_relative_to_the_first_interval():
    model = two_layers()
    observer = observer_for(model, interval=1, feature_names="hypergradient", loss_ema=0.5)
    losses = []
    for loss in (4.0, 2.0, 1.0):
        observer.record_loss(loss)
        losses.append(observer.features(scales=[1.0, 1.0], lrs=[0.1, 0.1])[0, ALL["log_loss_vs_initial"]].item())
        observer.start_interval()
    # smoothed: 4, then 0.5 * 4 + 0.5 * 2 = 3, then 0.5 * 3 + 0.5 * 1 = 2; relative to the first, 4
    assert losses == pytest.approx([0.0, math.log(3 / 4), math.log(2 / 4)], abs=1e-6)


def test_log_total_steps_reads_the_runs_length_and_is_0_when_it_is_unknown():
    def row(total_steps):
        observer = observer_for(two_layers(), interval=1, feature_names="run_length", total_steps=total_steps)
        observer.record_loss(1.0)
        return dict(zip(FEATURE_SETS["run_length"], observer.features(scales=[1.0, 1.0], lrs=[0.1, 0.1])[0].tolist()))

    short, long, unknown = row(300), row(3000), row(None)
    assert long["log_total_steps"] - short["log_total_steps"] == pytest.approx(math.log(10), abs=1e-5)
    assert short["log_total_steps"] == pytest.approx(math.log(300), abs=1e-5)
    assert (unknown["log_total_steps"], unknown["progress_unknown"]) == (0.0, 1.0)


def test_an_observer_returns_exactly_the_features_it_is_asked_for():
    """The default set is the full row's first columns, unchanged; any list comes in its own order."""
    full = quadratic_run(lr=0.5)
    default_row, picked = (quadratic_run(lr=0.5, feature_names=names) for names in (None, ["update_grad_cos", "log_lr"]))
    every = quadratic_run(lr=0.5, feature_names=ALL_FEATURE_NAMES)  # the observer's whole row, as it builds it
    assert len(every) == len(ALL_FEATURE_NAMES) and torch.equal(every[:len(full)], full)
    assert torch.equal(default_row, full[:len(FEATURE_NAMES)])
    assert picked.tolist() == [full[ALL["update_grad_cos"]].item(), full[ALL["log_lr"]].item()]
    assert full[ALL["update_grad_cos"]] < 0  # lr 0.5 < 1: the gradient keeps pointing the same way
    with pytest.raises(ValueError, match=r"`feature_names` has unknown names \['grad_cosine'\]"):
        observer_for(two_layers(), feature_names=["grad_cosine"])


def test_the_hypergradient_state_survives_a_round_trip():
    model = nn.Linear(4, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.5)
    observer = observer_for(model, interval=10, feature_names="hypergradient")
    hooks = observer.attach(optimizer)

    def steps(obs, count):
        quadratic_steps(model, optimizer, obs, count)

    steps(observer, 9)  # the pair before the step-10 sample is read: a restore must keep it
    state = observer.state_dict()
    weights = model.weight.detach().clone()
    steps(observer, 1)
    expected = observer.features(scales=[1.0], lrs=[1.5])
    hooks.remove()
    with torch.no_grad():
        model.weight.copy_(weights)
    restored = observer_for(model, interval=10, feature_names="hypergradient")
    restored.load_state_dict(state)
    restored.attach(optimizer)
    steps(restored, 1)
    assert torch.equal(restored.features(scales=[1.0], lrs=[1.5]), expected)
