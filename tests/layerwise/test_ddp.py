import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed

from ganno_lightning.layerwise.features import LR_PROBE_FEATURES

HERE = Path(__file__).parent


def run_workers(out: Path, *args: str) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(HERE / "ddp_worker.py"), str(out), *args], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((out / f"seen{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_ddp_ranks_make_identical_decisions_and_only_rank_zero_writes(tmp_path):
    seen = run_workers(tmp_path)
    assert len(seen[0]["actions"]) == 9  # 2 epochs x (16 batches / 2 ranks) / interval 2, plus the start
    assert seen[0]["actions"] == seen[1]["actions"]
    assert seen[0]["lrs"] == seen[1]["lrs"]
    assert seen[0]["observations"] == seen[1]["observations"]  # losses are averaged over ranks
    assert seen[0]["params"] == seen[1]["params"]
    assert (tmp_path / "rank0" / "ganno_schedule.csv").is_file()
    assert not (tmp_path / "rank1").exists()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_a_nan_loss_on_one_rank_skips_the_same_decisions_on_every_rank(tmp_path):
    seen = run_workers(tmp_path, "nan-on-rank-1")
    assert len(seen[0]["actions"]) == 7  # the decisions after steps 2-3 and 4-5 are skipped: the mean loss is NaN
    assert seen[0]["actions"] == seen[1]["actions"] and seen[0]["lrs"] == seen[1]["lrs"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_a_nan_loss_on_one_rank_rolls_every_rank_back_alike(tmp_path):
    seen = run_workers(tmp_path, "recover")
    assert seen[0]["rollbacks"] == seen[1]["rollbacks"] == 2  # the intervals of steps 2-3 and 4-5, on both ranks
    assert seen[0]["params"] == seen[1]["params"] and all(math.isfinite(p) for p in seen[0]["params"])
    assert seen[0]["lrs"] == seen[1]["lrs"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_a_step_0_probe_and_a_prior_agree_on_every_rank(tmp_path):
    seen = run_workers(tmp_path, "act-early")
    assert len(seen[0]["actions"]) == 10  # decisions at steps 0 (replacing the start row) and 1, then every 2 to 16
    assert seen[0]["observations"][0] == seen[1]["observations"][0]  # the probe's gradients, averaged over ranks
    lr_probe = [row[-len(LR_PROBE_FEATURES):] for row in seen[0]["observations"][0]]  # and its trial update's losses
    assert all(value != 0 for row in lr_probe for value in row)
    assert seen[0]["actions"] == seen[1]["actions"] and seen[0]["lrs"] == seen[1]["lrs"]
    assert seen[0]["params"] == seen[1]["params"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_an_initial_lr_search_chooses_alike_on_every_rank(tmp_path):
    seen = run_workers(tmp_path, "lr-search")
    assert seen[0]["lr_search"]["scores"].keys() == {"1", "3", "10"}
    assert seen[0]["lr_search"] == seen[1]["lr_search"]  # each rank's own batches, the scores averaged
    assert seen[0]["lrs"] == seen[1]["lrs"] and seen[0]["params"] == seen[1]["params"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_the_callback_travels_into_ddp_spawn_processes(tmp_path):
    seen = run_workers(tmp_path, "spawn")
    assert seen[0]["status"] == "finished"  # it crashed in the spawned processes before
