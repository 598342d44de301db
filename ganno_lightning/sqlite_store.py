"""One SQLite database shared by several processes: the base of every tuner's store (PBT, BOIL).

What every store needs, written once:

- a connection per process (a store object pickled into a worker reconnects there), with a busy
  timeout so that writers in other processes wait for each other instead of failing;
- :meth:`SQLiteStore.transaction`: one ``BEGIN IMMEDIATE`` ... ``COMMIT`` per write, so a write is
  all-or-nothing (SQLite's journal undoes a transaction cut short by a kill) and
  ``synchronous = FULL`` makes a committed one survive a power cut;
- a ``meta`` table of the run's settings, stored on creation and compared on every resume
  (:meth:`SQLiteStore.init_settings`), so a rerun with other settings is an error naming the setting.

The journal is SQLite's default rollback journal, not WAL: WAL needs shared memory between the
processes, which a folder on a network file system (a population or study shared by the machines
of a cluster) does not give.

Example::

    class NotesStore(SQLiteStore):
        FILE_NAME = "notes.db"
        SCHEMA = "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL);"

    store = NotesStore("runs/notes", argument="notes_dir")
    store.init_settings({"seed": 0})
    with store.transaction() as conn:
        conn.execute("INSERT INTO notes (text) VALUES (?)", ("hello",))
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator, Mapping
from typing import Any

from ganno_lightning.files import check_writable_dir

__all__ = ["SQLiteStore"]

_META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"


class SQLiteStore:
    """A directory holding one SQLite database, safe for concurrent processes.

    Subclasses set :attr:`FILE_NAME` (the database's name in the directory), :attr:`SCHEMA` (their
    ``CREATE TABLE IF NOT EXISTS`` statements), :attr:`SCHEMA_VERSION` and :attr:`KIND` (what error
    messages call the run: "population", "study").

    Args:
        directory: the store's directory (created if missing; must be writable).
        timeout: seconds to wait for another process's write lock before failing.
        argument: the argument or config key that named ``directory``, quoted in error messages.

    Raises:
        PermissionError: if ``directory`` is not writable (naming ``argument``).
        ValueError: if the database file is damaged (not a database, cut short, pages overwritten).
    """

    FILE_NAME = "store.db"
    SCHEMA = ""
    SCHEMA_VERSION = 1
    KIND = "run"

    def __init__(self, directory: str | os.PathLike, timeout: float = 120.0, argument: str = "directory") -> None:
        self.directory = check_writable_dir(directory, argument)
        self.db_path = self.directory / self.FILE_NAME
        self.timeout = timeout
        self.argument = argument
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._connect(check=True)  # creates the schema, and fails early on a damaged database file

    # -- connection -----------------------------------------------------------------------------
    def _connect(self, check: bool = False) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            try:
                conn = sqlite3.connect(self.db_path, timeout=self.timeout, isolation_level=None)
                conn.execute("PRAGMA busy_timeout = %d" % int(self.timeout * 1000))
                conn.execute("PRAGMA synchronous = FULL")
                conn.executescript(_META + self.SCHEMA)
                # once per store, where it is opened first: a page damaged inside the file shows here, not mid-run
                verdict = conn.execute("PRAGMA quick_check").fetchone()[0] if check else "ok"
            except sqlite3.DatabaseError as err:
                raise self._damaged(str(err)) from err
            if verdict != "ok":
                conn.close()
                raise self._damaged(f"integrity check: {verdict}")
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def _damaged(self, why: str) -> ValueError:
        why = " ".join(why.split())  # SQLite's integrity report spans lines: one line, for a command's error
        return ValueError(
            f"The {self.KIND} database {str(self.db_path)!r} is damaged and cannot be read ({why}). Restore it from a"
            f" copy, or give a new `{self.argument}` to start again."
        )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def read(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """The rows of one query (a consistent snapshot)."""
        return self._connect().execute(sql, parameters).fetchall()

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_conn"], state["_pid"] = None, None  # a connection never crosses processes
        return state

    # -- settings -------------------------------------------------------------------------------
    def init_settings(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Store the run's settings, or check them against the stored ones on resume.

        Returns:
            The stored settings (with ``schema_version``).

        Raises:
            ValueError: naming the first setting that differs from the stored run, both values and
                the fix.
        """
        with self.transaction() as conn:
            stored = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
            if not stored:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (json.dumps(self.SCHEMA_VERSION),))
                for key, value in settings.items():
                    conn.execute("INSERT INTO meta VALUES (?, ?)", (key, json.dumps(value, sort_keys=True)))
                return {"schema_version": self.SCHEMA_VERSION, **settings}
        for key, value in settings.items():
            if key in stored and json.loads(json.dumps(value, sort_keys=True)) != stored[key]:
                raise ValueError(
                    f"The {self.KIND} in {str(self.directory)!r} was created with {key}={stored[key]!r}, got {value!r}."
                    f" Use a new `{self.argument}` or the original setting to resume."
                )
        return stored

    def settings(self) -> dict[str, Any]:
        """The stored settings (empty for a new store)."""
        return {k: json.loads(v) for k, v in self.read("SELECT key, value FROM meta")}
