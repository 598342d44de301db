"""The one-machine runner: config checks before training, a member killed mid-run, resume, outputs."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ganno_lightning.pbt.runner import load_config, preflight, run_population, write_outputs
from ganno_lightning.pbt.store import PopulationStore
from ganno_lightning.examples.digits import DigitsClassifier

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "pbt_smoke.yaml"


def test_unknown_keys_and_bad_values_are_rejected_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match="Unknown config key `populaton_size` in the overrides \\(did you mean `population_size`\\?\\)"):
        load_config(SMOKE, ["populaton_size=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("hyperparameters:\n  lr: {low: 0.1, high: 1.0, scale: log}\n")
    with pytest.raises(ValueError, match="Unknown config key `hyperparameters.lr.scale`.*Known keys: low, high"):
        load_config(bad)
    with pytest.raises(ValueError, match="`max_epochs` in the overrides must be an int, got 'many'"):
        load_config(SMOKE, ["max_epochs=many"])
    with pytest.raises(ValueError, match="Unknown hyperparameter `dropout`"):
        load_config(SMOKE, ["hyperparameters.dropout.low=0.0", "hyperparameters.dropout.high=0.5"])
    with pytest.raises(ValueError, match=r"`lr`: The range \[0.5, 0.5\] is empty"):
        load_config(SMOKE, ["hyperparameters.lr.low=0.5", "hyperparameters.lr.high=0.5"])
    with pytest.raises(ValueError, match="`population_size` must be at least 2, got 1"):
        load_config(SMOKE, ["population_size=1"])
    empty = tmp_path / "empty.yaml"
    empty.write_text("population_size: 2\n")
    with pytest.raises(ValueError, match="`hyperparameters` must name at least one"):
        load_config(empty)


def test_committed_configs_load():
    for name in ("pbt_smoke.yaml", "pbt_digits.yaml"):
        config = load_config(REPO / "configs" / name)
        assert "lr" in config.hyperparameters


def test_never_logged_monitor_and_unwritable_dir_fail_before_any_member_starts(tmp_path):
    config = load_config(SMOKE, [f"population_dir={tmp_path / 'pop'}", "monitor=val_los"])
    with pytest.raises(ValueError, match="`monitor` is 'val_los', but the task never logs it.*`val_loss`"):
        run_population(config)
    assert not (tmp_path / "pop" / "checkpoints").exists() and not (tmp_path / "pop" / "logs").exists()

    blocker = tmp_path / "file"
    blocker.write_text("x")
    config = load_config(SMOKE, [f"population_dir={blocker / 'pop'}"])
    with pytest.raises(PermissionError, match="`population_dir` must be a writable directory"):
        run_population(config)


def test_preflight_checks_the_setters_against_the_real_optimizer(tmp_path):
    config = load_config(
        SMOKE, [f"population_dir={tmp_path}", "hyperparameters.beta2.low=0.9", "hyperparameters.beta2.high=0.999"]
    )
    with pytest.raises(ValueError, match="`beta2` sets param-group key `betas`.*SGD"):
        preflight(config)


def _wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_member_killed_mid_run_then_population_resumes_and_writes_outputs(tmp_path):
    pop = tmp_path / "pop"
    epochs = 30  # long enough that member 0 cannot finish between its first report and the kill, even on a fast machine
    overrides = [f"population_dir={pop}", f"max_epochs={epochs}", "preflight=false"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "ganno_lightning.pbt.runner", str(SMOKE), *overrides],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    pid_file = pop / "members" / "member_000.pid"
    _wait_for(lambda: (pop / "population.db").exists() and pid_file.exists(), 120, "member 0 to start")
    store = PopulationStore(pop)
    _wait_for(lambda: any(h["member"] == 0 for h in store.history()), 120, "member 0's first report")
    assert store.members()[0].status == "running"
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    output = coordinator.communicate(timeout=180)[0].decode()
    assert coordinator.returncode != 0 and "Member(s) [0] failed" in output

    members = store.members()
    assert members[0].status == "failed" and members[1].status == "done"  # said by the coordinator
    steps_before = [h["step"] for h in store.history() if h["member"] == 0]
    for record in members.values():  # everything the store points to is a whole, loadable checkpoint
        assert torch.load(record.checkpoint, weights_only=False)["global_step"] == record.step

    summary = run_population(load_config(SMOKE, overrides))  # same command again: resume
    members = store.members()
    assert all(r.status == "done" for r in members.values())
    steps_after = [h["step"] for h in store.history() if h["member"] == 0]
    assert steps_after[: len(steps_before)] == steps_before
    resumed = steps_after[len(steps_before):]
    assert resumed and resumed[0] > steps_before[-1]  # continued from its checkpoint, not from scratch
    assert members[0].step == members[1].step == epochs * 4  # 4 batches per epoch

    assert summary["best_member"] in (0, 1) and summary["best_score"] == min(
        r.score for r in members.values()
    )
    for name in ("best.ckpt", "lineage.json", "schedules.csv", "schedules.png", "summary.json"):
        assert (pop / name).stat().st_size > 0
    model = DigitsClassifier.load_from_checkpoint(pop / "best.ckpt")
    assert tuple(model.hparams.hidden) == (16, 16)  # task_kwargs.hidden: 16, two hidden layers
    assert json.loads((pop / "summary.json").read_text())["best_member"] == summary["best_member"]
    assert len(json.loads((pop / "lineage.json").read_text())) == len(store.lineage())
    header, *rows = (pop / "schedules.csv").read_text().splitlines()
    assert header == "member,step,event,score,lr" and len(rows) == len(store.history()) + len(store.lineage())

    # the schedule and lineage also go to W&B (offline here) as a summary run
    config = load_config(SMOKE, overrides + ["wandb.enabled=true", "wandb.mode=offline"])
    config.population_dir = str(pop)
    from ganno_lightning.pbt.runner import validate_config

    write_outputs(store, config, validate_config(config))
    runs = list((pop / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(p.suffix == ".wandb" for p in runs[0].iterdir())
    write_outputs(store, config, validate_config(config))  # a rerun's outputs update the population's one run
    runs = [p.name for p in (pop / "wandb").glob("offline-run-*")]
    # offline, each start of the run is a folder offline-run-<time>-<id>, "-1" added when two start in one second
    ids = {re.sub(r"^offline-run-\d+_\d+-", "", name) for name in runs}
    assert len(runs) == 2 and all(re.fullmatch(r"pop-population-0(-\d+)?", i) for i in ids), runs


def test_synchronous_population_ranks_every_member_at_the_same_steps(tmp_path):
    config = load_config(SMOKE, [f"population_dir={tmp_path / 'pop'}", "synchronous=true", "population_size=3"])
    summary = run_population(config)
    store = PopulationStore(tmp_path / "pop")
    steps = {m: [r["step"] for r in store.history() if r["member"] == m] for m in range(3)}
    assert steps[0] == steps[1] == steps[2] and len(steps[0]) == config.max_epochs
    lineage = store.lineage()
    assert lineage
    for event in lineage:  # every exploit copied a peer as it stood at the step the exploiter reported
        assert store.reports_at(event.donor_step)[event.member]["score"] == pytest.approx(event.score)
    assert summary["best_score"] == min(summary["final_scores"].values())


KILLABLE_CONFIG = """
population_dir: {pop}
population_size: 2
max_epochs: 3
task: killable_task:task
task_kwargs: {{record_dir: {records}, kill_after_exploit: true}}
hyperparameters:
  lr: {{low: 1.0e-3, high: 0.5, log: true}}
