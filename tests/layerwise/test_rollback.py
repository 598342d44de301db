import math

import pytest
import torch

from ganno_lightning.layerwise.rollback import MAX_ROLLBACKS_IN_A_ROW, SpikeRollback, SpikeRule, check_spike_rule

MEMORY = pytest.mark.parametrize("memory", ["host", "device"])


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


@MEMORY
def test_a_spike_puts_back_weights_buffers_and_optimizer_state_in_place(memory):
    model, optimizer, steps = adam_run()
    rollback = SpikeRollback(model, optimizer, spike_factor=3.0, memory=memory)
    steps(3)
    assert not rollback.check(1.0)  # a good interval: the rollback point
    saved_tensors, saved_state = snapshot(model, optimizer)
    params = list(model.parameters())
    steps(5)
    assert rollback.check(3.5)  # above 3 x the lowest interval mean, 1.0
    tensors, state = snapshot(model, optimizer)
    assert all(torch.equal(a, b) for a, b in zip(tensors, saved_tensors))  # BatchNorm statistics too
    assert {i: set(s) for i, s in state.items()} == {i: set(s) for i, s in saved_state.items()}
    assert all(torch.equal(state[i][k], saved_state[i][k]) for i in state for k in state[i])  # moments and step
    assert all(a is b for a, b in zip(model.parameters(), params))  # the optimizer's params, still the model's
    assert rollback.rollbacks == 1 and not rollback.check(2.9)
    steps(2)
    assert rollback.check(math.nan)  # the state restored by a rollback is a rollback point like any other
    assert all(torch.equal(a, b) for a, b in zip(snapshot(model, optimizer)[0], saved_tensors))


@MEMORY
def test_a_spike_in_the_first_interval_goes_back_to_before_any_update(memory):
    model, optimizer, steps = adam_run()
    initial, _ = snapshot(model, optimizer)
    rollback = SpikeRollback(model, optimizer, memory=memory)
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


def test_a_loss_below_zero_has_no_scale_to_spike_against_only_non_finite_losses_roll_back():
    model, optimizer, _ = adam_run()
    rollback = SpikeRollback(model, optimizer, spike_factor=2.0)
    assert not rollback.check(-1.0) and not rollback.check(-3.0)  # falling: never a spike
    assert not rollback.check(4.0) and rollback.lowest_loss == -3.0  # rising, but no multiple of -3 bounds it
    assert rollback.check(math.inf) and rollback.rollbacks == 1
    rollback = SpikeRollback(model, optimizer, spike_factor=2.0)
    assert not rollback.check(0.0) and not rollback.check(5.0)  # nor a multiple of 0


def test_a_resumed_rule_remembers_its_lowest_loss_count_and_series():
    model, optimizer, _ = adam_run()
    rollback = SpikeRollback(model, optimizer, spike_factor=2.0)
    rollback.check(1.0)
    assert all(rollback.check(5.0) for _ in range(MAX_ROLLBACKS_IN_A_ROW - 1))
    resumed = SpikeRollback(model, optimizer, spike_factor=2.0)
    resumed.load_state_dict(rollback.state_dict())
    assert (resumed.lowest_loss, resumed.rollbacks) == (1.0, MAX_ROLLBACKS_IN_A_ROW - 1)
    assert [resumed.check(5.0), resumed.check(5.0)] == [True, False]  # the series ends at the cap, as it would have


@pytest.mark.parametrize("kwargs, match", [
    (dict(spike_factor=1.0), r"`spike_factor` must be a number > 1 .* got 1.0"),
    (dict(spike_lr_cut=1.5), r"`spike_lr_cut` must be in \(0, 1\) .* got 1.5"),
    (dict(memory="gpu"), r"`memory` must be one of \['host', 'device'\] .*got 'gpu'"),
])
def test_bad_settings_name_the_argument(kwargs, match):
    model, optimizer, _ = adam_run()
    with pytest.raises(ValueError, match=match):
        SpikeRollback(model, optimizer, **kwargs)


def test_host_copies_reuse_their_buffers_from_one_decision_to_the_next():
    model, optimizer, steps = adam_run()
    rollback = SpikeRollback(model, optimizer)
    steps(1)
    rollback.check(1.0)  # the first save with optimizer state
    pointers = [b.data_ptr() for name in ("params", "state") for b in rollback._copy._host._buffers[name]]
    steps(2)
    rollback.check(1.0)
    assert [b.data_ptr() for name in ("params", "state") for b in rollback._copy._host._buffers[name]] == pointers


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_host_copies_take_no_device_memory_and_come_back_exactly():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.BatchNorm1d(1024), torch.nn.Linear(1024, 1)).cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

    def steps(n):
        for _ in range(n):
            loss = model(torch.randn(64, 256, device="cuda")).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    rollback = SpikeRollback(model, optimizer)
    steps(2)
    before = torch.cuda.memory_allocated()
    rollback.check(1.0)
    assert torch.cuda.memory_allocated() == before  # the copy is in pinned host memory
    saved_tensors, saved_state = snapshot(model, optimizer)
    steps(3)
    assert rollback.check(math.nan)
    tensors, state = snapshot(model, optimizer)
    assert all(torch.equal(a, b) for a, b in zip(tensors, saved_tensors))
    assert {i: set(s) for i, s in state.items()} == {i: set(s) for i, s in saved_state.items()}
    assert all(torch.equal(state[i][k], saved_state[i][k]) for i in state for k in state[i])
    steps(1)  # and the optimizer (fused or foreach) steps on from the restored state


@MEMORY
def test_a_rollback_keeps_the_memory_layout_and_identity_of_optimizer_state(memory):
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

    def step():
        loss = model(torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    rollback = SpikeRollback(model, optimizer, memory=memory)
    rollback.check(1.0)
    saved = optimizer.state[model.weight]["exp_avg"].clone()
    step()
    assert rollback.check(math.nan)
    restored = optimizer.state[model.weight]["exp_avg"]
    assert torch.equal(restored, saved) and restored.stride() == model.weight.stride()  # still channels_last
    step()


def test_a_spike_rule_reads_true_a_mapping_or_a_rule_and_names_what_is_wrong():
    assert check_spike_rule(True) == SpikeRule() and check_spike_rule(None) is None and check_spike_rule(False) is None
    assert check_spike_rule({"spike_factor": 5}) == SpikeRule(spike_factor=5.0)
    assert check_spike_rule(SpikeRule(spike_factor=5.0).to_dict()) == SpikeRule(spike_factor=5.0)
    with pytest.raises(ValueError, match=r"`deploy.recover_on_spike` has unknown keys \['factor'\]"):
        check_spike_rule({"factor": 5}, "deploy.recover_on_spike")
    with pytest.raises(ValueError, match=r"`deploy.recover_on_spike`: `spike_factor` must be a number > 1"):
        check_spike_rule({"spike_factor": 0.5}, "deploy.recover_on_spike")
    with pytest.raises(ValueError, match=r"`recover_on_spike` must be True, False/None, a SpikeRule or a mapping"):
        check_spike_rule("yes")
