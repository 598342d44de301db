"""BOILSearcher on a local Ray instance, and its save/restore (skipped without Ray)."""

import math
import pickle
import sys

import pytest

ray = pytest.importorskip("ray", reason="Ray Tune is optional: pip install 'ray[tune]'")

from boil_tasks import FAST_CORE  # noqa: E402
from ray import tune  # noqa: E402

from ganno_lightning.boil import BOILStore  # noqa: E402
from ganno_lightning.boil.ray_tune import BOILSearcher  # noqa: E402

SPACE = {"lr": {"low": 1e-3, "high": 1.0, "log": True}, "width": {"choices": [8, 16]}}


def trainable(config):
    for epoch in range(1, config["max_epochs"] + 1):
        tune.report({"val_loss": (math.log10(config["lr"]) + 1.5) ** 2 + 1.0 / epoch + config["width"] / 100})


def test_searcher_on_local_ray_suggests_lengths_and_keeps_the_study(tmp_path, suggest_calls):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        searcher = BOILSearcher(SPACE, metric="val_loss", mode="min", epochs=(1, 3), budget_epochs=7,
                                study_dir=tmp_path / "study", initial_random=2, **FAST_CORE)
        results = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=5, max_concurrent_trials=2),
            run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), verbose=0),
        ).fit()
    finally:
        ray.shutdown()
    trials = BOILStore(tmp_path / "study").trials()
    assert 3 <= len(trials) <= 5 and sum(t.epochs_done for t in trials) <= 7
    assert all(t.status == "done" and t.epochs_done == t.max_epochs for t in trials)
    assert {r.config["max_epochs"] for r in results} == {t.max_epochs for t in trials}
    best = results.get_best_result("val_loss", "min").metrics["val_loss"]
    assert best == pytest.approx(min(v for t in trials for _, v in t.epoch_curve()))
    assert max(len(c["pending"]) for c in suggest_calls) >= 1  # running trials were passed as pending


def test_save_and_restore_keep_the_observations(tmp_path, suggest_calls):
    searcher = BOILSearcher(SPACE, metric="val_loss", mode="min", epochs=(2, 2))
    config = searcher.suggest("a")
    assert config["max_epochs"] == 2 and config["width"] in (8, 16)
    searcher.on_trial_result("a", {"val_loss": 0.5, "training_iteration": 1, "time_total_s": 1.0})
    searcher.suggest("running")  # a running trial is data (its curve so far) and pending at once
    call = suggest_calls[-1]
    assert [(o.status, o.curve) for o in call["observations"]] == [("running", [(1, 0.5)])]
    assert [(o.status, o.max_epochs) for o in call["pending"]] == [("running", 2)]
    del searcher.trials["running"]
    searcher.on_trial_complete("a", {"val_loss": 0.4, "training_iteration": 2, "time_total_s": 2.0})
    searcher.save(str(tmp_path / "searcher.pkl"))
    fresh = BOILSearcher(SPACE, metric="val_loss", mode="min", epochs=(2, 2))
    fresh.restore(str(tmp_path / "searcher.pkl"))
    assert fresh.trials["a"]["curve"] == {1: 0.5, 2: 0.4} and fresh.trials["a"]["status"] == "done"
    assert fresh.trials["a"].pop("suggest_seconds") == 0.0  # a random suggestion; popped: a pickle from before the key
    fresh.suggest("b")
    assert suggest_calls[-1]["core"] is fresh._core
    (observation,) = suggest_calls[-1]["observations"]
    assert observation.curve == [(1, 0.5), (2, 0.4)]
    with pytest.raises(ValueError, match="saved BOILSearcher state was made with settings"):
        BOILSearcher(SPACE, metric="val_loss", mode="min", epochs=(1, 2)).restore(str(tmp_path / "searcher.pkl"))
    with pytest.raises(ValueError, match="`epochs_key` 'width' is also a hyperparameter"):
        BOILSearcher(SPACE, epochs_key="width")


@pytest.mark.parametrize("options, match", [
    ({"initail_random": 3}, r"Unknown BOIL core option `initail_random`=3; known: initial_random"),
    ({"raw_samples": 2, "num_restarts": 4}, r"`raw_samples` must be an int >= num_restarts \(4\), got 2"),
])
def test_core_options_are_checked_when_the_searcher_is_built(options, match):
    with pytest.raises(ValueError, match=match):
        BOILSearcher(SPACE, epochs=(1, 3), **options)  # not at Tune's first suggest, inside Ray


def test_a_restored_tune_state_older_than_the_study_neither_crashes_nor_leaves_ghosts(tmp_path):
    searcher = BOILSearcher(SPACE, metric="val_loss", mode="min", epochs=(2, 2), study_dir=tmp_path / "study")
    searcher.suggest("a")
    searcher.on_trial_result("a", {"val_loss": 0.5, "training_iteration": 1, "time_total_s": 1.0})
    snapshot = pickle.loads(pickle.dumps(searcher.get_state()))  # Tune's periodic snapshot: `a` running
    searcher.on_trial_complete("a", {"val_loss": 0.4, "training_iteration": 2, "time_total_s": 2.0})
    searcher.suggest("b")  # after the snapshot, then the driver is killed
    searcher.on_trial_result("b", {"val_loss": 0.7, "training_iteration": 1, "time_total_s": 1.0})
    restored = BOILSearcher(SPACE, metric="val_loss", mode="min", epochs=(2, 2), study_dir=tmp_path / "study")
    restored.set_state(snapshot)
    study = BOILStore(tmp_path / "study")
    assert [t.status for t in study.trials()] == ["done", "interrupted"]  # `b`, lost with the kill, is no ghost
    # Tune trains the restored `a` again: its results go to a new trial of the same values, not into the closed one
    restored.on_trial_result("a", {"val_loss": 0.45, "training_iteration": 1, "time_total_s": 1.0})
    restored.on_trial_complete("a", {"val_loss": 0.35, "training_iteration": 2, "time_total_s": 2.0})
    trials = study.trials()
    assert [t.status for t in trials] == ["done", "interrupted", "done"] and trials[2].values == trials[0].values
    assert [v for _, v in trials[2].epoch_curve()] == [0.45, 0.35]
