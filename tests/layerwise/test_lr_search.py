"""The initial LR search: short trials at factors of the user's LR, all undone, the fit starting at the best."""

import copy
import math
import random

import numpy as np

import pytest
import torch
from helpers import (NaNLossWindow, NoisyRegressor, TinyRegressor, ValidatedRegressor, identity_agent, regression_data,
                     trainer)
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

from ganno_lightning import GANNOAgent, GANNOCallback
from ganno_lightning.layerwise.agent import FORMAT_VERSION
from ganno_lightning.layerwise.lr_search import InitialLRSearch, check_lr_search, collect_batches


# -- settings -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, r"`steps` must be a positive int, got 0"),
    ({"held_batches": 2.5}, r"`held_batches` must be a positive int, got 2.5"),
    ({"factors": (0.1, 3.0)}, r"`factors` must be distinct and include 1.0 .*got \[0.1, 3.0\]"),
    ({"factors": (1.0, 1.0, 3.0)}, r"`factors` must be distinct"),
    ({"factors": (1.0, -3.0)}, r"`factors` must be a non-empty sequence of finite numbers > 0 .*got \(1.0, -3.0\)"),
    ({"factors": ()}, r"`factors` must be a non-empty sequence"),
])
def test_bad_settings_are_rejected_with_the_argument_and_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InitialLRSearch(**kwargs)


def test_settings_from_the_callback_or_a_config():
    assert check_lr_search(None) is None and check_lr_search(False) is None
    assert check_lr_search(True) == InitialLRSearch()
    assert check_lr_search({"steps": 20, "factors": [1, 10]}) == InitialLRSearch(20, (1.0, 10.0))
    with pytest.raises(ValueError, match=r"`agent.lr_search` has unknown keys \['step'\]"):
        check_lr_search({"step": 20}, "agent.lr_search")
    with pytest.raises(ValueError, match=r"`lr_search`: `steps` must be a positive int, got -1"):
        check_lr_search({"steps": -1})
    with pytest.raises(ValueError, match=r"`lr_search` must be True, False/None, an InitialLRSearch or a mapping"):
        check_lr_search("yes")
    search = InitialLRSearch(7, (0.5, 1.0), 2)
    assert check_lr_search(search.to_dict()) == search


def test_the_lowest_finite_score_wins_and_ties_go_to_the_users_lr():
    search = InitialLRSearch()
    assert search.choose({0.1: 0.9, 0.3: 0.4, 1.0: 0.5, 3.0: math.inf}) == 0.3
    assert search.choose({0.3: 0.5, 1.0: 0.5, 3.0: 0.5}) == 1.0
    assert search.choose({0.1: 0.5, 10.0: 0.5}) == 0.1  # equally far from 1 in log: the first
    assert search.choose({0.1: math.inf, 1.0: math.nan}) == 1.0


def test_collect_batches_holds_out_the_first_ones():
    assert collect_batches(range(10), held=3, train=4) == ([0, 1, 2], [3, 4, 5, 6])
    assert collect_batches(range(2), held=3, train=4) == ([0, 1], [])


# -- the trials, without Lightning ---------------------------------------------------------------
def _problem(lr):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    x = torch.randn(96, 4)
    y = (x @ torch.tensor([1.0, -2.0, 0.5, 3.0])).unsqueeze(-1)
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 96, 16)]
    return model, optimizer, batches, (lambda batch: nn.functional.mse_loss(model(batch[0]), batch[1]))


def test_the_trials_leave_weights_buffers_optimizer_state_and_rng_as_they_were():
    model, optimizer, batches, loss_of = _problem(1e-3)
    for batch in batches[:3]:  # some optimizer state to keep
        optimizer.zero_grad(); loss_of(batch).backward(); optimizer.step()
    before = copy.deepcopy(model.state_dict())
    grads = [p.grad.clone() for p in model.parameters()]  # the last step's, left in place
    state_before = copy.deepcopy(optimizer.state_dict()["state"])
    rng = torch.random.get_rng_state()
    result = InitialLRSearch(steps=5, factors=(1.0, 30.0, 1e6), held_batches=2).run(
        model, optimizer, loss_of, batches[2:], batches[:2])
    assert set(result.scores) == {1.0, 30.0, 1e6} and result.reason is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm statistics too
    state_after = optimizer.state_dict()["state"]
    assert all(torch.equal(state_before[i][k], state_after[i][k]) for i in state_before for k in state_before[i])
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert model.training and all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * result.factor)


