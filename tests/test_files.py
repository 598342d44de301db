"""Atomic writes: the target holds the old whole file or the new whole file, never a partial one."""

import os
import stat

import pytest
import torch

from ganno_lightning.files import (
    TMP_MARK,
    atomic_file,
    atomic_write_bytes,
    atomic_write_text,
    check_writable_dir,
    commit_file,
    remove_stale_tmp,
)


def test_writes_create_the_folder_and_replace_whole_files(tmp_path):
    target = tmp_path / "new" / "results.json"
    atomic_write_text(target, '{"a": 1}')
    atomic_write_text(target, '{"a": 2}')
    assert target.read_text() == '{"a": 2}'
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert os.listdir(target.parent) == ["results.json"]


def test_writer_that_raises_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "ckpt" / "step_1.ckpt"
    atomic_write_bytes(target, b"first")
    with pytest.raises(RuntimeError, match="writer crashed"):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"half")
            assert TMP_MARK in tmp.name and tmp.parent == target.parent  # same folder: rename is atomic
            raise RuntimeError("writer crashed")
    assert target.read_bytes() == b"first"
    assert os.listdir(target.parent) == ["step_1.ckpt"]


def test_writer_that_raises_before_the_first_write_creates_no_target(tmp_path):
    target = tmp_path / "run" / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(target) as tmp:
            torch.save({"x": torch.ones(3)}, tmp)
            raise KeyboardInterrupt
    assert os.listdir(target.parent) == []


def test_torch_save_round_trips_with_plain_file_permissions(tmp_path):
    target = tmp_path / "agent.pt"
    with atomic_file(target) as tmp:
        torch.save({"w": torch.arange(4)}, tmp)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.arange(4))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # readable by others, unlike mkstemp's 0600


def test_commit_file_moves_a_finished_temporary_into_place(tmp_path):
    tmp_path = tmp_path / "ckpt"
    tmp_path.mkdir()
    tmp = tmp_path / f"best.ckpt{TMP_MARK}write"
    tmp.write_bytes(b"whole")
    commit_file(tmp, tmp_path / "best.ckpt")
    assert os.listdir(tmp_path) == ["best.ckpt"] and (tmp_path / "best.ckpt").read_bytes() == b"whole"


def test_remove_stale_tmp_deletes_only_leftover_temporaries(tmp_path):
    tmp_path = tmp_path / "ckpt"
    tmp_path.mkdir()
    (tmp_path / "step_1.ckpt").write_bytes(b"keep")
    (tmp_path / f"step_2.ckpt{TMP_MARK}123-abcdef01").write_bytes(b"half")
    (tmp_path / f"step_3.ckpt{TMP_MARK}write").write_bytes(b"half")
    assert remove_stale_tmp(tmp_path) == 2
    assert os.listdir(tmp_path) == ["step_1.ckpt"]
    assert remove_stale_tmp(tmp_path / "missing") == 0


def test_unwritable_directory_is_a_clear_error_naming_the_argument(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match=r"`out_dir` must be a writable directory, got '.*file/sub'.*Pass a"):
        check_writable_dir(blocker / "sub", "out_dir")
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match="`out_dir` must be a writable directory"):
            check_writable_dir(locked, "out_dir")
    assert check_writable_dir(tmp_path / "a" / "b", "out_dir") == (tmp_path / "a" / "b").resolve()
    assert os.listdir(tmp_path / "a" / "b") == []  # the probe file is gone
