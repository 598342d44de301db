"""The search loop end to end: real worker processes, real Lightning runs, W&B offline."""

import json
import re
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from ganno_lightning.nos.dsl import UnknownNameError
from ganno_lightning.nos.search import RuleSearch, load_config, main

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "nos_search_smoke.yaml"


def test_smoke_search_improves_mean_reward_and_saves_everything(tmp_path):
    out = tmp_path / "search"
    search = RuleSearch(SMOKE, [f"out_dir={out}"])
    history = search.run()
    means = [r["charts/mean_reward"] for r in search.round_stats]
    assert len(means) == 3
    assert means[-1] > means[0], means  # PPO moved the controller towards better rules
    assert len(history) >= 3 * 6
    assert {h["status"] for h in history} <= {"ok", "diverged"}
    best = search.best()
    assert best["reward"] == max(h["reward"] for h in history if h["reward"] is not None)
    # results: every candidate with rule, reward, curve
    results = json.loads((out / "results.json").read_text())
    assert results["best"]["rule"] == best["rule"]
    assert all({"rule", "reward", "curve", "status"} <= set(c) for c in results["candidates"])
    assert any(len(c["curve"]) == 2 for c in results["candidates"])  # validated at steps 10 and 20
    # the resumable state loads with weights_only and the W&B run was written offline
    state = torch.load(out / "search_state.pt", weights_only=True)
    assert state["next_round"] == 3 and len(state["history"]) == len(history)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def _small(tmp_path, *extra):
    # in-process (workers=0): the loop logic without paying for process start-up
    return [f"out_dir={tmp_path / 'run'}", "workers=0", "candidates_per_round=3", "wandb.enabled=false", *extra]


def test_resume_continues_where_it_stopped(tmp_path):
    first = RuleSearch(SMOKE, _small(tmp_path, "rounds=1"))
    first.run()
    saved = list(first.history)
    second = RuleSearch(SMOKE, _small(tmp_path, "rounds=2"))
    assert second.next_round == 1 and second.history == saved
    assert second.ppo.baseline == first.ppo.baseline
    second.run()
    assert second.next_round == 2 and second.history[: len(saved)] == saved
    assert {h["round"] for h in second.history} == {0, 1}


def test_corrupt_state_falls_back_to_previous_copy(tmp_path):
    search = RuleSearch(SMOKE, _small(tmp_path, "rounds=2"))
    search.run()
    state = tmp_path / "run" / "search_state.pt"
    state.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="could not read"):
        resumed = RuleSearch(SMOKE, _small(tmp_path, "rounds=2"))
    assert resumed.next_round == 1  # the .prev copy, one round older
    assert list(state.parent.glob("search_state.pt.corrupt-*"))
    # both copies corrupt: start again, never crash
    for p in (state.with_name("search_state.pt.prev"),):
        p.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="starting from scratch"):
        fresh = RuleSearch(SMOKE, _small(tmp_path, "rounds=2"))
    assert fresh.next_round == 0 and fresh.history == []


def test_resume_with_a_different_space_is_an_error(tmp_path):
    RuleSearch(SMOKE, _small(tmp_path, "rounds=1")).run()
    with pytest.raises(ValueError, match=r"different search space \(differs in: operands\)"):
        RuleSearch(SMOKE, _small(tmp_path, "rounds=2", "space.operands=[g,m_hat]"))


def test_diverging_candidates_never_stop_the_search(tmp_path):
    # every rule is gradient ascent with a big step: all diverge, the search still completes
    search = RuleSearch(
        SMOKE,
        _small(tmp_path, "rounds=2", "space.operands=[g]", "space.unary=[neg]", "space.binary=[add]", "train.lr=5.0", "train.diverged_reward=-1.0"),
    )
    history = search.run()
    assert {h["status"] for h in history} == {"diverged"}
    assert [r["charts/mean_reward"] for r in search.round_stats] == [-1.0, -1.0]
    assert any(h.get("cached") for h in history)  # the one rule is trained once, then reused


def _write_crashing_task(tmp_path, monkeypatch):
    pkg = tmp_path / "crashpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            '''
            import os

            def crash_once(marker, always=False, **kw):
                """Kills its worker process the first time a candidate is built (marker file), or always."""
                if always or not os.path.exists(marker):
                    open(marker, "w").close()
                    os._exit(17)  # no exception, no cleanup: what a SIGKILL or OOM looks like to the pool
                from ganno_lightning.examples.digits import DigitsClassifier
                return DigitsClassifier(**kw)
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit sys.path