class _CountingAdam(torch.optim.Adam):
    """Adam that also updates a param-group value of its own each step (as Prodigy's ``d`` is)."""

    def step(self, closure=None):
        for group in self.param_groups:
            group["d"] = group.get("d", 1.0) * 2
        return super().step(closure)


def test_the_trials_leave_submodule_modes_group_values_and_other_rngs_as_they_were():
    model, _, batches, loss_of = _problem(1e-3)
    optimizer = _CountingAdam(model.parameters(), lr=1e-3)
    model[1].eval()  # a frozen BatchNorm: it must stay in eval mode for the fit
    python_state, numpy_state = random.getstate(), np.random.get_state()

    def noisy_loss(batch):  # draws from Python's and NumPy's RNGs, as data augmentation would
        random.random(); np.random.rand()
        return loss_of(batch)

    InitialLRSearch(steps=3, factors=(1.0, 3.0), held_batches=1).run(model, optimizer, noisy_loss, batches[1:],
                                                                     batches[:1])
    assert model.training and not model[1].training
    assert "d" not in optimizer.param_groups[0]
    assert random.getstate() == python_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))


def test_a_far_too_low_lr_is_raised_and_a_diverging_trial_is_never_chosen():
    model, optimizer, batches, loss_of = _problem(1e-5)
    result = InitialLRSearch(steps=20, factors=(1.0, 100.0, 1e9), held_batches=2).run(
        model, optimizer, loss_of, batches[2:], batches[:2])
    assert result.scores[100.0] < result.scores[1.0]
    assert result.factor == 100.0 and not result.scores[1e9] < result.scores[100.0]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_an_optimizer_that_needs_a_closure_trains_in_the_trials():
    model, _, batches, loss_of = _problem(1e-3)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=2)
    result = InitialLRSearch(steps=5, factors=(1.0, 3.0), held_batches=2).run(
        model, optimizer, loss_of, batches[2:], batches[:2])
    assert result.reason is None and all(math.isfinite(v) for v in result.scores.values())


def test_no_batches_to_train_on_keeps_the_users_lr():
    model, optimizer, batches, loss_of = _problem(1e-3)
    result = InitialLRSearch().run(model, optimizer, loss_of, [], batches[:1])
    assert result.factor == 1.0 and "too few batches: 1 to score on (of held_batches=4) and 0 to train" in result.reason
    assert optimizer.param_groups[0]["lr"] == 1e-3


# -- in a Trainer --------------------------------------------------------------------------------
def _fit(model, callback, **kwargs):
    trainer(max_epochs=2, callbacks=[callback], **kwargs).fit(model)
    return model.losses


