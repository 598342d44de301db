"""The population on a local Ray instance with Ray Tune's PBT scheduler (skipped without Ray)."""

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray Tune is optional: pip install 'ray[tune]'")

from ganno_lightning.pbt.ray_tune import make_scheduler, tune_population  # noqa: E402
from ganno_lightning.pbt.runner import initial_values, load_config, validate_config  # noqa: E402

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "pbt_smoke.yaml"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_scheduler_mirrors_the_config_and_clips_explored_values():
    config = load_config(SMOKE, ["quantile=0.5", "resample_probability=0.0", "perturb_factors=[0.5,4.0]"])
    scheduler = make_scheduler(config)
    assert scheduler._quantile_fraction == 0.5 and scheduler._perturbation_factors == (0.5, 4.0)
    assert scheduler._custom_explore_fn({"lr": 99.0})["lr"] == 0.5  # clipped to the prior's upper bound
    with pytest.raises(ValueError, match="On Ray, `exploit` must be 'truncation'"):
        make_scheduler(load_config(SMOKE, ["exploit=tournament"]))


def test_ray_population_applies_mutated_lr_after_restoring_the_donor(tmp_path, local_ray):
    config = load_config(
        SMOKE, [f"population_dir={tmp_path / 'pop'}", "max_epochs=2", "task_kwargs.train_subset=64"]
    )
    summary = tune_population(config, synch=True)
    assert summary["backend"] == "ray_tune" and summary["exploits"] >= 1
    pop = tmp_path / "pop"
    for name in ("best.ckpt", "schedules.csv", "schedules.png", "lineage.json", "summary.json"):
        assert (pop / name).stat().st_size > 0
    lineage = json.loads((pop / "lineage.json").read_text())
    assert lineage[0]["new_hyperparameters"]["lr"] != lineage[0]["old_hyperparameters"]["lr"]
    # every report, including those right after a restore from a donor, trains with its own config's LR
    import pandas as pd

    progress = [pd.read_csv(p) for p in (pop / "ray_tune").glob("*/progress.csv")]
    assert len(progress) == 2
    for frame in progress:
        assert (frame["pbt/lr_in_effect"] - frame["pbt/lr"]).abs().max() < 1e-9
    changed = [f for f in progress if f["pbt/lr"].nunique() > 1]
    assert changed, "no trial changed its LR: the exploit did not happen"


@pytest.mark.parametrize("override, message", [
    ("task=nope:nothing", "`task` 'nope:nothing': cannot import module 'nope'"),
    ("monitor=val_los", "val_los"),
])
def test_the_ray_command_refuses_a_bad_task_in_one_line_before_ray_starts(tmp_path, capsys, override, message):
    from ganno_lightning.pbt.ray_tune import main

    with pytest.raises(SystemExit) as exit_:
        main([str(SMOKE), f"population_dir={tmp_path / 'pop'}", override])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ganno-pbt-ray: error: ") and message in err and "\n" not in err and "Traceback" not in err


def _wandb_run_ids(directory: Path) -> list[str]:
    # offline runs are folders offline-run-<date>_<time>-<run id>, one per start of a run; W&B adds "-1" when a run
    # starts twice in one second (a member restored from a donor at once), after the id's own seed "-0"
    ids = (re.sub(r"^offline-run-\d+_\d+-", "", p.name) for p in (directory / "wandb").glob("offline-run-*"))
    return sorted(re.sub(r"^(pop-\w+-\d+)-\d+$", r"\1", i) for i in ids)


def test_ray_population_logs_to_wandb_with_ganno_pbts_runs_and_starts_from_its_draws(tmp_path, local_ray):
    pop = tmp_path / "pop"
    config = load_config(SMOKE, [f"population_dir={pop}", "max_epochs=2", "task_kwargs.train_subset=64",
                                 "wandb.enabled=true", "wandb.mode=offline"])
    summary = tune_population(config, synch=True)
    assert summary["exploits"] >= 1  # a member restored from a donor in the same worker: still its own run
    # one W&B run per member (each start of it, exploits too, continues the same id) and the summary run
    ids = _wandb_run_ids(pop)
    assert set(ids) == {"pop-member_000-0", "pop-member_001-0", "pop-population-0"}, ids
    assert ids.count("pop-population-0") == 1
    for run in (pop / "wandb").glob("offline-run-*"):
        assert any(p.suffix == ".wandb" for p in run.iterdir())
    # and each member's Lightning CSV log where ganno-pbt writes it (one version per start of the member)
    for member in ("member_000", "member_001"):
        assert list((pop / "logs" / member).glob("version_*/metrics.csv")), member
    # through _tune's own search algorithm: member i starts from ganno-pbt's draw for member i and this seed
    import pandas as pd

    strategy = validate_config(config)
    for progress in (pop / "ray_tune").glob("*/progress.csv"):
        first = pd.read_csv(progress).iloc[0]
        member = int(str(first["trial_id"]).rpartition("_")[2])
        assert first["pbt/lr"] == pytest.approx(initial_values(config, strategy, member)["lr"], rel=1e-12)


def test_initial_draws_are_reproducible_from_the_seed():
    from ganno_lightning.pbt.ray_tune import _initial_search

    def draws(seed):
        config = load_config(SMOKE, [f"seed={seed}", "population_size=3"])
        return _initial_search(config, validate_config(config))._points_to_evaluate

    assert draws(0) == draws(0) and draws(0) != draws(1)
    assert len(draws(0)) == 3 and len({d["lr"] for d in draws(0)}) == 3


