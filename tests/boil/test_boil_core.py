"""BOILCore end to end on simulated learning curves with a known best configuration."""

import doctest
import importlib
import math

import pytest
import torch

from ganno_lightning.boil import core as boil_core
from ganno_lightning.boil import model as boil_model
from ganno_lightning.boil.core import BOILCore
from ganno_lightning.boil.model import FitError
from ganno_lightning.boil.observations import Observation, Suggestion, suggest_seconds

T_MAX = 20
BEST_X = torch.tensor([0.3, 0.7], dtype=torch.float64)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def final_loss(x) -> float:
    return float(((torch.as_tensor(x, dtype=torch.float64) - BEST_X) ** 2).sum())


def train(x, epochs, generator) -> Observation:
    """A simulated training: the loss decays towards a final value that is lowest at BEST_X."""
    f = final_loss(x)
    curve = [(e, f + (1.0 + f) * math.exp(-e / 4.0) + 0.01 * float(torch.randn((), generator=generator)))
             for e in range(1, epochs + 1)]
    return Observation(x=list(x), max_epochs=epochs, curve=curve, seconds=0.1 * epochs * (1.0 + x[0]))


def run_study(core, trials, seed=0, seconds_per_epoch=None):
    """``trials`` suggestions, each trained and fed back with its suggestion's own time.

    ``seconds_per_epoch``: every trial's measured seconds (default: ``train``'s, which grow with ``x[0]``).
    """
    generator = torch.Generator().manual_seed(seed)
    history, suggestions = [], []
    for _ in range(trials):
        suggestion = core.suggest(history)
        suggestions.append(suggestion)
        trial = train(suggestion.x, suggestion.max_epochs, generator)
        if seconds_per_epoch is not None:
            trial.seconds = seconds_per_epoch * trial.epochs_done
        trial.suggest_seconds = suggest_seconds(suggestion.info)
        history.append(trial)
    return history, suggestions


@pytest.mark.parametrize("seed", [0, 1])
def test_finds_the_known_optimum_and_beats_random_search(seed):
    core = BOILCore(dims=2, t_max=T_MAX, mode="min", seed=seed)
    history, suggestions = run_study(core, 20, seed)
    best = min(history, key=lambda o: final_loss(o.x))
    assert torch.dist(torch.tensor(best.x, dtype=torch.float64), BEST_X) < 0.1
    random_best = min(final_loss(torch.rand(2, generator=torch.Generator().manual_seed(100 + seed * 20 + i),
                                            dtype=torch.float64)) for i in range(20))
    assert final_loss(best.x) <= random_best
    assert [s.info["source"] for s in suggestions[:3]] == ["random"] * 3 and suggestions[-1].info["source"] == "acquisition"
    last = core.last_fit
    assert 0.0 <= last["m0"] <= 1.0 and 0.0 < last["g0"] <= 24.0 and math.isfinite(last["mll"])
    assert 0 <= last["n_virtual"] <= 100 and last["seconds"] < 10
    info = suggestions[-1].info
    assert {"m0", "g0", "log_ei", "log_cost", "virtual_observations"} <= set(info)


def test_same_seed_same_suggestions_and_the_global_rng_is_untouched():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    _, a = run_study(BOILCore(dims=2, t_max=T_MAX, seed=3, initial_random=3), 5)
    after = torch.rand(1)
    _, b = run_study(BOILCore(dims=2, t_max=T_MAX, seed=3, initial_random=3), 5)
    assert [(s.x, s.max_epochs) for s in a] == [(s.x, s.max_epochs) for s in b]
    assert torch.equal(before, after)


def test_pending_trials_are_believed_so_the_next_suggestion_differs():
    core = BOILCore(dims=2, t_max=T_MAX, seed=0)
    history, _ = run_study(core, 5)
    first = core.suggest(history)
    queued = Observation(x=first.x, max_epochs=first.max_epochs, status="queued")
    second = core.suggest(history, pending=[queued])
    assert second.info["pending"] == 1 and first.max_epochs < T_MAX  # a short trial: believed at T_max too
    moved = torch.dist(torch.tensor(first.x), torch.tensor(second.x)).item()
    assert moved > 0.05  # well beyond the search's own jitter (about 0.002 between seeds)


