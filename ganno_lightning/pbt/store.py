"""The population's shared state: an SQLite store plus atomically written checkpoints.

Members are separate processes (on one machine, or on several that share a file system). They
coordinate only through one directory:

```
population_dir/
    population.db                 # SQLite: members, score history, lineage, population settings
    checkpoints/member_003/step_000120.ckpt            # what member 3 reported at step 120
    checkpoints/member_003/step_000120_exploit.ckpt    # its state after exploiting there (donor's
                                                       # weights, explored values): what it trains on
```

Crash safety comes from three rules:

1. A checkpoint is written atomically (:mod:`ganno_lightning.files`: a temporary file in the same
   folder, fsynced, then moved into place with ``os.replace``). A member killed mid-write leaves
   only a ``.tmp-`` file that nobody references; it is removed when that member starts again.
2. The database row that points to a checkpoint is committed only after the file is in place, and
   a member deletes its old checkpoints only after the new row is committed, keeping the last
   ``keep_checkpoints`` so that a donor being read by a slow peer is not pulled away. SQLite's
   journal makes every report, exploit and status change all-or-nothing.
3. An exploit is recorded together with the checkpoint of the state it produced, in one
   transaction, before the member trains on. A member killed after that resumes from the exploited
   state; killed before, it resumes from its report and the lineage never shows the exploit.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ganno_lightning.pbt.core import LineageEvent
from ganno_lightning.sqlite_store import SQLiteStore

__all__ = ["MemberRecord", "PopulationStore"]

SCHEMA_VERSION = 1
_STEP_FILE = re.compile(r"^step_(\d+)(_exploit)?\.ckpt$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS members (
    member INTEGER PRIMARY KEY,
    hyperparameters TEXT NOT NULL,
    step INTEGER NOT NULL DEFAULT -1,
    score REAL,
    checkpoint TEXT,
    status TEXT NOT NULL DEFAULT 'running',
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    member INTEGER NOT NULL,
    step INTEGER NOT NULL,
    score REAL,
    hyperparameters TEXT NOT NULL,
    checkpoint TEXT,
    time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS lineage (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    member INTEGER NOT NULL,
    step INTEGER NOT NULL,
    donor INTEGER NOT NULL,
    donor_step INTEGER NOT NULL,
    score REAL,
    donor_score REAL,
    old_hyperparameters TEXT NOT NULL,
    new_hyperparameters TEXT NOT NULL,
    time REAL NOT NULL
);
"""


@dataclass
class MemberRecord:
    """The latest state of one member as stored: its current values and its last report."""

    member: int
    hyperparameters: dict[str, float]
    step: int
    score: float | None
    checkpoint: str | None
    status: str


def _score_in(value: float | None) -> float | None:
    # SQLite stores NaN as NULL; keep non-finite scores as +-inf-safe floats instead.
    if value is None:
        return None
    return float(value) if math.isfinite(value) else float("inf") if value > 0 else float("-inf")


