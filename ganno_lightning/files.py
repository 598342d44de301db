"""Atomic file writes: a reader sees the old whole file or the new whole file, never a partial one.

Every file the package writes for others to read (agent files, training checkpoints, PBT
checkpoints and reports, NOS search state, evaluation results) goes through this module:

1. The data is written to a temporary file in the target's folder, named ``<name>.tmp-<pid>-<hex>``.
2. The temporary file is fsynced, then moved onto the target with ``os.replace`` (atomic on POSIX
   and Windows), and the folder is fsynced so the rename itself survives a power cut.
3. If the writer raises, the temporary file is removed and the target is untouched. If the process
   is killed, the ``.tmp-`` file stays behind unreferenced; :func:`remove_stale_tmp` deletes such
   leftovers where a single writer owns the folder.

Files get the permissions of a plain ``open`` (``0o666`` minus the umask), so other users can read
what one user saved.

Example::

    import torch
    from ganno_lightning.files import atomic_file, atomic_write_text

    atomic_write_text("runs/demo/summary.json", '{"best": 0.93}')
    with atomic_file("runs/demo/state.pt") as tmp:
        torch.save({"step": 10}, tmp)
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "TMP_MARK",
    "atomic_file",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_writable_dir",
    "commit_file",
    "remove_stale_tmp",
]

#: Marks temporary files in a name; :func:`remove_stale_tmp` deletes files whose name contains it.
TMP_MARK = ".tmp-"


def check_writable_dir(directory: str | os.PathLike, argument: str) -> Path:
    """Create ``directory`` if needed and prove it is writable by writing and removing a probe file.

    Args:
        directory: the folder to check.
        argument: the config key or argument that named it, quoted in the error message.

    Returns:
        The folder as an absolute path.

    Raises:
        PermissionError: naming ``argument`` and the path, if it cannot be created or written.

    Example::

        >>> import tempfile
        >>> check_writable_dir(tempfile.mkdtemp(), "out_dir").is_dir()
        True
    """
    path = Path(directory).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f"{TMP_MARK}probe-{os.getpid()}-{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise PermissionError(
            f"`{argument}` must be a writable directory, got {str(path)!r} ({err.strerror or err})."
            " Pass a directory you can write to."
        ) from err
    return path


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # Windows cannot open a folder for fsync; its rename is durable anyway
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without error, move it onto ``path``.

    Write the whole file to the yielded path inside the block (``torch.save``, ``fig.savefig``,
    ``Path.write_bytes`` all accept it). On an exception the temporary file is removed and ``path``
    keeps its old content. The folder of ``path`` is created if missing.

    Args:
        path: the file to write.

    Example::

        with atomic_file("ckpt/step_10.ckpt") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        commit_file(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def commit_file(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make a fully written ``tmp`` durable (fsync) and move it onto ``path`` in one atomic rename.

    For writers that cannot use :func:`atomic_file` because another party names and writes the
    temporary file (e.g. Lightning's collective ``trainer.save_checkpoint``). Name ``tmp`` with
    :data:`TMP_MARK` in it so that :func:`remove_stale_tmp` finds it after a crash.

    Example::

        trainer.save_checkpoint("ckpt/step_10.ckpt.tmp-write")
        commit_file("ckpt/step_10.ckpt.tmp-write", "ckpt/step_10.ckpt")
    """
    tmp, path = Path(tmp), Path(path)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_file`).

    Example::

        atomic_write_bytes("runs/demo/pid", b"4242")
    """
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically, UTF-8 encoded (see :func:`atomic_file`).

    Example::

        atomic_write_text("runs/demo/results.json", json.dumps(results, indent=1))
    """
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_tmp(directory: str | os.PathLike) -> int:
    """Delete leftover temporary files (names containing :data:`TMP_MARK`) in ``directory``.

    Call it only where this process is the folder's sole writer: another writer's temporary file
    may be in use. A missing folder is not an error.

    Returns:
        How many files were removed.

    Example::

        >>> import tempfile
        >>> remove_stale_tmp(tempfile.mkdtemp())
        0
    """
    directory = Path(directory)
    removed = 0
    if directory.is_dir():
        for entry in directory.iterdir():
            if TMP_MARK in entry.name and entry.is_file():
                entry.unlink(missing_ok=True)
                removed += 1
    return removed
