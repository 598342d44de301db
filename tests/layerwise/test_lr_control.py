import copy
import importlib

import pytest
import torch
from torch import nn

from ganno_lightning import LayerPartition, LayerwiseLR
from ganno_lightning.layerwise import lr_control


def model_and_adam():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(2, 1))
    opt = torch.optim.AdamW(
        [{"params": list(model[0].parameters()) + list(model[1].parameters()), "weight_decay": 0.1, "custom": "x"},
         {"params": model[2].parameters(), "lr": 1e-2, "betas": (0.5, 0.6)}],
        lr=1e-3,
    )
    return model, opt


def take_steps(model, opt, n=3):
    for _ in range(n):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).mean().backward()
        opt.step()


def test_split_keeps_every_hyperparameter_and_the_state():
    model, opt = model_and_adam()
    take_steps(model, opt)
    state_before = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()}
    LayerwiseLR(opt, LayerPartition.from_module(model))
    assert [g["ganno_agent"] for g in opt.param_groups] == [0, 1, 2]
    assert [(g["weight_decay"], g.get("custom"), g["lr"], g["betas"]) for g in opt.param_groups] == [
        (0.1, "x", 1e-3, (0.9, 0.999)), (0.1, "x", 1e-3, (0.9, 0.999)), (0.01, None, 1e-2, (0.5, 0.6))]
    for p in model.parameters():
        for key, value in state_before[id(p)].items():
            torch.testing.assert_close(opt.state[p][key], value)


def test_uncontrolled_parameters_keep_a_group_of_their_own():
    model, opt = model_and_adam()
    partition = LayerPartition.from_module(model, params=model[0].parameters())
    LayerwiseLR(opt, partition)
    assert [g.get("ganno_agent") for g in opt.param_groups] == [None, 0, None]
    assert len(opt.param_groups[0]["params"]) == 2  # model[1]


def test_scale_applies_only_inside_the_step_and_matches_per_layer_lrs():
    model, opt = model_and_adam()
    control = LayerwiseLR(opt, LayerPartition.from_module(model))
    control.set_scales([4.0, 1.0, 0.5])
    twin, _ = model_and_adam()
    twin_opt = torch.optim.AdamW([  # the same run, with the scaled LRs written by hand
        {"params": twin[0].parameters(), "lr": 4e-3, "weight_decay": 0.1},
        {"params": twin[1].parameters(), "lr": 1e-3, "weight_decay": 0.1},
        {"params": twin[2].parameters(), "lr": 5e-3, "betas": (0.5, 0.6)},
    ])
    torch.manual_seed(1)
    take_steps(model, opt)
    torch.manual_seed(1)
    take_steps(twin, twin_opt)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3, 1e-2]
    assert control.effective_lrs() == pytest.approx([4e-3, 1e-3, 5e-3])


def test_scales_are_clipped_and_bounds_checked():
    model, opt = model_and_adam()
    control = LayerwiseLR(opt, LayerPartition.from_module(model), scale_bounds=(0.5, 2.0))
    control.multiply([10.0, 0.01, 1.0])
    assert control.scales == [2.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="`scale_bounds`"):
        LayerwiseLR(opt, LayerPartition.from_module(model), scale_bounds=(0.0, 2.0))


@pytest.mark.parametrize("make", [
    lambda opt: torch.optim.lr_scheduler.StepLR(opt, 2, 0.5),
    lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, [lambda s: 0.9**s, lambda s: 1.0 / (1 + s)]),
    lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10),
    lambda opt: torch.optim.lr_scheduler.SequentialLR(opt, [torch.optim.lr_scheduler.LinearLR(opt, 0.1, total_iters=2),
                                                            torch.optim.lr_scheduler.ExponentialLR(opt, 0.9)], [2]),
    lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.01, 0.1], total_steps=20),
    lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, min_lr=[1e-4, 1e-5]),
], ids=["step", "lambda", "cosine", "sequential", "onecycle", "plateau"])
def test_schedulers_drive_the_split_groups_like_the_originals(make):
    """The base LR of every split group equals its original group's LR under the same scheduler."""
    model, opt = model_and_adam()
    twin, twin_opt = model_and_adam()
    sched, twin_sched = make(opt), make(twin_opt)
    control = LayerwiseLR(opt, LayerPartition.from_module(model), lr_schedulers=[sched])
    for step in range(6):
        for s in (sched, twin_sched):
            s.step(1.0) if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau) else s.step()
        expected = [twin_opt.param_groups[origin]["lr"] for origin in control.group_origin]
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(expected), step