def test_killed_worker_is_retried_and_a_persistent_crash_is_recorded(tmp_path, monkeypatch):
    _write_crashing_task(tmp_path, monkeypatch)
    marker = tmp_path / "crashed"
    common = [
        f"out_dir={tmp_path / 'crash'}",
        "rounds=1",
        "candidates_per_round=2",
        "workers=1",  # each restarted worker pays a Lightning import: keep it to one process
        "wandb.enabled=false",
        "task.module=crashpkg:crash_once",
        "train.diverged_reward=-3.0",
        "check_task=false",  # the one-batch check builds the task in this process, which it would kill
    ]
    with pytest.warns(UserWarning, match="worker process died"):
        history = RuleSearch(SMOKE, [*common, f"task.module_kwargs.marker={marker}"]).run()
    assert marker.exists()
    assert {h["status"] for h in history} == {"ok"}  # the second attempt succeeded

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = RuleSearch(
            SMOKE, [*common, f"out_dir={tmp_path / 'crash2'}", f"task.module_kwargs.marker={marker}", "task.module_kwargs.always=true", "max_retries=0"]
        )
        history = search.run()
    assert {h["status"] for h in history} == {"worker_died"}
    assert search.round_stats[0]["charts/mean_reward"] == -3.0


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (["rounds_total=3"], ValueError, r"Unknown config key `rounds_total`.*did you mean `rounds`"),
        (["train.learning_rate=0.1"], ValueError, r"Unknown config key `train.learning_rate`"),
        (["rounds=three"], ValueError, r"`rounds` in the overrides must be an int, got 'three'"),
        (["rounds=0"], ValueError, r"`rounds` must be an int >= 1, got 0"),
        (["space.operands=[]"], ValueError, r"`operands` must be a non-empty list, got \[\]"),
        (["space.operands=[gradient]"], UnknownNameError, r"unknown operand 'gradient'"),
        (["task.module=nowhere.mod:Task"], ValueError, r"`task.module` 'nowhere.mod:Task': cannot import module 'nowhere.mod'"),
        (["train.val_check_interval=50"], ValueError, r"`train.val_check_interval` \(50\) must be <= `train.max_steps` \(20\)"),
        (["train.mode=best"], ValueError, r"`train.mode` must be 'min' or 'max', got 'best'"),
    ],
)
def test_config_errors_name_the_key(tmp_path, overrides, error, match):
    with pytest.raises(error, match=match):
        RuleSearch(SMOKE, [f"out_dir={tmp_path}", *overrides])


def test_unknown_key_in_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: 2\ncontroler:\n  lr: 0.1\n")
    with pytest.raises(ValueError, match=r"Unknown config key `controler` in .*bad.yaml.*see configs/nos_search.yaml"):
        load_config(bad)


def test_cli_runs_a_search(tmp_path, capsys):
    assert main([str(SMOKE), *_small(tmp_path, "rounds=1")]) == 0
    assert "best rule:" in capsys.readouterr().out
    assert (tmp_path / "run" / "results.json").exists()


def _unwritable(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    return blocker / "out"  # a folder cannot be made inside a file, on any OS


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.monitor=val_ac", r"`train.monitor` is 'val_ac', but the task never logs it .*it logs .*`val_acc`"),
        ("task.module_kwargs.hiden=3", r"`task.module_kwargs.hiden` is 3, but `task.module` .*DigitsClassifier' takes"
                                       r" no argument `hiden` \(did you mean `task.module_kwargs.hidden`\?\)"),
        ("task.datamodule_kwargs.batchsize=8", r"`task.datamodule_kwargs.batchsize` is 8, but .* \(did you mean"
                                               r" `task.datamodule_kwargs.batch_size`\?\)"),
        ("task.module_kwargs.hidden=abc", r"`task.module` .*DigitsClassifier' could not be built: TypeError: .*"
                                          r" Every candidate would fail the same way: .* set `check_task` to false"
                                          r" to skip this check"),
        ("out_dir=UNWRITABLE", r"`out_dir` must be a writable directory"),
    ],
)
def test_cli_refuses_a_task_or_out_dir_that_would_fail_every_candidate_before_the_search(tmp_path, capsys, override,
                                                                                          match):
    override = override.replace("UNWRITABLE", str(_unwritable(tmp_path)))
    with pytest.raises(SystemExit) as exit_info:
        main([str(SMOKE), *_small(tmp_path, "rounds=1"), override])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ganno-nos-search: error: ")
    assert re.search(match, err), err
    assert not (tmp_path / "run" / "results.json").exists()  # no candidate was trained


def test_run_checks_the_task_before_the_first_round(tmp_path):
    search = RuleSearch(SMOKE, _small(tmp_path, "rounds=1", "train.monitor=val_ac"))
    with pytest.raises(ValueError, match=r"`train.monitor` is 'val_ac'"):
        search.run()
    assert search.history == [] and search.round_stats == []


def test_a_round_whose_candidates_all_fail_with_one_error_stops_the_search(tmp_path):
    search = RuleSearch(SMOKE, _small(tmp_path, "rounds=2", "check_task=false", "train.monitor=val_ac"))
    with pytest.raises(RuntimeError, match=r"stopped in round 0: all 3 candidates failed with the same error.*"
                                           r"`monitor` 'val_ac' was not logged"):
        search.run()
    assert search.round_stats == [] and search.next_round == 0  # the controller never trained on those rewards
    assert not (tmp_path / "run" / "search_state.pt").exists()