class _SeededNoisyRegressor(NoisyRegressor):
    """Shuffled by a generator of the loader's own (as the zoo's tasks are), not the global RNG."""

    def train_dataloader(self):
        return DataLoader(regression_data(), batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("module", [NoisyRegressor, _SeededNoisyRegressor])
def test_a_fit_after_the_search_is_the_fit_that_starts_at_the_chosen_lr(module):
    # BatchNorm, dropout and a shuffling loader: any state the trials left behind would change the fit.
    search = InitialLRSearch(steps=6, factors=(1.0, 10.0, 100.0), held_batches=2)
    searched = GANNOCallback(identity_agent(4), lr_search=search)
    torch.manual_seed(1)
    model = module(optimizer="adam", lr=1e-4)
    losses = _fit(model, searched)[len(search.factors) * (search.steps + search.held_batches):]  # after the trials
    factor = searched.lr_search_result.factor
    assert factor > 1.0  # 1e-4 is far too low for Adam here
    unsearched = GANNOCallback(identity_agent(4))  # (building an agent seeds torch: before the fit's seed)
    torch.manual_seed(1)
    plain = module(optimizer="adam", lr=1e-4 * factor)
    assert _fit(plain, unsearched) == pytest.approx(losses, rel=1e-6)


def test_the_search_scores_on_validation_batches_when_there_are_some(monkeypatch):
    seen = {}
    original = InitialLRSearch.run

    def spy(self, model, optimizer, loss_of, train_batches, held_batches, reduce_fn=None):
        seen["held"], seen["train"] = held_batches, train_batches
        return original(self, model, optimizer, loss_of, train_batches, held_batches, reduce_fn)

    monkeypatch.setattr(InitialLRSearch, "run", spy)
    search = InitialLRSearch(steps=3, factors=(1.0, 2.0), held_batches=2)
    _fit(ValidatedRegressor(), GANNOCallback(identity_agent(4), lr_search=search))
    assert [len(b[0]) for b in seen["held"]] == [16, 16]  # the validation loader's batch size
    assert len(seen["train"]) == 3
    _fit(TinyRegressor(), GANNOCallback(identity_agent(4), lr_search=search))
    assert [len(b[0]) for b in seen["held"]] == [8, 8]  # without one: the first training batches, held out
    assert not any(torch.equal(seen["held"][0][0], b[0]) for b in seen["train"])


class _TwoLoaderRegressor(ValidatedRegressor):
    """Trains on two loaders at once (a dict of batches), and validates on one."""

    def training_step(self, batch, batch_idx):
        return sum(super(_TwoLoaderRegressor, self).training_step(part, batch_idx) for part in batch.values())

    def train_dataloader(self):
        return {"a": DataLoader(regression_data(), batch_size=8), "b": DataLoader(regression_data(seed=2), batch_size=8)}


def test_with_several_training_loaders_the_search_scores_on_their_combined_batches(monkeypatch, caplog):
    seen = {}
    original = InitialLRSearch.run

    def spy(self, model, optimizer, loss_of, train_batches, held_batches, reduce_fn=None):
        seen["held"] = held_batches
        return original(self, model, optimizer, loss_of, train_batches, held_batches, reduce_fn)

    monkeypatch.setattr(InitialLRSearch, "run", spy)
    with caplog.at_level("INFO"):
        _fit(_TwoLoaderRegressor(), GANNOCallback(identity_agent(4), lr_search={"steps": 2, "held_batches": 1}))
    assert set(seen["held"][0]) == {"a", "b"}  # a combined training batch, not a validation batch
    assert "loss on 1 held-out training batches after 2 steps" in caplog.text


class _PersistentWorkersRegressor(TinyRegressor):
    def train_dataloader(self):
        return DataLoader(regression_data(), batch_size=self.batch_size, shuffle=True, num_workers=1,
                          persistent_workers=True)


def test_persistent_workers_give_the_fit_every_batch_of_its_first_epoch():
    # Lightning opens the loader's (persistent) iterator before the search: reading that one would eat batches
    model = _PersistentWorkersRegressor()
    fit = trainer(max_epochs=2, callbacks=[GANNOCallback(identity_agent(4), lr_search={"steps": 5, "held_batches": 2})])
    fit.fit(model)
    assert fit.global_step == 2 * len(model.train_dataloader()) == 16


class _SkipsEveryThirdBatch(TinyRegressor):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.indices: list[int] = []

    def training_step(self, batch, batch_idx):
        self.indices.append(batch_idx)
        return None if batch_idx % 3 == 0 else super().training_step(batch, batch_idx)


def test_the_search_hands_each_batch_its_index_in_the_pass_and_stops_at_the_fits_batch_limit():
    model = _SkipsEveryThirdBatch(lr=1e-3)
    callback = GANNOCallback(identity_agent(4), lr_search={"steps": 6, "factors": [1.0, 10.0], "held_batches": 2})
    trainer(max_epochs=1, limit_train_batches=4, callbacks=[callback]).fit(model)
    result = callback.lr_search_result
    assert result.reason is None and all(math.isfinite(v) for v in result.scores.values())
    trial = model.indices[:8]  # a trial: 6 steps cycling batches 2-3 of the 4 the fit sees (0-1 held, never
    assert trial == [2, 3, 2, 3, 2, 3, 0, 1]  # trained on), then the score on 0-1


def test_a_search_that_could_score_nothing_says_so_and_keeps_your_lr():
    callback = GANNOCallback(identity_agent(4), lr_search={"steps": 2, "factors": [1.0, 10.0], "held_batches": 1})
    with pytest.warns(UserWarning, match=r"no initial LR search: no trial could be scored: every trial's held-out"
                                         r" loss was non-finite"):
        trainer(max_steps=1, callbacks=[callback]).fit(NaNLossWindow(0, 1, lr=0.01))  # NaN until the first update
    assert callback.lr_search_result.factor == 1.0 and callback.schedule.rows()[0][2] == pytest.approx(0.01)


def test_fast_dev_run_checks_the_code_without_a_search(caplog):
    callback = GANNOCallback(identity_agent(4), lr_search=True)
    with caplog.at_level("INFO"):
        trainer(fast_dev_run=True, callbacks=[callback]).fit(TinyRegressor())
    assert callback.lr_search_result is None and "no initial LR search under `fast_dev_run`" in caplog.text


def test_a_scheduler_of_yours_keeps_its_lrs_and_says_so(caplog):
    callback = GANNOCallback(identity_agent(4), lr_search=True)
    with caplog.at_level("INFO"):
        _fit(TinyRegressor(scheduler="lambda"), callback)
    assert callback.lr_search_result is None
    assert "no initial LR search: your optimizer has an LR scheduler" in caplog.text


def test_a_trial_that_raises_leaves_the_fit_at_your_lr_with_a_warning(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no such batch")

    monkeypatch.setattr(InitialLRSearch, "_trial", broken)
    model = TinyRegressor(lr=0.01)
    initial = [p.detach().clone() for p in model.parameters()]
    callback = GANNOCallback(identity_agent(4), lr_search=True)
    with pytest.warns(UserWarning, match=r"no initial LR search: a trial raised RuntimeError: no such batch .*"
                                         r"`lr_search=False`.*the fit starts at your LR"):
        trainer(max_steps=1, callbacks=[callback]).fit(model)
    assert callback.lr_search_result.factor == 1.0 and callback.schedule.rows()[0][2] == pytest.approx(0.01)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), initial))  # the fit itself trained