def test_checkpoint_state_folds_back_into_the_original_layout():
    model, opt = model_and_adam()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    control = LayerwiseLR(opt, LayerPartition.from_module(model), lr_schedulers=[sched])
    control.set_scales([2.0, 3.0, 4.0])
    take_steps(model, opt)
    sched.step()
    merged = control.merged_optimizer_state(opt.state_dict())
    merged_sched = control.merged_scheduler_state(sched.state_dict())

    fresh_model, fresh_opt = model_and_adam()
    fresh_sched = torch.optim.lr_scheduler.LambdaLR(fresh_opt, lambda s: 0.5**s)
    fresh_opt.load_state_dict(merged)
    fresh_sched.load_state_dict(merged_sched)
    fresh_model.load_state_dict(model.state_dict())
    for p, q in zip(model.parameters(), fresh_model.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt.state[p][key], fresh_opt.state[q][key])
    assert [g["lr"] for g in fresh_opt.param_groups] == pytest.approx([5e-4, 5e-3])
    assert fresh_sched.base_lrs == [1e-3, 1e-2]


def test_split_groups_are_named_after_their_layer_and_the_users_names_come_back():
    model, _ = model_and_adam()
    weights = [model[i].weight for i in range(3)]
    biases = [model[i].bias for i in range(3)]
    for names, expected in [
        ((None, None), ["pg1/0", "pg1/1", "pg1/2", "pg2/0", "pg2/1", "pg2/2"]),  # one layer in two groups
        (("decay", None), ["decay/0", "decay/1", "decay/2", "pg2/0", "pg2/1", "pg2/2"]),
    ]:
        opt = torch.optim.AdamW([{"params": weights, **({"name": names[0]} if names[0] else {})},
                                 {"params": biases, "weight_decay": 0.0}], lr=1e-3)
        control = LayerwiseLR(opt, LayerPartition.from_module(model))
        assert [g["name"] for g in opt.param_groups] == expected
        saved = control.merged_optimizer_state(opt.state_dict())["param_groups"]
        control.close()
        for groups in (saved, opt.param_groups):  # the checkpoint and the optimizer: the user's own groups
            assert [g.get("name") for g in groups] == list(names)

    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # one group: the layer's name alone
    LayerwiseLR(opt, LayerPartition.from_module(model, params=[*model[0].parameters(), *model[1].parameters()]))
    assert [g.get("name") for g in opt.param_groups] == [None, "0", "1"]  # uncontrolled model[2] left unnamed


def test_foreach_default_is_resolved_once_per_split_group_and_never_saved():
    model, _ = model_and_adam()
    opt = torch.optim.Adam([{"params": model[0].parameters()}, {"params": model[1].parameters(), "foreach": True},
                            {"params": model[2].parameters(), "foreach": False}], lr=1e-3)
    assert [g["foreach"] for g in opt.param_groups] == [None, True, False]
    control = LayerwiseLR(opt, LayerPartition.from_module(model))
    # what torch picks for these CPU params on each step; the user's own choices stay
    assert [g["foreach"] for g in opt.param_groups] == [False, True, False]
    take_steps(model, opt, 2)
    saved = control.merged_optimizer_state(opt.state_dict())["param_groups"]
    assert [g["foreach"] for g in saved] == [None, True, False]
    control.close()
    assert [g["foreach"] for g in opt.param_groups] == [None, True, False]