def test_pending_trials_count_towards_the_initial_random_design():
    core = BOILCore(dims=2, t_max=T_MAX, seed=0, initial_random=3)
    a = core.suggest([])
    b = core.suggest([], pending=[Observation(x=a.x, max_epochs=a.max_epochs, status="queued")])
    assert a.info["source"] == b.info["source"] == "random" and a.x != b.x and a.max_epochs == T_MAX


def test_a_failed_fit_reuses_the_previous_one_then_falls_back_to_random(monkeypatch, caplog):
    core = BOILCore(dims=2, t_max=T_MAX, seed=0, refit_every=1)  # every call a full fit
    history, _ = run_study(core, 5)
    assert core.suggest(history).info["fit_source"] == "fit"

    def broken(*args, **kwargs):
        raise RuntimeError("optimiser exploded")

    monkeypatch.setattr(boil_model, "fit_gpytorch_mll", broken)
    reused = core.suggest(history)
    assert reused.info["source"] == "acquisition" and reused.info["fit_source"] == "previous"
    assert "optimiser exploded" in reused.info["fit_error"]

    def also_broken(*args, **kwargs):
        raise FitError("previous hyperparameters are useless")

    monkeypatch.setattr(boil_core, "refit_with_previous", also_broken)
    fallback = core.suggest(history)
    assert fallback.info["source"] == "random" and "useless" in fallback.info["reason"]
    assert "suggesting at random" in caplog.text

    fresh = BOILCore(dims=2, t_max=T_MAX, seed=0)
    first = fresh.suggest(history)
    assert first.info["source"] == "random" and "no previous fit" in first.info["reason"]


def test_fixed_t_always_trains_for_t_max():
    core = BOILCore(dims=2, t_max=T_MAX, seed=0, fixed_t=True)
    _, suggestions = run_study(core, 6)
    assert {s.max_epochs for s in suggestions} == {T_MAX}


def test_cost_cooling_fades_the_cost_weight_with_the_budget():
    cooled = BOILCore(dims=2, t_max=T_MAX, seed=0, cost_cooling=True)
    history, _ = run_study(cooled, 5)
    assert cooled.suggest(history, spent_fraction=0.0).info["cost_weight"] == 1.0
    late = cooled.suggest(history, spent_fraction=0.75)
    assert late.info["cost_weight"] == pytest.approx(0.25)
    plain = BOILCore(dims=2, t_max=T_MAX, seed=0)
    assert plain.suggest(history, spent_fraction=0.75).info["cost_weight"] == 1.0


def test_ablations_no_virtual_observations_and_fixed_compression():
    core = BOILCore(dims=2, t_max=T_MAX, seed=0, virtual_observations=False, learn_compression=False, m0=0.3, g0=5.0)
    _, suggestions = run_study(core, 6)
    info = suggestions[-1].info
    assert info["virtual_observations"] == 0 and (info["m0"], info["g0"]) == (0.3, 5.0)
    assert core.compression_weights() == pytest.approx(
        [1 / (1 + math.exp(-5.0 * (e / T_MAX - 0.3))) for e in range(1, T_MAX + 1)])


def test_log_metric_models_the_logarithm_of_the_losses():
    generator = torch.Generator().manual_seed(0)
    history = []
    for x in ([0.1, 0.9], [0.5, 0.4], [0.8, 0.2], [0.3, 0.3]):
        trial = train(x, 6, generator)
        trial.curve = [(e, 0.05 + abs(v)) for e, v in trial.curve]  # positive losses
        history.append(trial)
    logged = [Observation(x=o.x, max_epochs=o.max_epochs, curve=[(e, math.log(v)) for e, v in o.curve],
                          seconds=o.seconds) for o in history]
    with_log = BOILCore(dims=2, t_max=T_MAX, seed=0, log_metric=True).suggest(history)
    on_logs = BOILCore(dims=2, t_max=T_MAX, seed=0).suggest(logged)
    plain = BOILCore(dims=2, t_max=T_MAX, seed=0).suggest(history)
    assert with_log.x == pytest.approx(on_logs.x, abs=1e-6) and with_log.max_epochs == on_logs.max_epochs
    assert with_log.info["incumbent"] == pytest.approx(on_logs.info["incumbent"], rel=1e-6)
    assert with_log.info["incumbent"] != pytest.approx(plain.info["incumbent"], rel=1e-3)


