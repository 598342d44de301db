"""The README's Python examples run as written (shortened where they train for long, as each test says).

Each block is found by a line of its own, so a block that moves or changes still gets checked, and one
that disappears fails here instead of going stale silently.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TinyRegressor

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.S | re.M)


def block(marker: str) -> str:
    """The one README Python block that contains ``marker``."""
    found = [b for b in BLOCKS if marker in b]
    assert len(found) == 1, f"{len(found)} README Python blocks contain {marker!r} (expected one)"
    return found[0]


def shortened(source: str, *replacements: tuple[str, str]) -> str:
    for old, new in replacements:
        assert old in source, f"the README block no longer contains {old!r}: update this test"
        source = source.replace(old, new)
    return source


def run_block(source: str, **names) -> dict:
    namespace = {"__name__": "__main__", **names}
    exec(compile(source, "README.md", "exec"), namespace)
    return namespace


def test_the_quick_start_saves_a_schedule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = shortened(block('GANNOCallback(save_dir="schedule")'), ("max_epochs=10", "max_epochs=2"))
    namespace = run_block(source, model=TinyRegressor(optimizer="adam", lr=0.01))
    rows = namespace["trainer"].callbacks[0].schedule.rows()
    assert rows and {len(row) for row in rows} == {5}
    assert (tmp_path / "schedule" / "ganno_schedule.csv").is_file()


def test_every_callback_option_spelt_out(tmp_path, monkeypatch):
    from ganno_lightning import GANNOAgent

    monkeypatch.chdir(tmp_path)
    GANNOAgent.default().save("agent.pt")
    run_block(block('GANNOAgent.load("agent.pt")'))


def test_the_environment_smoke_rollout(monkeypatch):
    monkeypatch.chdir(ROOT)  # the block reads configs/ from the repository root
    namespace = run_block(block("make_env(load_config("))
    rollout = namespace["rollout"]
    assert rollout["next", "agents", "reward"].shape[0] == 3


def test_your_own_module_as_parallel_environments(tmp_path):
    (tmp_path / "my_models.py").write_text(block("class MyModule(L.LightningModule)"))
    (tmp_path / "make_env.py").write_text(block("ParallelEnv(2,"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "make_env.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch.Size([2, 3, 2, 1])" in done.stdout


def test_a_pbt_member(tmp_path, monkeypatch):
    from ganno_lightning.examples.digits import DigitsClassifier, DigitsDataModule

    monkeypatch.chdir(tmp_path)
    source = shortened(block("PBTCallback(\n"), ("max_epochs=30", "max_epochs=2"))
    namespace = run_block(source, model=DigitsClassifier(), datamodule=DigitsDataModule())
    assert namespace["trainer"].current_epoch == 2
    assert any((tmp_path / "runs" / "pbt").iterdir())


def test_a_boil_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = shortened(block("BOILTuner("), ("epochs=(1, 20), budget_epochs=200", "epochs=(1, 2), budget_epochs=4"),
                       ("workers=2", "workers=0"))  # in this process: the spawned workers are tested with BOIL
    result = run_block(source)["result"]
    assert result.best_values is not None and sum(len(t.epoch_curve()) for t in result.history) >= 4
    assert (tmp_path / "runs" / "boil" / "study.db").is_file()


def test_the_rule_optimizers():
    namespace = run_block(block("from ganno_lightning.nos import RuleOptimizer"))
    assert namespace["opt"].param_groups[0]["lr"] == 0.1


def test_a_rule_scored_by_a_short_run():
    source = shortened(block("RuleSearchCallback(\"addsign\""), ("max_steps=200", "max_steps=20"))
    cb = run_block(source)["cb"]
    assert cb.reward is not None and cb.curve