def _rows(pop: Path) -> dict[str, list[tuple[int, float]]]:
    import pandas as pd

    rows = {}
    for path in (pop / "ray_tune").glob("*/progress.csv"):
        try:
            table = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError):  # Ray is writing it: not a row yet
            continue
        if len(table):
            rows[path.parent.name] = [(int(r["epoch"]), float(r["pbt/lr"])) for _, r in table.iterrows()]
    return rows


def test_a_rerun_resumes_an_interrupted_ray_population_and_does_not_retrain_a_finished_one(
    tmp_path, local_ray, capsys
):
    pop = tmp_path / "pop"
    epochs = 6  # long enough that Ctrl+C at the first report stops it halfway
    # synchronous: Ray's own scheduler would wait forever after the restore; and a donor cannot run ahead and
    # delete (Ray's num_to_keep) the checkpoint a restored member still has to copy
    overrides = [f"population_dir={pop}", f"max_epochs={epochs}", "task_kwargs.train_subset=64", "synchronous=true"]

    running = threading.Event()
    running.set()

    def interrupt_after_the_first_report():
        deadline = time.monotonic() + 120
        while running.is_set() and time.monotonic() < deadline and not _rows(pop):
            time.sleep(0.02)
        if running.is_set():  # never after the run has returned: the signal would hit the next test
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl+C: Ray Tune saves its state and returns from fit

    interrupter = threading.Thread(target=interrupt_after_the_first_report, daemon=True)
    interrupter.start()
    try:
        with pytest.raises(RuntimeError, match=r"unfinished \(interrupted\).*Run the same command again to resume"):
            tune_population(load_config(SMOKE, overrides))
    finally:
        running.clear()
        interrupter.join()
    before = _rows(pop)
    assert not (pop / "summary.json").exists()  # no summary of a population that did not finish
    capsys.readouterr()

    summary = tune_population(load_config(SMOKE, overrides))  # the same command again
    assert "ganno-pbt-ray: resuming the population" in capsys.readouterr().err
    after = _rows(pop)
    assert len(after) == 2 and set(before) <= set(after)  # the same two trials, not a new experiment
    assert any(len(after[trial]) > len(rows) for trial, rows in before.items())  # one resumed after reporting
    for trial, rows in before.items():
        assert after[trial][: len(rows)] == rows  # earlier reports kept
        resumed = after[trial][len(rows):]
        assert not resumed or resumed[0][0] > 1  # continued from a checkpoint, not from epoch 1
    assert all(rows[-1][0] == epochs for rows in after.values())
    assert sorted(summary["final_scores"]) == ["0", "1"]

    finished = (pop / "summary.json").read_text()
    assert tune_population(load_config(SMOKE, overrides)) == summary  # a finished population: nothing retrains
    assert "is finished; writing its outputs again" in capsys.readouterr().err
    assert _rows(pop) == after and (pop / "summary.json").read_text() == finished

    longer = [*overrides[:1], f"max_epochs={epochs + 1}", *overrides[2:]]
    refused = rf"`max_epochs` is {epochs + 1}, but the Ray population .* max_epochs={epochs}"
    with pytest.raises(ValueError, match=refused):  # before Ray starts: it cannot train finished members on
        tune_population(load_config(SMOKE, longer))
    with pytest.raises(ValueError, match=r"`seed` is 5, but the Ray population .* was started with seed=0"):
        tune_population(load_config(SMOKE, [*overrides, "seed=5"]))  # Ray would keep its draws and scheduler
    (pop / "config.yaml").unlink()  # as an older ganno-pbt-ray left it
    with pytest.raises(ValueError, match=r"without the config.yaml this version writes .* Use a new"):
        tune_population(load_config(SMOKE, overrides))


def test_a_first_run_that_died_before_ray_saved_its_state_is_no_experiment_to_resume(tmp_path):
    from ray import tune

    from ganno_lightning.pbt.ray_tune import _restorable

    tune.Tuner(lambda config: None, run_config=tune.RunConfig(name="ray_tune", storage_path=str(tmp_path)))
    assert tune.Tuner.can_restore(tmp_path / "ray_tune")  # Ray's own test says yes: the Tuner is pickled
    assert not _restorable(tmp_path)  # but nothing ran, so there is nothing to restore: a rerun starts anew


@pytest.mark.filterwarnings("ignore:PBT checkpoint .* is damaged")
def test_a_member_whose_donor_checkpoint_is_gone_restores_its_own_newest_readable_one(tmp_path):
    # ray-project/ray#9036: an asynchronous donor deleted the checkpoint Ray restores this member from
    import warnings

    import torch
    from ray.tune import Checkpoint

    from ganno_lightning.pbt.ray_tune import _restore_file

    donor = Checkpoint(str(tmp_path / "donor" / "checkpoint_000007"))  # deleted by the donor
    trial = tmp_path / "trial"
    for name, content in (("checkpoint_000001", {"epoch": 1}), ("checkpoint_000002", {"epoch": 2}),
                          ("checkpoint_000003", None)):  # the newest is damaged
        (trial / name).mkdir(parents=True)
        path = trial / name / "member.ckpt"
        if content is None:
            path.write_bytes(b"cut sh")
        else:
            torch.save(content, path)
    with pytest.warns(UserWarning, match=r"donor/checkpoint_000007/member.ckpt.*missing or damaged.*"
                                         r"own newest checkpoint .*checkpoint_000002/member.ckpt"):
        assert _restore_file(donor, trial) == str(trial / "checkpoint_000002" / "member.ckpt")
    with pytest.warns(UserWarning, match="starts again from scratch"):
        assert _restore_file(donor, tmp_path / "empty_trial") is None
    # a checkpoint that is there is used as it is, without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _restore_file(Checkpoint(str(trial / "checkpoint_000001")), trial) == str(
            trial / "checkpoint_000001" / "member.ckpt")