def test_foreach_is_pinned_only_where_torch_would_pick_the_same(monkeypatch):
    # as on a GPU: torch's default is foreach=True for these parameters
    monkeypatch.setattr(importlib.import_module("torch.optim.optimizer"), "_default_to_fused_or_foreach",
                        lambda *args, **kwargs: (False, True))
    model, _ = model_and_adam()
    cases = {
        "default": (torch.optim.SGD(model[0].parameters(), lr=0.1), True),
        "fused=False": (torch.optim.SGD(model[1].parameters(), lr=0.1, fused=False), None),  # torch: single-tensor
        "Adafactor": (torch.optim.Adafactor(model[2].parameters(), lr=0.1), None),  # None means off there
        "tensor lr": (torch.optim.Adam(model[2].parameters(), lr=torch.tensor(0.1)), None),
    }
    for name, (opt, expected) in cases.items():
        before = dict(opt.param_groups[0])
        LayerwiseLR(opt, LayerPartition.from_module(model, params=[p for g in opt.param_groups for p in g["params"]]))
        assert opt.param_groups[0].get("foreach") == (expected if expected is not None else before.get("foreach")), name


def test_close_restores_the_original_groups_and_schedulers():
    model, opt = model_and_adam()
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)
    groups_before = [[id(p) for p in g["params"]] for g in opt.param_groups]
    control = LayerwiseLR(opt, LayerPartition.from_module(model), lr_schedulers=[sched])
    control.set_scales([8.0, 8.0, 8.0])
    take_steps(model, opt, 1)
    sched.step()
    control.close()
    assert [[id(p) for p in g["params"]] for g in opt.param_groups] == groups_before
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-4, 5e-3])
    assert sched.base_lrs == [1e-3, 1e-2]
    before = [p.clone() for p in model.parameters()]
    take_steps(model, opt, 1)  # no hook left: a plain step
    assert all("ganno_agent" not in g for g in opt.param_groups)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_works_with_any_torch_optimizer():
    for make in (lambda p: torch.optim.RMSprop(p, lr=0.01), lambda p: torch.optim.Adagrad(p, lr=0.01),
                 lambda p: torch.optim.SGD(p, lr=0.01, nesterov=True, momentum=0.9),
                 lambda p: torch.optim.Adam(p, lr=0.01, foreach=False), lambda p: torch.optim.NAdam(p, lr=0.01)):
        model, _ = model_and_adam()
        opt = make(model.parameters())
        control = LayerwiseLR(opt, LayerPartition.from_module(model))
        control.set_scales([0.5, 1.0, 2.0])
        take_steps(model, opt, 2)
        assert all(torch.isfinite(p).all() for p in model.parameters())
        assert [g["lr"] for g in opt.param_groups] == [0.01] * 3


def test_a_step_that_raises_leaks_no_scaled_lr():
    from ganno_lightning import LayerwiseController

    model, opt = model_and_adam()
    control = LayerwiseController(model, opt, action_multipliers=[4.0], interval=100)
    control.apply([0, 0, 0])

    def failing_closure():
        raise FloatingPointError("boom")

    with pytest.raises(FloatingPointError):
        opt.step(failing_closure)
    assert [g["lr"] for g in opt.param_groups] == [4e-3, 4e-3, 4e-2]  # the pre hook ran, the post hook did not
    merged = control.lr.merged_optimizer_state(opt.state_dict())
    assert [g["lr"] for g in merged["param_groups"]] == [1e-3, 1e-2]  # checkpoints never see scaled LRs
    control.recover_from_exception()
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3, 1e-2]
    take_steps(model, opt, 1)  # the hooks work again: the step counts and is scaled
    assert control.step == 1
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3, 1e-2]
    control.close()
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-2]