class PopulationStore(SQLiteStore):
    """SQLite-backed shared state of one population, safe for concurrent member processes.

    Every write is one ``BEGIN IMMEDIATE`` transaction; SQLite's file locks serialise writers across
    processes and its rollback journal undoes a transaction cut short by a kill. Connections are
    opened per process, so a store object may be pickled into a worker
    (:class:`~ganno_lightning.sqlite_store.SQLiteStore`).

    Args:
        directory: the population directory (created if missing; must be writable).
        timeout: seconds to wait for another member's lock before failing.

    Raises:
        PermissionError: if ``directory`` is not writable.

    Example::

        store = PopulationStore("runs/pbt")
        store.init_population({"mode": "min", "space": {"lr": {"low": 1e-4, "high": 0.1, "log": True}}})
        store.register(0, {"lr": 0.01})
        store.report(0, step=100, score=0.42, hyperparameters={"lr": 0.01}, checkpoint=None)
        store.members()[0].score  # 0.42
    """

    FILE_NAME = "population.db"
    SCHEMA = _SCHEMA
    SCHEMA_VERSION = SCHEMA_VERSION
    KIND = "population"

    def __init__(self, directory: str | os.PathLike, timeout: float = 120.0) -> None:
        super().__init__(directory, timeout, argument="population_dir")

    def init_population(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Store the population's settings, or check them against the stored ones on resume.

        Raises:
            ValueError: naming the first setting that differs from the stored population.
        """
        return self.init_settings(settings)

    # -- members --------------------------------------------------------------------------------
    def register(self, member: int, hyperparameters: Mapping[str, float]) -> MemberRecord:
        """Add ``member`` with its initial values unless it already exists; return the stored record."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO members (member, hyperparameters, updated) VALUES (?, ?, ?)",
                (member, json.dumps(dict(hyperparameters)), time.time()),
            )
        return self.members()[member]

    def members(self) -> dict[int, MemberRecord]:
        rows = self._connect().execute(
            "SELECT member, hyperparameters, step, score, checkpoint, status FROM members ORDER BY member"
        )
        return {
            row[0]: MemberRecord(row[0], json.loads(row[1]), row[2], _score_in(row[3]), row[4], row[5]) for row in rows
        }

    def report(
        self,
        member: int,
        step: int,
        score: float,
        hyperparameters: Mapping[str, float],
        checkpoint: str | os.PathLike | None,
    ) -> None:
        """Record a ready member's score, values and (already written) checkpoint in one transaction."""
        now = time.time()
        ckpt = None if checkpoint is None else str(checkpoint)
        values = json.dumps(dict(hyperparameters))
        with self.transaction() as conn:
            updated = conn.execute(
                "UPDATE members SET step = ?, score = ?, hyperparameters = ?, checkpoint = COALESCE(?, checkpoint),"
                " updated = ? WHERE member = ?",
                (step, float(score), values, ckpt, now, member),
            ).rowcount
            if not updated:
                raise KeyError(f"Member {member} is not registered in {str(self.directory)!r}; call `register` first.")
            conn.execute(
                "INSERT INTO history (member, step, score, hyperparameters, checkpoint, time) VALUES (?, ?, ?, ?, ?, ?)",
                (member, step, float(score), values, ckpt, now),
            )

    def record_exploit(self, event: LineageEvent, checkpoint: str | os.PathLike | None = None) -> None:
        """Record an exploit/explore event and make the new values the member's current ones.

        Args:
            event: what the member copied and the values it continues with.
            checkpoint: the member's (already written) state after the exploit; from here on its
                row points to it, so a resume continues from the exploit and a peer that copies
                this member gets the weights that go with its values.
        """
        event.time = event.time or time.time()
        ckpt = None if checkpoint is None else str(checkpoint)
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO lineage (member, step, donor, donor_step, score, donor_score, old_hyperparameters,"
                " new_hyperparameters, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.member,
                    event.step,
                    event.donor,
                    event.donor_step,
                    event.score,
                    event.donor_score,
                    json.dumps(event.old_hyperparameters),
                    json.dumps(event.new_hyperparameters),
                    event.time,
                ),
            )
            conn.execute(
                "UPDATE members SET hyperparameters = ?, checkpoint = COALESCE(?, checkpoint), updated = ?"
                " WHERE member = ?",
                (json.dumps(event.new_hyperparameters), ckpt, event.time, event.member),
            )

    def set_status(self, member: int, status: str) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE members SET status = ?, updated = ? WHERE member = ?", (status, time.time(), member))

    def history(self, start: int = 0) -> list[dict[str, Any]]:
        """Every report in order (from the ``start``-th on): the hyperparameter schedule of each member over time."""
        rows = self._connect().execute(
            "SELECT member, step, score, hyperparameters, checkpoint, time FROM history ORDER BY id LIMIT -1 OFFSET ?",
            (start,),
        )
        return [
            {
                "member": r[0],
                "step": r[1],
                "score": _score_in(r[2]),
                "hyperparameters": json.loads(r[3]),
                "checkpoint": r[4],
                "time": r[5],
            }
            for r in rows
        ]

    def reports_at(self, step: int) -> dict[int, dict[str, Any]]:
        """Each member's report at exactly ``step`` (the latest, if a restarted member reported it twice)."""
        rows = self._connect().execute(
            "SELECT member, score, hyperparameters, checkpoint FROM history WHERE step = ? ORDER BY id", (step,)
        )
        return {r[0]: {"score": _score_in(r[1]), "hyperparameters": json.loads(r[2]), "checkpoint": r[3]} for r in rows}

    def schedule(self) -> list[dict[str, Any]]:
        """Each member's values over time: every report, plus every exploit at the step it took effect.

        Rows are ``{"member", "step", "event", "score", "hyperparameters"}`` with ``event`` either
        ``"report"`` (values in use up to this report) or ``"exploit"`` (values in use from here on).
        """
        rows = [
            {"member": h["member"], "step": h["step"], "event": "report", "score": h["score"],
             "hyperparameters": h["hyperparameters"], "_order": (h["time"], 0)}
            for h in self.history()
        ]
        rows += [
            {"member": e.member, "step": e.step, "event": "exploit", "score": e.donor_score,
             "hyperparameters": e.new_hyperparameters, "_order": (e.time, 1)}
            for e in self.lineage()
        ]
        rows.sort(key=lambda r: (r["member"], r["step"], r["_order"][1], r["_order"][0]))
        for row in rows:
            del row["_order"]
        return rows

    def lineage(self, start: int = 0) -> list[LineageEvent]:
        """Every exploit in order (from the ``start``-th on)."""
        rows = self._connect().execute(
            "SELECT member, step, donor, donor_step, score, donor_score, old_hyperparameters, new_hyperparameters,"
            " time FROM lineage ORDER BY id LIMIT -1 OFFSET ?",
            (start,),
        )
        return [
            LineageEvent(r[0], r[1], r[2], r[3], _score_in(r[4]), _score_in(r[5]), json.loads(r[6]), json.loads(r[7]), r[8])
            for r in rows
        ]

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint_dir(self, member: int) -> Path:
        return self.directory / "checkpoints" / f"member_{member:03d}"

    def checkpoint_path(self, member: int, step: int, exploit: bool = False) -> Path:
        """Where ``member`` reports at ``step``, or (``exploit``) stores its state after exploiting there."""
        return self.checkpoint_dir(member) / f"step_{step:09d}{'_exploit' if exploit else ''}.ckpt"

    def checkpoints(self, member: int) -> list[Path]:
        """``member``'s checkpoint files on disk, oldest first (at one step the report precedes its exploit)."""
        directory = self.checkpoint_dir(member)
        if not directory.is_dir():
            return []
        files = sorted(
            (int(m.group(1)), bool(m.group(2)), entry)
            for entry in directory.iterdir()
            if (m := _STEP_FILE.match(entry.name))
        )
        return [entry for *_, entry in files]

    def prune_checkpoints(self, member: int, keep: int = 2) -> list[Path]:
        """Delete ``member``'s checkpoints except the newest ``keep`` and the one its row points to.

        Call it after :meth:`report` committed, from the member itself (the only writer of its folder).
        """
        files = self.checkpoints(member)
        if not files:
            return []
        current = self.members().get(member)
        protected = {Path(current.checkpoint).name} if current and current.checkpoint else set()
        removed = []
        for entry in files[: max(0, len(files) - keep)]:
            if entry.name not in protected:
                entry.unlink(missing_ok=True)
                removed.append(entry)
        return removed
