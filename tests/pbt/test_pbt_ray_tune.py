"""The population on a local Ray instance with Ray Tune's PBT scheduler (skipped without Ray)."""

import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray Tune is optional: pip install 'ray[tune]'")

from ganno_lightning.pbt.ray_tune import make_scheduler, tune_population  # noqa: E402
from ganno_lightning.pbt.runner import load_config  # noqa: E402

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