def test_groups_added_after_the_split_survive_checkpoints_and_close():
    model, opt = model_and_adam()
    extra = nn.Linear(2, 2)
    control = LayerwiseLR(opt, LayerPartition.from_module(model))
    opt.add_param_group({"params": extra.parameters(), "lr": 5e-4})  # e.g. BackboneFinetuning unfreezing
    take_steps(model, opt, 1)
    extra.weight.grad = torch.ones(2, 2)
    opt.step()
    merged = control.merged_optimizer_state(opt.state_dict())
    assert len(merged["param_groups"]) == 3 and merged["param_groups"][2]["lr"] == 5e-4
    assert len(merged["state"]) == 6 + 1  # every parameter with state, the new weight included
    control.close()
    assert len(opt.param_groups) == 3 and opt.param_groups[2]["params"] == list(extra.parameters())


def seeded_steps(model, opt, n, seed=0):
    """Like take_steps, with inputs that depend only on `seed` (two models see the same batches)."""
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    for _ in range(n):
        opt.zero_grad()
        model(torch.randn(5, 3, generator=generator).to(device)).pow(2).mean().backward()
        opt.step()


def test_adam_left_to_torchs_default_runs_the_fused_kernel_where_it_is_switched_on(monkeypatch):
    # On a GPU (FUSED_DEVICE_TYPES) split Adam groups run torch's fused kernel: 2 launches per group
    # instead of foreach's 7 and 5 host ops. Switched on for the CPU here to test it without one.
    monkeypatch.setattr(lr_control, "FUSED_DEVICE_TYPES", ("cpu",))
    torch.manual_seed(0)
    model, _ = model_and_adam()
    reference = copy.deepcopy(model)
    opt = torch.optim.Adam([{"params": model[0].parameters()}, {"params": model[1].parameters(), "foreach": False},
                            {"params": model[2].parameters()}], lr=1e-3, weight_decay=0.1)
    ref_opt = torch.optim.Adam([{"params": reference[0].parameters()}, {"params": reference[1].parameters(),
                                "foreach": False}, {"params": reference[2].parameters()}], lr=1e-3, weight_decay=0.1)
    seeded_steps(model, opt, 1)  # state from before the split: its CPU step counters move to the fused groups' device
    seeded_steps(reference, ref_opt, 1)
    for i in (0, 2):  # the reference: torch's fused Adam from here on, in the user's groups
        ref_opt.param_groups[i].update(fused=True, foreach=False)
    control = LayerwiseLR(opt, LayerPartition.from_module(model))
    assert [(g["foreach"], g["fused"]) for g in opt.param_groups] == [(False, True), (False, None), (False, True)]
    seeded_steps(model, opt, 3)
    seeded_steps(reference, ref_opt, 3)
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)
    assert all(opt.state[p]["step"].dtype == torch.float32 for p in model.parameters())
    saved = control.merged_optimizer_state(opt.state_dict())
    assert [(g["foreach"], g["fused"]) for g in saved["param_groups"]] == [(None, None), (False, None), (None, None)]
    assert all(s["step"].device.type == "cpu" and s["step"].item() == 4 for s in saved["state"].values())
    control.close()
    assert [(g["foreach"], g["fused"]) for g in opt.param_groups] == [(None, None), (False, None), (None, None)]
    seeded_steps(model, opt, 1)  # torch's own default again, with the counters where it keeps them
    assert all(opt.state[p]["step"].item() == 5 for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_adam_on_a_gpu_runs_the_fused_kernel_and_gives_its_step_counters_back_to_the_cpu():
    model, _ = model_and_adam()
    model = model.cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    seeded_steps(model, opt, 1)
    control = LayerwiseLR(opt, LayerPartition.from_module(model))
    assert all(g["fused"] and not g["foreach"] for g in opt.param_groups)
    assert all(opt.state[p]["step"].device.type == "cuda" for p in model.parameters())
    seeded_steps(model, opt, 2)
    saved = control.merged_optimizer_state(opt.state_dict())
    assert all(s["step"].device.type == "cpu" for s in saved["state"].values())
    control.close()
    assert opt.param_groups[0]["fused"] is None and opt.param_groups[0]["foreach"] is None
    steps = [opt.state[p]["step"] for p in model.parameters()]
    assert all(step.device.type == "cpu" and step.item() == 3 for step in steps)