@pytest.mark.parametrize("mode", ["min", "max"])
def test_posterior_mean_ranks_the_optimum_above_a_corner(mode):
    core = BOILCore(dims=2, t_max=T_MAX, seed=0, mode=mode)
    with pytest.raises(RuntimeError, match="suggest"):
        core.posterior_mean(torch.zeros(1, 3))
    generator, history = torch.Generator().manual_seed(0), []
    for _ in range(8):
        suggestion = core.suggest(history)
        trial = train(suggestion.x, suggestion.max_epochs, generator)
        if mode == "max":  # the same trainings, logged as a score to maximise
            trial.curve = [(e, 10.0 - v) for e, v in trial.curve]
        history.append(trial)
    mean = core.posterior_mean(torch.tensor([[0.3, 0.7, 1.0], [1.0, 0.0, 1.0]]))
    assert mean.shape == (2,) and mean[0] > mean[1]
    with pytest.raises(ValueError, match="`points`"):
        core.posterior_mean(torch.zeros(2, 2))


def test_trials_without_points_are_ignored_and_diverged_ones_read_as_bad():
    core = BOILCore(dims=2, t_max=T_MAX, seed=0, initial_random=2)
    generator = torch.Generator().manual_seed(0)
    history = [train([0.2, 0.2], 10, generator), train([0.8, 0.6], 10, generator),
               Observation(x=[0.3, 0.7], max_epochs=T_MAX, curve=[(1, 1.2), (2, math.nan)], seconds=1.0, status="diverged"),
               Observation(x=[0.5, 0.5], max_epochs=T_MAX, curve=[], status="failed")]
    suggestion = core.suggest(history)
    assert isinstance(suggestion, Suggestion) and suggestion.info["source"] == "acquisition"
    assert core.last_fit["n_real"] == 3


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"dims": 0}, "`dims`"), ({"t_max": 0}, "`t_max`"), ({"t_max": 5, "t_min": 6}, "`t_min`"), ({"mode": "best"}, "`mode`"),
    ({"seed": 1.5}, "`seed`"), ({"initial_random": 0}, "`initial_random`"), ({"m0": 2.0}, "`m0`"), ({"g0": 0.0}, "`g0`"),
    ({"fixed_t": "yes"}, "`fixed_t`"),
    ({"log_metric": "yes"}, "`log_metric`"), ({"max_virtual_total": -1}, "`max_virtual_total`"),
    ({"virtual_variance_threshold": -0.1}, "`virtual_variance_threshold`"), ({"num_restarts": 0}, "`num_restarts`"),
    ({"raw_samples": 2, "num_restarts": 4}, "`raw_samples`"), ({"fit_maxiter": 0}, "`fit_maxiter`"),
    ({"cost_unit": "dollars"}, "`cost_unit`"), ({"t_floor": 1.5}, "`t_floor`"), ({"refit_every": 0}, "`refit_every`"),
    ({"t_trend": 1}, "`t_trend`"), ({"t_persistence": 1}, "`t_persistence`"), ({"gain": "ei"}, "`gain`"),
    ({"recommend_kappa": -1.0}, "`recommend_kappa`"), ({"max_overhead_share": 0.0}, "`max_overhead_share`"),
    ({"max_overhead_share": True}, "`max_overhead_share`"),
])
def test_bad_constructor_arguments_name_themselves(kwargs, name):
    arguments = {"dims": 2, "t_max": 10, **kwargs}
    with pytest.raises(ValueError, match=name):
        BOILCore(**arguments)


@pytest.mark.parametrize(("trial", "name"), [
    (Observation(x=[0.5], max_epochs=5), r"`observations\[0\].x`"),
    (Observation(x=[0.5, 1.5], max_epochs=5), r"`observations\[0\].x`"),
    (Observation(x=[0.5, 0.5], max_epochs=11), r"`observations\[0\].max_epochs`"),
    (Observation(x=[0.5, 0.5], max_epochs=5, curve=[(12, 0.3)]), r"`observations\[0\].curve`"),
])
def test_bad_observations_name_themselves(trial, name):
    with pytest.raises(ValueError, match=name):
        BOILCore(dims=2, t_max=10).suggest([trial])


def test_bad_pending_and_spent_fraction_name_themselves():
    core = BOILCore(dims=2, t_max=10)
    with pytest.raises(ValueError, match=r"`pending\[0\]`"):
        core.suggest([], pending=[{"x": [0.5, 0.5]}])
    with pytest.raises(ValueError, match="`spent_fraction`"):
        core.suggest([], spent_fraction=1.5)


