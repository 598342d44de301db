"""The cost model: recovers known costs, degrades to 'proportional to epochs' with few points."""

import math

import pytest
import torch

from ganno_lightning.boil.cost import CostModel


def test_recovers_a_cost_linear_in_epochs():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, generator=g, dtype=torch.float64)
    epochs = torch.randint(1, 30, (12,), generator=g).double()
    model = CostModel.fit(x, epochs, 2.5 * epochs)
    assert model.log_t_slope == pytest.approx(1.0, abs=1e-9)
    assert model.slopes.abs().max() < 1e-9
    assert model.seconds(torch.full((1, 3), 0.5), torch.tensor([40.0])).item() == pytest.approx(100.0)


def test_recovers_how_cost_grows_along_x_and_epochs():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, 2, generator=g, dtype=torch.float64)
    epochs = torch.randint(1, 50, (40,), generator=g).double()
    seconds = 0.3 * epochs**0.8 * torch.exp(1.5 * x[:, 0])
    model = CostModel.fit(x, epochs, seconds)
    assert model.log_t_slope == pytest.approx(0.8, abs=0.05)
    assert model.slopes[0].item() == pytest.approx(1.5, abs=0.15) and abs(model.slopes[1].item()) < 0.15
    assert model.intercept == pytest.approx(math.log(0.3), abs=0.15)


def test_few_or_no_points_fall_back_to_cost_proportional_to_epochs():
    one = CostModel.fit(torch.tensor([[0.2, 0.4]]), torch.tensor([4.0]), torch.tensor([8.0]))
    assert (one.log_t_slope, one.slopes.tolist(), one.n_points) == (1.0, [0.0, 0.0], 1)
    assert one.seconds(torch.tensor([[0.9, 0.9]]), torch.tensor([10.0])).item() == pytest.approx(20.0)
    none = CostModel.fit(torch.zeros(0, 2), torch.zeros(0), torch.zeros(0))
    assert none.seconds(torch.tensor([[0.5, 0.5]]), torch.tensor([7.0])).item() == pytest.approx(7.0)
    # Unusable rows (no time measured, no epoch done, non-finite) are ignored.
    mixed = CostModel.fit(torch.rand(3, 1, dtype=torch.float64), torch.tensor([2.0, 0.0, 3.0]),
                          torch.tensor([4.0, 1.0, math.nan]))
    assert mixed.n_points == 1
