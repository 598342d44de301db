"""Curve compression: logistic weights, orientation, robust normalisation, prefix scores."""

import math

import pytest
import torch

from ganno_lightning.boil.compression import (
    NormalisedCurves,
    epoch_weights,
    logistic_weights,
    normalise_values,
)


def test_weights_rise_with_position_and_are_half_at_the_midpoint():
    u = torch.linspace(0, 1, 21, dtype=torch.float64)
    for m0, g0 in [(0.0, 1.0), (0.5, 12.0), (1.0, 24.0)]:
        w = logistic_weights(u, m0, g0)
        assert (w[1:] > w[:-1]).all() and ((w > 0) & (w < 1)).all()
        assert logistic_weights(torch.tensor(m0), m0, g0).item() == pytest.approx(0.5)


def test_a_later_midpoint_or_steeper_growth_shifts_weight_to_the_end():
    u = torch.linspace(0.05, 1, 20, dtype=torch.float64)

    def late_share(m0, g0):
        w = logistic_weights(u, m0, g0)
        return float(w[-5:].sum() / w.sum())

    assert late_share(0.8, 12.0) > late_share(0.3, 12.0)
    assert late_share(0.5, 24.0) > late_share(0.5, 4.0) > late_share(0.5, 0.01)
    assert late_share(0.5, 1e-6) == pytest.approx(5 / 20)  # g0 -> 0: a plain mean


def test_epoch_weights_reads_epochs_over_t_max():
    assert epoch_weights(4, 0.5, 12.0) == pytest.approx(logistic_weights(torch.tensor([0.25, 0.5, 0.75, 1.0]), 0.5, 12.0).tolist())
    with pytest.raises(ValueError, match="`t_max`"):
        epoch_weights(0, 0.5, 12.0)


def test_mode_orients_scores_so_higher_is_better():
    low, high = [(1, 0.5), (2, 0.2)], [(1, 0.9), (2, 0.8)]
    as_loss = NormalisedCurves.from_points([low, high], t_max=2, mode="min").scores(0.5, 12.0)
    as_accuracy = NormalisedCurves.from_points([low, high], t_max=2, mode="max").scores(0.5, 12.0)
    assert as_loss[0] > as_loss[1]
    assert as_accuracy[1] > as_accuracy[0]


@pytest.mark.parametrize("mode", ["min", "max"])
def test_normalisation_is_invariant_to_positive_affine_maps(mode):
    values = torch.tensor([3.0, 1.0, 4.0, 1.5, 9.0, 2.6, 5.0], dtype=torch.float64)
    base = normalise_values(values, mode)
    assert torch.allclose(normalise_values(1000.0 * values - 7.0, mode), base)
    curves = [[(1, 3.0), (2, 1.0), (3, 4.0)], [(1, 1.5), (2, 9.0)], [(1, 2.6), (2, 5.0)]]
    scaled = [[(e, 0.01 * v + 40.0) for e, v in c] for c in curves]
    a = NormalisedCurves.from_points(curves, t_max=3, mode=mode).scores(0.5, 12.0)
    b = NormalisedCurves.from_points(scaled, t_max=3, mode=mode).scores(0.5, 12.0)
    assert torch.allclose(a, b)


def test_weighted_mean_is_affine_equivariant():
    curves = NormalisedCurves.from_points([[(1, 0.1), (2, 0.3), (3, 0.2)]], t_max=3, mode="max")
    shifted = NormalisedCurves(values=2.0 * curves.values + 5.0, positions=curves.positions, lengths=curves.lengths)
    assert shifted.scores(0.4, 6.0) == pytest.approx(2.0 * curves.scores(0.4, 6.0) + 5.0)


def test_non_finite_values_read_as_the_worst_finite_value():
    z = normalise_values(torch.tensor([1.0, 2.0, 3.0, 4.0, math.nan, math.inf, -math.inf]), mode="min")
    assert torch.isfinite(z).all()
    assert z[4:].tolist() == [z[:4].min().item()] * 3


