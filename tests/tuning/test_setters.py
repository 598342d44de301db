"""Hyperparameter setters on real optimizers and schedulers (a minimal trainer stand-in holds them)."""

from types import SimpleNamespace

import pytest
import torch

from ganno_lightning.tuning.setters import (
    CallbackAttribute,
    FunctionSetter,
    ModuleAttribute,
    OptimizerHyperparameter,
    resolve_setters,
)


def _trainer(optimizer, scheduler=None, callbacks=()):
    configs = [SimpleNamespace(scheduler=scheduler)] if scheduler is not None else []
    return SimpleNamespace(optimizers=[optimizer], lr_scheduler_configs=configs, callbacks=list(callbacks))


def _params():
    return [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]


def test_lr_sets_every_group_without_a_scheduler():
    a, b = _params()
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    setter = resolve_setters(["lr"])["lr"]
    setter.apply(_trainer(opt), None, 0.03)
    assert [g["lr"] for g in opt.param_groups] == [0.03, 0.03]
    assert setter.read(_trainer(opt), None) == 0.03


def test_lr_keeps_the_schedule_position_and_sets_base_lrs():
    opt = torch.optim.SGD(_params(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(2):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    trainer = _trainer(opt, sched)
    resolve_setters(["lr"])["lr"].apply(trainer, None, 0.4)
    assert sched.base_lrs == [0.4] and opt.param_groups[0]["initial_lr"] == 0.4
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # 0.4 x the schedule's factor 0.25
    assert sched.get_last_lr() == [pytest.approx(0.1)]
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # the schedule continues from the new base


def test_lr_with_a_tensor_lr_updates_in_place():
    opt = torch.optim.Adam(_params(), lr=torch.tensor(0.01))
    resolve_setters(["lr"])["lr"].apply(_trainer(opt), None, 0.2)
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor) and float(opt.param_groups[0]["lr"]) == pytest.approx(0.2)


def test_momentum_betas_weight_decay():
    adam = torch.optim.AdamW(_params(), lr=0.01)
    setters = resolve_setters(["momentum", "beta2", "weight_decay"])
    trainer = _trainer(adam)
    setters["momentum"].apply(trainer, None, 0.8)
    setters["beta2"].apply(trainer, None, 0.95)
    setters["weight_decay"].apply(trainer, None, 0.1)
    group = adam.param_groups[0]
    assert group["betas"] == (0.8, 0.95) and group["weight_decay"] == 0.1
    sgd = torch.optim.SGD(_params(), lr=0.1, momentum=0.9)
    setters["momentum"].apply(_trainer(sgd), None, 0.5)
    assert sgd.param_groups[0]["momentum"] == 0.5
    with pytest.raises(ValueError, match="`beta2` sets param-group key `betas`, but group 0 of optimizer 0 \\(SGD\\)"):
        setters["beta2"].validate(_trainer(sgd), None, "beta2")
    with pytest.raises(ValueError, match="needs an optimizer"):
        OptimizerHyperparameter("lr").validate(SimpleNamespace(optimizers=[]), None, "lr")


def test_module_and_callback_attributes():
    module = torch.nn.Sequential(torch.nn.Dropout(0.1))
    module.window = 5
    setters = resolve_setters(
        ["p", "window", "interval"],
        {"p": ModuleAttribute("0.p"), "window": "module:window", "interval": "callback:Agent.interval"},
    )

    class Agent:
        interval = 10

    agent = Agent()
    trainer = _trainer(torch.optim.SGD(_params(), lr=0.1), callbacks=[agent])
    for name, setter in setters.items():
        setter.validate(trainer, module, name)
    setters["p"].apply(trainer, module, 0.3)
    setters["window"].apply(trainer, module, 7.6)
    setters["interval"].apply(trainer, module, 19.4)
    assert module[0].p == 0.3 and module.window == 8 and agent.interval == 19
    with pytest.raises(ValueError, match="sets `Sequential.missing.p`, which does not exist"):
        ModuleAttribute("missing.p").validate(trainer, module, "p")
    with pytest.raises(ValueError, match="named `Nope`"):
        CallbackAttribute("Nope", "x").validate(trainer, module, "x")


def test_resolve_setters_errors_and_callables():
    with pytest.raises(ValueError, match="Unknown hyperparameter `temperature`: it is not built in"):
        resolve_setters(["temperature"])
    with pytest.raises(ValueError, match="must look like 'module:attr.path'"):
        resolve_setters(["t"], {"t": "attr:t"})
    seen = []
    setter = resolve_setters(["t"], {"t": lambda trainer, module, value: seen.append(value)})["t"]
    assert isinstance(setter, FunctionSetter)
    setter.apply(None, None, 0.5)
    assert seen == [0.5]
