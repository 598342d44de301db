import math

import pytest
import torch

from ganno_lightning.layerwise.rollback import MAX_ROLLBACKS_IN_A_ROW, SpikeRollback


def adam_run():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

    def steps(n):
        for _ in range(n):
            loss = model(torch.randn(8, 3)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return model, optimizer, steps


def snapshot(model, optimizer):
    return ([t.detach().clone() for t in [*model.parameters(), *model.buffers()]],
            {i: {k: v.clone() for k, v in optimizer.state[p].items()} for i, p in enumerate(model.parameters())})


def test_a_spike_puts_back_weights_buffers_and_optimizer_state_in_place():
    model, optimizer, steps = adam_run()
    rollback = SpikeRollback(model, optimizer, spike_factor=3.0)
    steps(3)
    assert not rollback.check(1.0)  # a good interval: the rollback point
    saved_tensors, saved_state = snapshot(model, optimizer)
    params = list(model.parameters())
    steps(5)
    assert rollback.check(3.5)  # above 3 x the lowest interval mean, 1.0
    tensors, state = snapshot(model, optimizer)
    assert all(torch.equal(a, b) for a, b in zip(tensors, saved_tensors))  # BatchNorm statistics too
    assert all(torch.equal(state[i][k], saved_state[i][k]) for i in state for k in state[i])  # moments and step
    assert all(a is b for a, b in zip(model.parameters(), params))  # the optimizer's params, still the model's
    assert rollback.rollbacks == 1 and not rollback.check(2.9)


def test_a_spike_in_the_first_interval_goes_back_to_before_any_update():
    model, optimizer, steps = adam_run()
    initial, _ = snapshot(model, optimizer)
    rollback = SpikeRollback(model, optimizer)
    steps(4)
    assert rollback.check(float("inf"))
    assert all(torch.equal(a, b) for a, b in zip(snapshot(model, optimizer)[0], initial))
    assert not any(optimizer.state.values())  # Adam starts over, as at the first step
    steps(1)  # and can step again


def test_a_finite_level_that_keeps_spiking_becomes_the_new_normal_but_nan_never_does():
    model, optimizer, _ = adam_run()
    rollback = SpikeRollback(model, optimizer, spike_factor=2.0)
    rollback.check(1.0)
    assert [rollback.check(5.0) for _ in range(MAX_ROLLBACKS_IN_A_ROW + 1)] == [True] * MAX_ROLLBACKS_IN_A_ROW + [False]
    assert rollback.lowest_loss == 5.0 and rollback.check(11.0) and not rollback.check(9.0)
    assert all(rollback.check(math.nan) for _ in range(MAX_ROLLBACKS_IN_A_ROW + 2))


@pytest.mark.parametrize("kwargs, match", [
    (dict(spike_factor=1.0), r"`spike_factor` must be a number > 1 .* got 1.0"),
    (dict(spike_lr_cut=1.5), r"`spike_lr_cut` must be in \(0, 1\) .* got 1.5"),
])
def test_bad_settings_name_the_argument(kwargs, match):
    model, optimizer, _ = adam_run()
    with pytest.raises(ValueError, match=match):
        SpikeRollback(model, optimizer, **kwargs)
