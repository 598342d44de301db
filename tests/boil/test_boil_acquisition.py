"""Cost-aware LogEI: the cost weight trades improvement against seconds; fixed_t pins t to T_max."""

import pytest
import torch

from ganno_lightning.boil.acquisition import CostAwareLogEI, incumbent, maximise
from ganno_lightning.boil.cost import CostModel
from ganno_lightning.boil.model import build_gp

T_MAX = 20


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def model():
    """Four full-length trials, the best at x = 0.5: short trainings are unexplored, hence uncertain."""
    inputs = torch.tensor([[0.1, 1.0], [0.4, 1.0], [0.6, 1.0], [0.9, 1.0]], dtype=torch.float64)
    gp = build_gp(inputs, torch.tensor([0.0, 1.0, 0.9, 0.1], dtype=torch.float64))
    gp.covar_module.base_kernel.kernels[0].lengthscale = 0.3
    gp.covar_module.base_kernel.kernels[1].lengthscale = 0.5
    return gp.eval()


def pick(model, weight, steep=5.0, **kwargs):
    cost = CostModel(intercept=0.0, slopes=torch.zeros(1, dtype=torch.float64), log_t_slope=steep)
    best = incumbent(model, torch.tensor([[0.1], [0.4], [0.6], [0.9]], dtype=torch.float64))
    acq = CostAwareLogEI(model, best_f=best, cost=cost, t_max=T_MAX, cost_weight=weight)
    return maximise(acq, dims=1, t_max=T_MAX, t_min=1, **kwargs)


def test_without_cost_long_training_wins_and_a_steep_cost_shortens_it(model):
    free, costly = pick(model, weight=0.0), pick(model, weight=1.0)
    assert free.epochs > costly.epochs
    assert isinstance(costly.epochs, int) and 1 <= costly.epochs <= T_MAX
    assert costly.log_cost == pytest.approx(5.0 * torch.tensor(float(costly.epochs)).log().item())


def test_fixed_t_always_trains_for_t_max(model):
    assert pick(model, weight=1.0, fixed_t=True).epochs == T_MAX


def test_t_min_bounds_the_shortest_training(model):
    cost = CostModel(intercept=0.0, slopes=torch.zeros(1, dtype=torch.float64), log_t_slope=5.0)
    acq = CostAwareLogEI(model, best_f=incumbent(model, torch.tensor([[0.5]], dtype=torch.float64)), cost=cost, t_max=T_MAX)
    assert maximise(acq, dims=1, t_max=T_MAX, t_min=7).epochs >= 7


def test_priced_per_epoch_a_trial_costs_its_epochs_whatever_x(model):
    cost = CostModel.per_epoch(dims=1)
    x = torch.tensor([[0.0], [0.5], [1.0]], dtype=torch.float64)
    for epochs in (1, 7, T_MAX):
        assert torch.allclose(cost.log_seconds(x, torch.full((3,), float(epochs))),
                              torch.full((3,), float(torch.tensor(float(epochs)).log()), dtype=torch.float64))


def target_acquisition(lengthscale_t):
    """The best full-length trial sits at x = 0.5; a short trial is worth what its score tells about T_max."""
    inputs = torch.tensor([[0.1, 1.0], [0.4, 1.0], [0.6, 1.0], [0.9, 1.0]], dtype=torch.float64)
    gp = build_gp(inputs, torch.tensor([0.0, 1.0, 0.9, 0.1], dtype=torch.float64))
    gp.covar_module.base_kernel.kernels[0].lengthscale = 0.3
    gp.covar_module.base_kernel.kernels[1].lengthscale = lengthscale_t
    gp.eval()
    best = incumbent(gp, inputs[:, :1])
    return CostAwareLogEI(gp, best_f=best, cost=CostModel.per_epoch(dims=1), t_max=T_MAX, gain="target")


def target_pick(lengthscale_t):
    return maximise(target_acquisition(lengthscale_t), dims=1, t_max=T_MAX, t_min=1)


def test_target_gain_buys_short_trials_only_when_the_kernel_says_they_inform_t_max():
    # scores after t and after T_max nearly uncorrelated: a cheap short trial tells nothing, so train long
    assert target_pick(lengthscale_t=0.05).epochs >= T_MAX - 1
    # nearly identical: the short trial tells as much for a fraction of the epochs
    assert target_pick(lengthscale_t=20.0).epochs <= T_MAX // 4