def test_a_huge_diverged_value_neither_squashes_the_others_nor_dominates():
    values = torch.tensor([0.5, 0.45, 0.4, 0.42, 0.38, 0.41, 1e12], dtype=torch.float64)
    z = normalise_values(values, mode="min")
    without = normalise_values(values[:-1], mode="min")
    assert (z[:-1].max() - z[:-1].min()) == pytest.approx(float(without.max() - without.min()), rel=0.5)
    assert z[-1] == z.min() and z[-1] > -10  # clipped at the fence, not -1e12
    diverged = NormalisedCurves.from_points([[(1, 0.5), (2, 0.4)], [(1, 0.45), (2, math.nan)], [(1, 0.6), (2, 0.38)]],
                                            t_max=2, mode="min")
    scores = diverged.scores(0.5, 12.0)
    assert torch.isfinite(scores).all() and scores.argmin() == 1


def test_prefix_scores_are_the_weighted_means_of_prefixes():
    curves = NormalisedCurves.from_points([[(1, 0.9), (2, 0.5), (3, 0.4), (4, 0.35)], [(2, 0.8), (4, 0.6)]], t_max=4,
                                          mode="min")
    m0, g0 = 0.6, 8.0
    prefix = curves.prefix_scores(m0, g0)
    for i, n in enumerate(curves.lengths.tolist()):
        for k in range(1, n + 1):
            w = logistic_weights(curves.positions[i, :k], m0, g0)
            assert prefix[i, k - 1].item() == pytest.approx(float((w * curves.values[i, :k]).sum() / w.sum()))
    assert curves.positions[1, :2].tolist() == [0.5, 1.0]  # epochs, not point indices
    batched = curves.prefix_scores(torch.tensor([m0, 0.2]), torch.tensor([g0, 1.0]))
    assert batched.shape == (2, 2, 4) and torch.allclose(batched[0], prefix)
    assert curves.scores(torch.tensor([m0, 0.2]), torch.tensor([g0, 1.0])).shape == (2, 2)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="`mode`"):
        normalise_values(torch.ones(3), mode="maximise")
    with pytest.raises(ValueError, match="`t_max`"):
        NormalisedCurves.from_points([[(1, 0.5)]], t_max=0, mode="min")
    with pytest.raises(ValueError, match="at least one point"):
        NormalisedCurves.from_points([[(1, 0.5)], []], t_max=3, mode="min")


def test_a_logged_metric_is_invariant_to_scaling_and_spreads_the_good_end():
    losses = torch.tensor([0.06, 0.09, 0.3, 0.5, 2.3], dtype=torch.float64)
    logged = normalise_values(losses, "min", log=True)
    assert torch.allclose(normalise_values(1000.0 * losses, "min", log=True), logged)  # a scale is a shift of the log
    assert torch.allclose(logged, normalise_values(losses.log(), "min"))
    plain = normalise_values(losses, "min")
    # the two best losses (a ratio of 1.5) lie further apart, relative to the whole spread, once logged
    gap = lambda z: float((z[0] - z[1]) / (z.max() - z.min()))  # noqa: E731
    assert gap(logged) > 2 * gap(plain)
    curves = [[(1, 0.9), (2, 0.1)], [(1, 0.8), (2, math.nan)]]
    scores = NormalisedCurves.from_points(curves, t_max=2, mode="min", log=True).scores(0.5, 12.0)
    assert torch.isfinite(scores).all() and scores[0] > scores[1]  # a diverged point still reads as the worst


def test_a_metric_at_or_below_zero_is_not_logged_and_says_so():
    values = torch.tensor([0.0, 0.2, 0.5, 1.0], dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match=r"cannot be logged.*log_metric=False"):
        assert torch.equal(normalise_values(values, "min", log=True), normalise_values(values, "min"))