def test_the_chosen_factor_is_logged_and_a_resumed_fit_does_not_search_again(tmp_path, caplog):
    search = InitialLRSearch(steps=4, factors=(1.0, 10.0), held_batches=1)
    model = TinyRegressor(lr=1e-4)
    callback = GANNOCallback(identity_agent(4), lr_search=search)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit = trainer(max_epochs=1, callbacks=[callback, checkpoint], logger=CSVLogger(tmp_path), enable_checkpointing=True)
    fit.fit(model)
    assert callback.lr_search_result.factor == 10.0
    logged = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "ganno/lr_search_factor" in logged
    resumed = GANNOCallback(identity_agent(4), lr_search=search)
    trainer(max_epochs=2, callbacks=[resumed]).fit(TinyRegressor(lr=1e-4), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert resumed.lr_search_result is None  # it goes on at the LR the first fit reached (x10)
    assert resumed.schedule.rows()[-1][2] == pytest.approx(1e-3)


def test_bad_lr_search_is_rejected_by_the_callback():
    with pytest.raises(ValueError, match=r"`lr_search`: `factors` must be distinct and include 1.0"):
        GANNOCallback(identity_agent(4), lr_search={"factors": [3.0, 10.0]})


# -- agent files ----------------------------------------------------------------------------------
def test_an_agent_file_records_its_search_and_the_callback_uses_it(tmp_path):
    plain = identity_agent(4)
    plain.save(tmp_path / "plain.pt")
    assert torch.load(tmp_path / "plain.pt", weights_only=True)["format_version"] < 8
    assert GANNOCallback(tmp_path / "plain.pt").lr_search is None
    search = InitialLRSearch(steps=10, factors=(0.3, 1.0, 3.0), held_batches=2)
    agent = identity_agent(4, lr_search=search)
    agent.save(tmp_path / "searching.pt")
    file = torch.load(tmp_path / "searching.pt", weights_only=True)
    assert file["format_version"] == 8 and file["lr_search"] == search.to_dict()
    loaded = GANNOAgent.load(tmp_path / "searching.pt")
    assert loaded.lr_search == search and "lr_search=InitialLRSearch(steps=10" in repr(loaded)
    assert GANNOCallback(loaded).lr_search == search
    assert GANNOCallback(loaded, lr_search=False).lr_search is None


def test_agents_that_search_differently_do_not_combine():
    with pytest.raises(ValueError, match="lr_search"):
        GANNOAgent.ensemble([identity_agent(4), identity_agent(4, lr_search=InitialLRSearch())])