@pytest.mark.parametrize("lengthscale_t", [0.05, 0.5, 2.0, 20.0])
def test_target_gain_chooses_the_best_whole_epoch_exactly(lengthscale_t):
    # The target gain separates into x and t terms: the chosen t must beat every other whole epoch at the chosen x.
    acq = target_acquisition(lengthscale_t)
    chosen = maximise(acq, dims=1, t_max=T_MAX, t_min=1)
    rows = torch.tensor([[chosen.x[0], t / T_MAX] for t in range(1, T_MAX + 1)], dtype=torch.float64)
    with torch.no_grad():
        values = acq(rows[:, None, :])
    assert int(values.argmax()) + 1 == chosen.epochs


def test_the_search_finds_the_acquisition_maximum_of_a_grid(model):
    # Batched quasi-random points and local clouds, no gradients: as good as a dense grid in x at the chosen t.
    chosen = pick(model, weight=0.0)
    acq = CostAwareLogEI(model, best_f=incumbent(model, torch.tensor([[0.1], [0.4], [0.6], [0.9]], dtype=torch.float64)),
                         cost=CostModel.per_epoch(dims=1), t_max=T_MAX, cost_weight=0.0)
    grid = torch.stack([torch.linspace(0, 1, 2001, dtype=torch.float64),
                        torch.full((2001,), chosen.epochs / T_MAX, dtype=torch.float64)], dim=-1)
    with torch.no_grad():
        best_on_grid = float(acq(grid[:, None, :]).max())
        found = float(acq(torch.tensor([[[chosen.x[0], chosen.epochs / T_MAX]]], dtype=torch.float64)))
    assert found >= best_on_grid - 1e-3


def test_any_batch_shape_scores_like_its_rows(model):
    acq = CostAwareLogEI(model, best_f=0.5, cost=CostModel.per_epoch(1), t_max=T_MAX, gain="target")
    points = torch.rand(4, 5, 1, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        batched = acq(points)
        rows = acq(points.reshape(-1, 1, 2))
    assert batched.shape == (4, 5) and torch.allclose(batched.reshape(-1), rows)


def test_maximise_rejects_an_empty_search(model):
    acq = CostAwareLogEI(model, best_f=0.5, cost=CostModel.per_epoch(1), t_max=T_MAX)
    with pytest.raises(ValueError, match=r"`per_start` must be a positive int, got 0"):
        maximise(acq, dims=1, t_max=T_MAX, per_start=0)


def test_the_plain_torch_posterior_and_log_ei_match_botorch(model):
    # For the fitted model and for a kriging believer (condition_on_observations), as the core uses them.
    from botorch.acquisition import LogExpectedImprovement

    from ganno_lightning.boil.model import FastPosterior

    believed_at = torch.tensor([[0.5, 0.3], [0.5, 1.0]], dtype=torch.float64)
    with torch.no_grad():
        believer = model.condition_on_observations(believed_at, model.posterior(believed_at).mean)
    points = torch.rand(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for gp in (model, believer):
        with torch.no_grad():
            reference = gp.posterior(points)
            mean, sigma = FastPosterior(gp)(points)
            assert torch.allclose(mean, reference.mean.squeeze(-1), atol=1e-9)
            assert torch.allclose(sigma, reference.variance.squeeze(-1).clamp_min(1e-12).sqrt(), atol=1e-9)
            best = float(reference.mean.max())
            ours = CostAwareLogEI(gp, best_f=best, cost=CostModel.per_epoch(1), t_max=T_MAX).log_ei_curve(points)
            theirs = LogExpectedImprovement(gp, best_f=best)(points[:, None, :])
            assert torch.allclose(ours, theirs, atol=1e-8)


def test_lookahead_gain_promotes_a_configuration_seen_briefly_to_a_full_trial():
    # x = 0.5 was trained 5 epochs and looked best: another 5-epoch trial there would repeat what is known (only
    # the noise is left to learn), while a full trial resolves its score at T_max. The target gain, which reads the
    # kernel's prior correlation, values that repeat at e^-1.3 of the full trial (this model, checked by hand).
    inputs = torch.tensor([[0.1, 1.0], [0.5, 0.25], [0.9, 1.0]], dtype=torch.float64)
    gp = build_gp(inputs, torch.tensor([0.0, 1.0, 0.2], dtype=torch.float64), t_persistence=True)
    gp.covar_module.base_kernel.kernels[0].lengthscale = 0.2
    gp.covar_module.base_kernel.kernels[1].lengthscale = 0.3
    gp.likelihood.noise = 1e-3
    gp.eval()
    acq = CostAwareLogEI(gp, best_f=incumbent(gp, inputs[:, :1]), cost=CostModel.per_epoch(dims=1), t_max=T_MAX,
                         cost_weight=0.0, gain="lookahead")
    with torch.no_grad():
        seen_short, seen_full = acq.log_ei(torch.tensor([[[0.5, 0.25]], [[0.5, 1.0]]], dtype=torch.float64))
    assert seen_full - seen_short > 3.0  # e^3: a repeat of the short trial is worth under 5% of the full one
