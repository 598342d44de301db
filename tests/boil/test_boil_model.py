"""The curve GP: joint (m0, g0) fit, virtual observations at the trials' own x, capped and well-conditioned."""

import math

import pytest
import torch
from gpytorch.kernels import RBFKernel

from ganno_lightning.boil import model as boil_model
from ganno_lightning.boil.compression import NormalisedCurves
from ganno_lightning.boil.model import (
    G0_GRID,
    M0_GRID,
    FitError,
    VirtualSettings,
    fit_curve_gp,
    refit_with_previous,
)
from ganno_lightning.boil.virtual import select_virtual_points

T_MAX = 12


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def synthetic_trials(n=8, seed=0):
    """Loss curves whose final value is best at x = 0.3, trained for various lengths."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g, dtype=torch.float64)
    curves = []
    for i in range(n):
        final = float(((x[i] - 0.3) ** 2).sum())
        length = int(torch.randint(3, T_MAX + 1, (1,), generator=g))
        curves.append([(e, final + (1 + final) * math.exp(-e / 3) + 0.01 * float(torch.randn((), generator=g)))
                       for e in range(1, length + 1)])
    return x, NormalisedCurves.from_points(curves, t_max=T_MAX, mode="min")


def test_fit_learns_a_finite_compression_from_the_grid():
    x, curves = synthetic_trials()
    fit = fit_curve_gp(x, curves, m0=0.5, g0=12.0)
    info = fit.diagnostics()
    assert fit.m0 in M0_GRID and fit.g0 in G0_GRID
    assert math.isfinite(info["mll"]) and info["noise"] >= 1e-4 and info["n_real"] == 8
    assert len(info["lengthscales_x"]) == 2 and info["lengthscale_t"] > 0
    assert fit.source == "fit" and fit.seconds < 30


def test_fixed_compression_stays_fixed():
    x, curves = synthetic_trials()
    fit = fit_curve_gp(x, curves, m0=0.3, g0=5.0, grid=None)
    assert (fit.m0, fit.g0) == (0.3, 5.0)


def test_virtual_observations_sit_at_their_trial_x_before_its_last_epoch_and_are_capped():
    x, curves = synthetic_trials(n=6)
    settings = VirtualSettings(per_trial=2, total=7, variance_threshold=0.0)
    fit = fit_curve_gp(x, curves, m0=0.5, g0=12.0, virtual=settings)
    inputs = fit.model.train_inputs[0]
    virtual = inputs[fit.n_real:]
    assert 0 < fit.n_virtual == virtual.shape[0] <= 7
    per_trial = {}
    for row in virtual:
        matches = [i for i in range(x.shape[0]) if torch.equal(row[:2], x[i])]
        assert len(matches) == 1
        i = matches[0]
        assert row[2] < curves.positions[i, curves.lengths[i] - 1]  # a prefix, strictly shorter
        per_trial[i] = per_trial.get(i, 0) + 1
    assert max(per_trial.values()) <= 2
    assert fit_curve_gp(x, curves, m0=0.5, g0=12.0, virtual=None).n_virtual == 0


def test_virtual_selection_skips_near_duplicates_and_low_variance():
    kernel = RBFKernel().double()
    kernel.lengthscale = 0.3

    def k(a, b):
        return kernel(a, b).to_dense()

    real = torch.tensor([[0.5, 1.0]], dtype=torch.float64)
    near_duplicates = [torch.tensor([1.0 - 1e-9, 1.0 - 2e-9], dtype=torch.float64)]
    chosen = select_virtual_points(k, noise=1e-8, prior_variance=1.0, real_inputs=real, trial_x=real[:, :1],
                                   candidates=near_duplicates, variance_threshold=0.0)
    assert chosen == []  # the pivot (conditioning) check refuses them
    spread = [torch.linspace(0.1, 0.9, 9, dtype=torch.float64)]
    everything = select_virtual_points(k, noise=1e-4, prior_variance=1.0, real_inputs=real, trial_x=real[:, :1],
                                       candidates=spread, variance_threshold=0.0, per_trial=20, total=20)
    informative = select_virtual_points(k, noise=1e-4, prior_variance=1.0, real_inputs=real, trial_x=real[:, :1],
                                        candidates=spread, variance_threshold=0.05, per_trial=20, total=20)
    assert 0 < len(informative) < len(everything)
    assert len({c for _, c in everything}) == len(everything)  # no candidate twice


def _greedy_by_definition(k, noise, prior_variance, real, trial_x, candidates, per_trial, total, threshold, min_pivot):
    """The virtual selection as the module defines it, one full solve per candidate: the reference for its speed-ups."""
    inputs, chosen = real.clone(), []
    cap = min(per_trial, math.ceil(total / max(1, sum(c.numel() > 0 for c in candidates))))
    for trial, positions in enumerate(candidates):
        taken = []
        while positions.numel() and len(taken) < cap and len(chosen) < total:
            points = torch.cat([trial_x[trial].expand(len(positions), -1), positions[:, None]], dim=-1)
            gram = k(inputs, inputs) + noise * torch.eye(len(inputs), dtype=inputs.dtype)
            cross = k(inputs, points)
            variance = k(points, points).diagonal() - (cross * torch.linalg.solve(gram, cross)).sum(0)
            variance[taken] = -math.inf
            best = int(variance.argmax())
            if variance[best] < threshold or variance[best] + noise < min_pivot * (prior_variance + noise):
                break
            taken.append(best)
            chosen.append((trial, best))
            inputs = torch.cat([inputs, points[best : best + 1]])
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_virtual_selection_equals_its_definition(seed):
    # Blocks of the Cholesky factor and Schur updates are how it is computed; what it chooses is the greedy rule.
    g = torch.Generator().manual_seed(seed)
    trial_x = torch.rand(8, 2, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, 12, (8,), generator=g)
    real = torch.cat([trial_x, (lengths / 12.0).to(torch.float64)[:, None]], dim=-1)
    candidates = [torch.arange(1, int(n), dtype=torch.float64) / 12.0 for n in lengths]
    kernel = RBFKernel(ard_num_dims=3).double()
    kernel.lengthscale = torch.tensor([[0.3, 0.5, 0.4]], dtype=torch.float64)

    def k(a, b):
        return kernel(a, b).to_dense().detach()

    for total, threshold in ((100, 0.01), (9, 0.0)):
        args = (k, 1e-3, 1.0, real, trial_x, candidates)
        fast = select_virtual_points(*args, per_trial=4, total=total, variance_threshold=threshold, min_pivot=1e-4)
        assert fast == _greedy_by_definition(*args, 4, total, threshold, 1e-4)
        assert fast  # the setups do add points


def test_refit_with_previous_keeps_the_hyperparameters_on_new_data():
    x, curves = synthetic_trials(n=6)
    first = fit_curve_gp(x, curves, m0=0.5, g0=12.0)
    x2, curves2 = synthetic_trials(n=9, seed=1)
    again = refit_with_previous(x2, curves2, first)
    assert again.source == "previous" and again.n_real == 9
    assert again.diagnostics()["lengthscales_x"] == pytest.approx(first.diagnostics()["lengthscales_x"])
    assert (again.m0, again.g0) == (first.m0, first.g0)


def test_a_failing_optimiser_raises_fit_error(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("optimiser exploded")

    monkeypatch.setattr(boil_model, "fit_gpytorch_mll", broken)
    x, curves = synthetic_trials(n=5)
    with pytest.raises(FitError, match="optimiser exploded"):
        fit_curve_gp(x, curves, m0=0.5, g0=12.0)


def _argmax_at_t_max(model):
    grid = torch.stack(torch.meshgrid(torch.linspace(0, 1, 21, dtype=torch.float64),
                                      torch.linspace(0, 1, 21, dtype=torch.float64), indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        mean = model.posterior(torch.cat([grid, torch.ones(len(grid), 1, dtype=torch.float64)], -1)).mean.squeeze(-1)
    return grid[int(mean.argmax())]


def test_a_warm_started_fit_finds_the_same_optimum_as_a_cold_one():
    x, curves = synthetic_trials(n=12, seed=2)
    cold = fit_curve_gp(x, curves, m0=0.5, g0=12.0, grid=None, virtual=None)
    earlier_x, earlier = synthetic_trials(n=9, seed=2)  # a fit on 9 similar trials (same x for the first 9) to start from
    previous = fit_curve_gp(earlier_x, earlier, m0=0.5, g0=12.0, grid=None, virtual=None)
    warm = fit_curve_gp(x, curves, m0=0.5, g0=12.0, grid=None, virtual=None, previous=previous)
    assert warm.mll == pytest.approx(cold.mll, abs=0.05)
    assert torch.dist(_argmax_at_t_max(warm.model), _argmax_at_t_max(cold.model)) <= 0.1 + 1e-9
    assert torch.dist(_argmax_at_t_max(warm.model), torch.tensor([0.3, 0.3], dtype=torch.float64)) < 0.2


def test_the_prior_mean_learns_that_short_trainings_score_lower():
    x, curves = synthetic_trials(n=12, seed=1)  # loss curves decay: a prefix scores below its whole curve
    fit = fit_curve_gp(x, curves, m0=0.5, g0=12.0, grid=None)
    assert fit.n_virtual > 0 and fit.diagnostics()["mean_slope_t"] > 0


@pytest.mark.parametrize(("t_trend", "t_persistence"), [(True, False), (False, False), (True, True)])
def test_the_plain_torch_kernel_and_likelihood_match_gpytorch(t_trend, t_persistence):
    # The fit's closure and the virtual selection skip GPyTorch's lazy tensors: same values, same gradients.
    from gpytorch.mlls import ExactMarginalLogLikelihood

    from ganno_lightning.boil.model import MarginalLikelihoodClosure, build_gp, kernel_matrix, negative_mll

    g = torch.Generator().manual_seed(0)
    inputs = torch.rand(30, 3, generator=g, dtype=torch.float64)
    gp = build_gp(inputs, torch.randn(30, generator=g, dtype=torch.float64), t_trend=t_trend,
                  t_persistence=t_persistence)
    gp.covar_module.base_kernel.kernels[0].lengthscale = torch.tensor([[0.2, 0.7]], dtype=torch.float64)
    gp.covar_module.base_kernel.kernels[1].lengthscale = 0.4
    gp.covar_module.outputscale = 1.7
    gp.likelihood.noise = 0.05
    if t_trend:
        with torch.no_grad():
            gp.mean_module.slope.fill_(0.3)
    if t_persistence:
        with torch.no_grad():
            gp.covar_module.base_kernel.kernels[1].raw_persistence.fill_(0.8)  # w = sigmoid(0.8), about 0.69
    other = torch.rand(7, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(kernel_matrix(gp, inputs, other), gp.covar_module(inputs, other).to_dense(), atol=1e-12)
    gp.train()
    reference = -ExactMarginalLogLikelihood(gp.likelihood, gp)(gp(*gp.train_inputs), gp.train_targets)
    reference.backward()
    expected = {name: p.grad.clone() for name, p in gp.named_parameters()}
    gp.zero_grad()
    ours = negative_mll(gp)
    ours.backward()
    assert math.isclose(float(ours), float(reference), rel_tol=1e-10)
    for name, p in gp.named_parameters():
        assert torch.allclose(p.grad, expected[name], atol=1e-10), name
    # The fit's closure: the kernel's gradients and the priors in closed form, the same numbers.
    parameters = dict(gp.named_parameters())
    value, gradients = MarginalLikelihoodClosure(gp, parameters)()
    assert math.isclose(float(value), float(reference), rel_tol=1e-10)
    for (name, _), gradient in zip(parameters.items(), gradients):
        assert torch.allclose(gradient, expected[name], atol=1e-10), name


def test_the_fit_closure_takes_a_prior_it_has_no_closed_form_for_through_autograd():
    from gpytorch.priors import NormalPrior

    from ganno_lightning.boil.model import MarginalLikelihoodClosure, build_gp, negative_mll

    g = torch.Generator().manual_seed(1)
    gp = build_gp(torch.rand(20, 3, generator=g, dtype=torch.float64), torch.randn(20, generator=g, dtype=torch.float64))
    t_kernel = gp.covar_module.base_kernel.kernels[1]
    t_kernel.register_prior("lengthscale_prior", NormalPrior(0.5, 0.3), lambda m: m.lengthscale,
                            lambda m, v: m._set_lengthscale(v))
    gp.train()
    reference = negative_mll(gp)
    reference.backward()
    parameters = dict(gp.named_parameters())
    value, gradients = MarginalLikelihoodClosure(gp, parameters)()
    assert math.isclose(float(value), float(reference), rel_tol=1e-10)
    for (name, p), gradient in zip(parameters.items(), gradients):
        assert torch.allclose(gradient, p.grad, atol=1e-10), name


def test_the_persistent_share_bounds_the_length_correlation_from_below():
    from ganno_lightning.boil.model import build_gp, length_correlation

    inputs = torch.rand(10, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gp = build_gp(inputs, torch.zeros(10, dtype=torch.float64), t_persistence=True)
    t_kernel = gp.covar_module.base_kernel.kernels[1]
    t_kernel.lengthscale = 0.01  # the Matern part says nothing across lengths
    with torch.no_grad():
        share = float(t_kernel.persistence)
        far = length_correlation(gp, torch.tensor([[0.5, 0.5, 0.1]], dtype=torch.float64))
        same = length_correlation(gp, torch.tensor([[0.5, 0.5, 1.0]], dtype=torch.float64))
    assert 0.0 < share < 1.0
    assert float(far) == pytest.approx(share, abs=1e-9) and float(same) == pytest.approx(1.0)


def test_curves_that_keep_their_ranking_teach_a_persistent_share():
    # Each configuration's loss curve is its own quality plus a decay shared by all: the ranking after a few
    # epochs is the final ranking, so the learned kernel keeps most of the correlation across lengths.
    g = torch.Generator().manual_seed(3)
    x = torch.rand(12, 2, generator=g, dtype=torch.float64)
    quality = (x - 0.3).pow(2).sum(-1)
    curves = [[(e, float(q) + math.exp(-e / 2) + 0.005 * float(torch.randn((), generator=g)))
               for e in range(1, T_MAX + 1)] for q in quality]
    fit = fit_curve_gp(x, NormalisedCurves.from_points(curves, t_max=T_MAX, mode="min"), m0=0.5, g0=12.0, grid=None,
                       t_persistence=True)
    assert fit.diagnostics()["length_persistence"] > 0.5


def test_lookahead_spread_is_how_far_one_observation_moves_the_mean_at_t_max():
    # Checked against BoTorch: condition on a noisy score at (x, t) one standard deviation above its mean, and the
    # posterior mean at (x, T_max) moves by the lookahead's spread.
    from ganno_lightning.boil.model import FastPosterior, build_gp

    g = torch.Generator().manual_seed(1)
    inputs = torch.rand(15, 3, generator=g, dtype=torch.float64)
    gp = build_gp(inputs, torch.randn(15, generator=g, dtype=torch.float64), t_persistence=True)
    gp.covar_module.base_kernel.kernels[1].lengthscale = 0.4
    gp.likelihood.noise = 0.05
    gp.eval()
    observed = torch.tensor([[0.2, 0.7, 0.3], [0.9, 0.1, 0.6]], dtype=torch.float64)
    target = observed.clone()
    target[:, -1] = 1.0
    with torch.no_grad():
        mean, spread = FastPosterior(gp).lookahead(observed, target)
        assert torch.allclose(mean, gp.posterior(target).mean.squeeze(-1), atol=1e-9)
        for i in range(2):
            predictive = gp.posterior(observed[i : i + 1], observation_noise=True)
            y = predictive.mean + predictive.variance.sqrt()
            moved = gp.condition_on_observations(observed[i : i + 1], y).posterior(target[i : i + 1]).mean
            assert float(moved - gp.posterior(target[i : i + 1]).mean) == pytest.approx(float(spread[i]), rel=1e-6)