@pytest.mark.parametrize("name", ["compression", "virtual", "model", "cost", "acquisition", "core"])
def test_docstring_examples(name):
    module = importlib.import_module(f"ganno_lightning.boil.{name}")
    result = doctest.testmod(module, extraglobs={**vars(module), "torch": torch}, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_t_floor_keeps_suggestions_at_or_above_its_share_of_t_max():
    _, floored = run_study(BOILCore(dims=2, t_max=T_MAX, seed=0, t_floor=0.5), 8)
    assert all(s.max_epochs >= T_MAX // 2 for s in floored)
    assert BOILCore(dims=2, t_max=T_MAX, t_min=3, t_floor=0.0).t_shortest == 3  # no floor: t_min alone
    assert BOILCore(dims=2, t_max=T_MAX, t_min=3, t_floor=0.05).t_shortest == 3  # the floor never lowers t_min


def model_suggestions(core, trials, seconds_per_epoch):
    """The suggestions of a ``run_study`` that came from the model (not the initial random design)."""
    _, suggestions = run_study(core, trials, seconds_per_epoch=seconds_per_epoch)
    return [s for s in suggestions if s.info["source"] == "acquisition"]


def test_max_overhead_share_lengthens_trials_only_when_training_is_cheaper_than_choosing():
    # Epochs of a microsecond: any suggestion (milliseconds) outweighs a whole trial, so once the core has timed
    # itself, every trial is T_max long. Epochs of a minute: the bound never binds.
    fast = model_suggestions(BOILCore(dims=2, t_max=T_MAX, seed=0, t_floor=0.0, max_overhead_share=0.1), 7, 1e-6)
    assert fast[0].info["t_shortest"] == 1  # nothing timed yet
    assert all(s.info["t_shortest"] == T_MAX and s.max_epochs == T_MAX for s in fast[1:])
    slow = model_suggestions(BOILCore(dims=2, t_max=T_MAX, seed=0, t_floor=0.0, max_overhead_share=0.1), 7, 60.0)
    assert all(s.info["t_shortest"] == 1 for s in slow)
    assert min(s.max_epochs for s in slow) < T_MAX  # short trials are still bought (what the bound must not stop)


def test_max_overhead_share_reads_the_last_suggestions_times_from_the_observations():
    # Choosing took 1 s (the mean of the last three timed; the 9 s before them is out of the window), training takes
    # 0.5 s an epoch: a trial must train 1 / 0.5 * (1 - 0.1) / 0.1 = 18 epochs for choosing it to be 10% of its cost.
    history, _ = run_study(BOILCore(dims=2, t_max=T_MAX, seed=0), 5)
    timed = [Observation(x=o.x, max_epochs=o.max_epochs, curve=o.curve, seconds=0.5 * o.epochs_done,
                         suggest_seconds=[0.0, 9.0, 0.5, 1.0, 1.5][i])
             for i, o in enumerate(history)]
    core = BOILCore(dims=2, t_max=T_MAX, seed=0, t_floor=0.0, max_overhead_share=0.1)
    suggestion = core.suggest(timed)
    assert suggestion.info["t_shortest"] == 18 and suggestion.max_epochs >= 18
    assert BOILCore(dims=2, t_max=T_MAX, seed=0, t_floor=0.0).suggest(timed).info["t_shortest"] == 1
    # Pending trials count too: a queued trial chosen in 0.2 s makes the window 1, 1.5, 0.2 (0.9 s: 17 epochs). A
    # running trial passed in both lists counts once (17 again; counted twice, 1.5, 0.2, 0.2 would give 12).
    queued = Observation(x=[0.5, 0.5], max_epochs=T_MAX, status="queued", suggest_seconds=0.2)
    assert core.suggest(timed, pending=[queued]).info["t_shortest"] == 17
    running = Observation(x=[0.5, 0.5], max_epochs=T_MAX, curve=timed[-1].curve[:2], seconds=1.0, status="running",
                          suggest_seconds=0.2)
    assert core.suggest([*timed, running], pending=[running]).info["t_shortest"] == 17


def test_with_an_epochs_price_the_measured_seconds_do_not_change_the_suggestion():
    # The same trials, once with short trials nearly free in seconds (seconds grow like epochs cubed).
    history, _ = run_study(BOILCore(dims=2, t_max=T_MAX, seed=0), 6)
    cubic = [Observation(x=o.x, max_epochs=o.max_epochs, curve=o.curve, seconds=1e-3 * o.epochs_done ** 3)
             for o in history]
    plain = BOILCore(dims=2, t_max=T_MAX, seed=0, cost_unit="epochs").suggest(history)
    skewed = BOILCore(dims=2, t_max=T_MAX, seed=0, cost_unit="epochs").suggest(cubic)
    assert (plain.x, plain.max_epochs) == (skewed.x, skewed.max_epochs)
    assert plain.info["log_cost"] == pytest.approx(math.log(plain.max_epochs))
    by_seconds = BOILCore(dims=2, t_max=T_MAX, seed=0, cost_unit="seconds").suggest(cubic)
    assert by_seconds.info["log_cost"] != pytest.approx(math.log(by_seconds.max_epochs))


def test_between_full_fits_the_hyperparameters_are_reused_and_still_find_the_optimum():
    core = BOILCore(dims=2, t_max=T_MAX, seed=0, refit_every=3)
    history, suggestions = run_study(core, 12)
    sources = [s.info.get("fit_source") for s in suggestions if s.info["source"] == "acquisition"]
    assert sources[0] == "fit" and "reused" in sources and sources.count("fit") < len(sources)
    best = min(history, key=lambda o: final_loss(o.x))
    assert torch.dist(torch.tensor(best.x, dtype=torch.float64), BEST_X) < 0.15


def test_recommend_reads_whole_curves_not_the_luckiest_epoch():
    """Configurations near x=0.1 dip early and then overfit; those near x=0.8 improve to the end."""
    def curve(x):
        if x < 0.5:  # best of all at epoch 3, worst at T_max
            return [(e, 0.2 + 0.05 * (e - 3) ** 2 + 0.01 * x) for e in range(1, T_MAX + 1)]
        return [(e, 0.3 + 1.0 / e + 0.01 * x) for e in range(1, T_MAX + 1)]

    xs = [0.05, 0.1, 0.15, 0.75, 0.8, 0.85, 0.3, 0.6]
    history = [Observation(x=[x], max_epochs=T_MAX, curve=curve(x)) for x in xs]
    core = BOILCore(dims=1, t_max=T_MAX, mode="min", seed=0)
    best_seen = min(range(len(xs)), key=lambda i: min(v for _, v in history[i].curve))
    assert xs[best_seen] < 0.5  # the luckiest epoch belongs to an overfitting run
    pick = core.recommend(history)
    assert pick is not None and xs[pick] > 0.5  # the model prefers what ends best
    assert core.recommend(history[:2]) is None  # fewer than initial_random (3) trials: no model yet


def test_recommend_kappa_prefers_a_well_seen_configuration_to_a_barely_started_one():
    # Five finished trials (best at x = 0.5) and one running trial at x = 0.6 seen for a single epoch: the best
    # mean is the running one's, but its score at T_max is uncertain; with kappa >= 1 the finished x = 0.35 wins.
    def curve(x, epochs):
        return [(e, 0.3 + 1.0 / e + 0.05 * abs(x - 0.5)) for e in range(1, epochs + 1)]

    xs = [0.05, 0.2, 0.8, 0.95, 0.35]
    history = [Observation(x=[x], max_epochs=T_MAX, curve=curve(x, T_MAX)) for x in xs]
    history.append(Observation(x=[0.6], max_epochs=T_MAX, curve=curve(0.6, 1), status="running"))
    assert BOILCore(dims=1, t_max=T_MAX, seed=0).recommend(history) == 5
    assert BOILCore(dims=1, t_max=T_MAX, seed=0, recommend_kappa=1.0).recommend(history) == 4


def test_recommend_leaves_later_suggestions_unchanged():
    cores = [BOILCore(dims=2, t_max=T_MAX, mode="min", seed=3) for _ in range(2)]
    history, _ = run_study(cores[0], 5)
    _, _ = run_study(cores[1], 5)  # the same calls: the same state
    cores[1].recommend(history)
    nexts = [c.suggest(history) for c in cores]
    assert nexts[0].x == nexts[1].x and nexts[0].max_epochs == nexts[1].max_epochs


def test_recommend_works_inside_a_trainer_hook_context():
    history, _ = run_study(BOILCore(dims=2, t_max=T_MAX, mode="min", seed=0), 4)
    with torch.inference_mode():  # where Lightning runs validation hooks
        assert BOILCore(dims=2, t_max=T_MAX, mode="min", seed=0).recommend(history) is not None  # a fresh fit