monitor: score
synchronous: true
ready_interval: 1
preflight: false
"""


def _lr_schedule_from_lineage(initial_lr, events):
    """The LR that lineage.json says was in effect at each optimizer step (events take effect at their step)."""
    events = sorted(events, key=lambda e: e["step"])
    return lambda step: ([initial_lr] + [e["new_hyperparameters"]["lr"] for e in events if e["step"] <= step])[-1]


def test_a_member_killed_right_after_an_exploit_resumes_from_the_exploited_state(tmp_path, monkeypatch):
    # member 1 always scores worse, so it exploits member 0 at every ready point but the last; it
    # SIGKILLs itself at the first batch after its first exploit, and the rerun resumes it
    pop, records = tmp_path / "pop", tmp_path / "records"
    records.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # members import killable_task
    config_path = tmp_path / "killable.yaml"
    config_path.write_text(KILLABLE_CONFIG.format(pop=pop, records=records))
    with pytest.raises(RuntimeError, match=r"Member\(s\) \[1\] failed"):
        run_population(load_config(config_path))
    assert (records / "killed").exists()
    run_population(load_config(config_path))  # the same command again: resume

    store = PopulationStore(pop)
    assert all(r.status == "done" for r in store.members().values())
    lineage = [e for e in json.loads((pop / "lineage.json").read_text()) if e["member"] == 1]
    assert [e["step"] for e in lineage] == [4, 8]  # after epochs 1 and 2; never at the last ready point
    assert lineage[1]["old_hyperparameters"] == lineage[0]["new_hyperparameters"]  # only what trained
    initial_lr = next(h for h in store.history() if h["member"] == 1)["hyperparameters"]["lr"]
    lr_at = _lr_schedule_from_lineage(initial_lr, lineage)

    updates = [json.loads(line) for line in (records / "lrs_1.jsonl").read_text().splitlines()]
    killed, resumed = [u for u in updates if u["pid"] == updates[0]["pid"]], [u for u in updates if u["pid"] != updates[0]["pid"]]
    assert [u["step"] for u in killed] == [0, 1, 2, 3]  # killed before its first step after the exploit
    assert [u["step"] for u in resumed] == list(range(4, 12))  # resumed at the exploit, no step repeated
    # the first step after the resume runs at the explored LR that lineage.json records
    assert resumed[0]["lr"] == pytest.approx(lineage[0]["new_hyperparameters"]["lr"], rel=1e-3)
    for update in updates:
        assert update["lr"] == pytest.approx(lr_at(update["step"]), rel=1e-3), update


def test_rerun_with_a_larger_max_epochs_trains_on_a_smaller_one_is_refused_and_progress_shows(tmp_path):
    pop = tmp_path / "pop"
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def ganno_pbt(*overrides):
        command = [sys.executable, "-m", "ganno_lightning.pbt.runner", str(SMOKE), f"population_dir={pop}", *overrides]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)

    first = ganno_pbt("max_epochs=2")
    assert first.returncode == 0, first.stderr
    # while members train the console shows every report (stderr); stdout is the JSON summary alone
    for member in (0, 1):
        for step in (4, 8):
            assert re.search(rf"ganno-pbt: member {member} step {step}: val_loss=\d\S* lr=\d", first.stderr), first.stderr
    assert json.loads(first.stdout)["best_member"] in (0, 1)
    store = PopulationStore(pop)
    assert [r.step for r in store.members().values()] == [8, 8]  # 4 batches per epoch

    second = ganno_pbt("max_epochs=3")
    assert second.returncode == 0, second.stderr
    assert "ganno-pbt: extending the population from max_epochs=2 to 3" in second.stderr
    assert "step 12: val_loss=" in second.stderr and "step 8: val_loss=" not in second.stderr  # new reports only
    members = store.members()
    assert all(r.status == "done" and r.step == 12 for r in members.values())
    for member in (0, 1):  # trained on from its final checkpoint, not from scratch
        assert [h["step"] for h in store.history() if h["member"] == member] == [4, 8, 12]
    assert OmegaConf.load(pop / "config.yaml").max_epochs == 3
    assert json.loads(second.stdout)["final_scores"] == {str(m): r.score for m, r in members.items()}

    stored_config = (pop / "config.yaml").read_bytes()
    third = ganno_pbt("max_epochs=2")
    assert third.returncode == 2 and third.stdout == ""
    assert third.stderr.strip() == (
        f"ganno-pbt: error: `max_epochs` is 2, but the population in {str(pop)!r} was started with max_epochs=3"
        " and cannot be shortened. Rerun with max_epochs=3 to resume it, a larger value to train it on, or use a"
        " new `population_dir`."
    )
    with pytest.raises(ValueError, match="`max_epochs` is 2, but the population .* was started with max_epochs=3"):
        run_population(load_config(SMOKE, [f"population_dir={pop}", "max_epochs=2"]))
    assert (pop / "config.yaml").read_bytes() == stored_config
    assert [r.step for r in store.members().values()] == [12, 12]


@pytest.mark.parametrize(
    "override, message",
    [
        ("task=nonexistent.mod:factory", "`task` 'nonexistent.mod:factory': cannot import module 'nonexistent.mod'"),
        ("monitor=val_los", "`monitor` is 'val_los', but the task never logs it"),
        ("task_kwargs.hiden=3", "`task_kwargs.hiden` is 3, but `task` 'ganno_lightning.examples.digits:digits_task'"
                                " takes no argument `hiden` (did you mean `task_kwargs.hidden`?)"),
        ("trainer.foo=1", "`trainer.foo` is 1, but `lightning.pytorch.Trainer` takes no argument `foo`"),
        ("trainer.max_epochs=2", "`trainer.max_epochs` is 2, but every member trains for the config's own"
                                 " `max_epochs` (4). Remove `trainer.max_epochs` and set `max_epochs` instead."),
        ("trainer.logger=false", "`trainer.logger` is False, but the runner sets `logger` itself"),
    ],
)
def test_cli_bad_task_trainer_or_monitor_is_one_line_and_status_2_before_any_member_starts(
    tmp_path, capsys, override, message
):
    from ganno_lightning.pbt.runner import main

    pop = tmp_path / "pop"
    with pytest.raises(SystemExit) as exit_info:
        main([str(SMOKE), f"population_dir={pop}", override])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("ganno-pbt")]
    assert line.startswith(f"ganno-pbt: error: {message}") and "Traceback" not in err
    assert not (pop / "logs").exists() and not (pop / "checkpoints").exists()  # no member started


def test_cli_unwritable_population_dir_is_one_line_and_status_2(tmp_path, capsys):
    from ganno_lightning.pbt.runner import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main([str(SMOKE), f"population_dir={blocker / 'pop'}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("ganno-pbt: error: `population_dir` must be a writable directory")


def test_members_failing_alike_before_training_say_the_error_and_that_rerunning_will_not_help(tmp_path):
    # without the pre-flight check a bad `task_kwargs` reaches the members, which all fail the same way
    config = load_config(SMOKE, [f"population_dir={tmp_path / 'pop'}", "preflight=false", "task_kwargs.hiden=3"])
    with pytest.raises(RuntimeError) as error:
        run_population(config, progress=False)
    assert str(error.value).startswith(
        "Every member failed before its first report with the same error: ValueError: `task_kwargs.hiden` is 3,"
    )
    assert "Rerunning alone will not help" in str(error.value) and "the others finished" not in str(error.value)


def test_failure_message_says_whether_the_others_finished(tmp_path):
    from ganno_lightning.pbt.runner import _failure_file, _failure_message

    config = load_config(SMOKE, [f"population_dir={tmp_path}"])
    _failure_file(config, 0).parent.mkdir(parents=True)
    _failure_file(config, 0).write_text("RuntimeError: out of memory")
    _failure_file(config, 1).write_text("ValueError: nan")
    assert "; none finished. Run the same command again" in _failure_message(config, [0, 1], reported=set())
    assert "Member(s) [0] failed" in _failure_message(config, [0], reported=set())
    assert "; the others finished." in _failure_message(config, [0], reported=set())
    _failure_file(config, 1).write_text("RuntimeError: out of memory")
    assert "same error: RuntimeError: out of memory" in _failure_message(config, [0, 1], reported=set())
    # members that trained before failing alike may well get on after a rerun (a killed one says nothing)
    assert "none finished" in _failure_message(config, [0, 1], reported={1})
    _failure_file(config, 1).unlink()
    assert "none finished" in _failure_message(config, [0, 1], reported=set())


def test_a_damaged_latest_checkpoint_resumes_the_member_from_its_previous_one(tmp_path, monkeypatch):
    from ganno_lightning.pbt.runner import run_member

    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # killable_task, in this process
    pop, records = tmp_path / "pop", tmp_path / "records"
    records.mkdir()
    config_path = tmp_path / "killable.yaml"
    config_path.write_text(KILLABLE_CONFIG.format(pop=pop, records=records).replace("kill_after_exploit: true", ""))
    run_member(load_config(config_path), 0)  # alone: no peer to exploit, 4 steps per epoch
    store = PopulationStore(pop)
    latest = Path(store.members()[0].checkpoint)
    assert latest.name == "step_000000012.ckpt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # cut short
    store.set_status(0, "running")

    with pytest.warns(UserWarning, match="PBT member 0 resumes from its previous checkpoint .*step_000000008.ckpt"):
        run_member(load_config(config_path, ["max_epochs=4"]), 0)
    assert [h["step"] for h in store.history() if h["member"] == 0] == [4, 8, 12, 12, 16]
    assert store.members()[0].status == "done"

    for path in store.checkpoints(0):  # nothing readable left: a clear error, not torch's
        path.write_bytes(b"")
    store.set_status(0, "running")
    with pytest.raises(RuntimeError, match="Member 0 has no readable checkpoint"):
        run_member(load_config(config_path, ["max_epochs=5"]), 0)
