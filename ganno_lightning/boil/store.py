"""A BOIL study's state: one SQLite database of trials, their learning curves and the model's fits.

```
study_dir/
    study.db     # SQLite: settings, trials, curve points, model fits, suggestions
    report/      # what ganno_lightning.boil.report writes from it (PNG + CSV)
```

Crash safety comes from three rules:

1. A suggestion is committed (a trial with status ``queued``, with its suggestion and the fit it
   came from, in one transaction) before its trial starts, so a driver killed after suggesting
   runs that trial on resume instead of forgetting it.
2. Every curve point is committed when it is reported (one transaction each), keyed by the trial's
   optimizer step, so a killed worker or driver loses no point already reported.
3. On resume the driver calls :meth:`BOILStore.recover`: a ``running`` trial whose process is gone
   becomes ``interrupted``; its curve prefix stays, as data for the model.

Example::

    store = BOILStore("runs/boil")
    store.init_study({"monitor": "val_loss", "mode": "min"})
    trial = store.add_trial(x=[0.5], values={"lr": 0.01}, max_epochs=3, info={"source": "random"})
    store.start_trial(trial)
    store.report(trial, global_step=10, epoch=1, value=0.9, seconds=1.2)
    store.end_epoch(trial, epochs_done=1, seconds=1.3)
    store.finish_trial(trial, "done")
    store.trial(trial).observation().curve  # [(1, 0.9)]
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ganno_lightning.boil.observations import TRIAL_STATES, Observation, suggest_seconds
from ganno_lightning.sqlite_store import SQLiteStore

__all__ = ["BOILStore", "CurvePoint", "TrialRecord"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    x TEXT NOT NULL,
    hyperparameters TEXT NOT NULL,
    max_epochs INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued',
    epochs_done INTEGER NOT NULL DEFAULT 0,
    seconds REAL NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    host TEXT,
    pid INTEGER,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS curve (
    trial INTEGER NOT NULL,
    global_step INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    value REAL,
    seconds REAL NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (trial, global_step)
);
CREATE TABLE IF NOT EXISTS fits (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    observations INTEGER NOT NULL,
    m0 REAL,
    g0 REAL,
    diagnostics TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS suggestions (
    trial INTEGER PRIMARY KEY,
    fit INTEGER,
    time REAL NOT NULL,
    info TEXT NOT NULL
);
"""

#: A trial in one of these states may still get curve points (the core sees it as pending).
PENDING_STATES = ("queued", "running")


@dataclass(frozen=True)
class CurvePoint:
    """One validation of a trial: its optimizer step, its epoch (1 = the first) and the metric."""

    global_step: int
    epoch: int
    value: float
    seconds: float  # training seconds of the trial when it was reported
    time: float  # wall-clock time (``time.time()``) when it was reported


@dataclass
class TrialRecord:
    """One trial as stored: what was suggested, how far it got, and every validation point."""

    id: int
    x: list[float]
    values: dict[str, Any]
    max_epochs: int
    status: str
    epochs_done: int
    seconds: float
    reason: str
    created: float
    updated: float
    host: str | None = None
    pid: int | None = None
    points: list[CurvePoint] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def epoch_curve(self) -> list[tuple[int, float]]:
        """``(epoch, value)``: the last validation within each completed epoch.

        Points of an epoch that did not complete (a trial stopped or killed mid-epoch) are left
        out, except for a diverged trial, whose last point (often non-finite) is kept as its end.
        """
        last: dict[int, float] = {}
        for point in sorted(self.points, key=lambda p: p.global_step):
            last[point.epoch] = point.value
        curve = [(epoch, value) for epoch, value in sorted(last.items()) if epoch <= self.epochs_done]
        if self.status == "diverged" and last:
            epoch = max(last)
            if epoch > self.epochs_done:
                curve.append((epoch, last[epoch]))
        return curve

    def observation(self) -> Observation:
        """The trial as BOIL's core reads it."""
        return Observation(x=list(self.x), max_epochs=self.max_epochs, curve=self.epoch_curve(),
                           seconds=self.seconds, status=self.status,
                           suggest_seconds=suggest_seconds(self.info))


def _value_in(value: float | None) -> float:
    return math.nan if value is None else float(value)  # SQLite stores NaN as NULL


def _plain(value: Any) -> Any:
    """JSON-able copy of diagnostics: tensors and numpy values become floats or lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # torch.Tensor, numpy arrays and scalars
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process with that id
    return True


class BOILStore(SQLiteStore):
    """The SQLite state of one BOIL study, safe for a driver and worker processes at once.

    Args:
        directory: the study directory (created if missing; must be writable).
        timeout: seconds to wait for another process's write lock before failing.

    Raises:
        PermissionError: if ``directory`` is not writable (naming ``study_dir``).
    """

    FILE_NAME = "study.db"
    SCHEMA = _SCHEMA
    SCHEMA_VERSION = 1
    KIND = "study"

    def __init__(self, directory: str | os.PathLike, timeout: float = 120.0) -> None:
        super().__init__(directory, timeout, argument="study_dir")

    def init_study(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Store the study's settings, or check them on resume.

        Raises:
            ValueError: naming the first setting that differs from the stored study.
        """
        return self.init_settings(settings)

    # -- writes ---------------------------------------------------------------------------------
    def add_trial(self, x: Sequence[float], values: Mapping[str, Any], max_epochs: int,
                  info: Mapping[str, Any] | None = None, fit: Mapping[str, Any] | None = None,
                  observations: int = 0) -> int:
        """Commit a suggested trial (status ``queued``), its suggestion info and the fit it came from.

        Args:
            x: the configuration as a unit-cube point.
            values: the configuration's hyperparameter values.
            max_epochs: the trial's training length.
            info: the suggestion's diagnostics (``Suggestion.info``).
            fit: the model fit behind it (the core's ``last_fit``: ``m0``, ``g0``, ...), if one was made.
            observations: how many trials the fit saw.

        Returns:
            The new trial's id.
        """
        now = time.time()
        with self.transaction() as conn:
            trial = conn.execute(
                "INSERT INTO trials (x, hyperparameters, max_epochs, created, updated) VALUES (?, ?, ?, ?, ?)",
                (json.dumps([float(u) for u in x]), json.dumps(dict(values)), int(max_epochs), now, now),
            ).lastrowid
            fit_id = None
            if fit:
                plain = _plain(dict(fit))
                fit_id = conn.execute(
                    "INSERT INTO fits (time, observations, m0, g0, diagnostics) VALUES (?, ?, ?, ?, ?)",
                    (now, int(observations), _float_or_none(plain.get("m0")), _float_or_none(plain.get("g0")),
                     json.dumps(plain)),
                ).lastrowid
            conn.execute("INSERT INTO suggestions (trial, fit, time, info) VALUES (?, ?, ?, ?)",
                         (trial, fit_id, now, json.dumps(_plain(dict(info or {})))))
        return int(trial)

    def start_trial(self, trial: int, pid: int | None = None, host: str | None = None) -> None:
        """Mark a queued trial ``running`` in process ``pid`` on ``host`` (default: this process).

        Raises:
            KeyError: for an unknown trial.
            ValueError: if the trial is not queued (it ran before: a trial is trained once).
        """
        pid = os.getpid() if pid is None else pid
        host = socket.gethostname() if host is None else host
        with self.transaction() as conn:
            row = conn.execute("SELECT status FROM trials WHERE id = ?", (trial,)).fetchone()
            if row is None:
                raise KeyError(f"Trial {trial} is not in the study {str(self.directory)!r}.")
            if row[0] != "queued":
                raise ValueError(
                    f"Trial {trial} is {row[0]}, not queued: each trial is trained once. Ask the tuner for a new one."
                )
            conn.execute("UPDATE trials SET status = 'running', pid = ?, host = ?, updated = ? WHERE id = ?",
                         (pid, host, time.time(), trial))

    def report(self, trial: int, global_step: int, epoch: int, value: float, seconds: float) -> None:
        """Commit one validation point (a second report at the same step replaces the first)."""
        now = time.time()
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO curve (trial, global_step, epoch, value, seconds, time) VALUES (?, ?, ?, ?, ?, ?)",
                (trial, int(global_step), int(epoch), float(value), float(seconds), now),
            )
            conn.execute("UPDATE trials SET seconds = MAX(seconds, ?), updated = ? WHERE id = ?",
                         (float(seconds), now, trial))

    def report_curve(self, trial: int, curve: Sequence[tuple[int, float]], seconds: float) -> None:
        """Commit a whole per-epoch curve at once (``tell`` with a curve): one transaction, not one per point.

        Each ``(epoch, value)`` is stored as a point at ``global_step = epoch``; the trial's
        ``epochs_done`` becomes the last epoch, its ``seconds`` at least ``seconds``.
        """
        now = time.time()
        points = [(trial, int(epoch), int(epoch), float(value), float(seconds), now) for epoch, value in curve]
        if not points:
            return
        with self.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO curve (trial, global_step, epoch, value, seconds, time) VALUES (?, ?, ?, ?, ?, ?)",
                points,
            )
            conn.execute(
                "UPDATE trials SET epochs_done = MAX(epochs_done, ?), seconds = MAX(seconds, ?), updated = ?"
                " WHERE id = ?",
                (max(p[2] for p in points), float(seconds), now, trial),
            )

    def end_epoch(self, trial: int, epochs_done: int, seconds: float) -> None:
        """Commit that ``epochs_done`` epochs of the trial are complete."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE trials SET epochs_done = MAX(epochs_done, ?), seconds = MAX(seconds, ?), updated = ?"
                " WHERE id = ?",
                (int(epochs_done), float(seconds), time.time(), trial),
            )

    def finish_trial(self, trial: int, status: str, reason: str = "", seconds: float | None = None) -> None:
        """Give a trial its end state (``done``, ``diverged``, ``failed`` or ``interrupted``)."""
        if status not in TRIAL_STATES or status in PENDING_STATES:
            ends = [s for s in TRIAL_STATES if s not in PENDING_STATES]
            raise ValueError(f"`status` must be one of {ends}, got {status!r}.")
        with self.transaction() as conn:
            conn.execute(
                "UPDATE trials SET status = ?, reason = ?, seconds = MAX(seconds, COALESCE(?, 0)), updated = ?"
                " WHERE id = ?",
                (status, str(reason)[:1000], seconds, time.time(), trial),
            )

    def recover(self) -> list[int]:
        """Mark ``running`` trials whose process has ended as ``interrupted``; their points stay.

        Only trials started on this host are checked (another machine's processes cannot be seen
        from here). Call it from the study's driver when it (re)starts.

        Returns:
            The ids of the trials marked interrupted.
        """
        host = socket.gethostname()
        with self.transaction() as conn:
            rows = conn.execute("SELECT id, host, pid FROM trials WHERE status = 'running'").fetchall()
            orphans = [(trial, pid) for trial, h, pid in rows if h == host and not _alive(pid)]
            for trial, pid in orphans:
                conn.execute(
                    "UPDATE trials SET status = 'interrupted', reason = ?, updated = ? WHERE id = ?",
                    (f"its process {pid} ended while it ran", time.time(), trial),
                )
        return [trial for trial, _ in orphans]

    # -- reads ----------------------------------------------------------------------------------
    def trials(self, statuses: Sequence[str] | None = None) -> list[TrialRecord]:
        """Every trial in order of suggestion (only those in ``statuses`` if given), with its points."""
        rows = self.read(
            "SELECT t.id, t.x, t.hyperparameters, t.max_epochs, t.status, t.epochs_done, t.seconds, t.reason,"
            " t.created, t.updated, t.host, t.pid, s.info FROM trials t LEFT JOIN suggestions s ON s.trial = t.id"
            " ORDER BY t.id"
        )
        points: dict[int, list[CurvePoint]] = {}
        for trial, step, epoch, value, seconds, at in self.read(
            "SELECT trial, global_step, epoch, value, seconds, time FROM curve ORDER BY trial, global_step"
        ):
            points.setdefault(trial, []).append(CurvePoint(step, epoch, _value_in(value), seconds, at))
        records = [
            TrialRecord(r[0], json.loads(r[1]), json.loads(r[2]), r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10],
                        r[11], points.get(r[0], []), json.loads(r[12]) if r[12] else {})
            for r in rows
        ]
        return [r for r in records if statuses is None or r.status in statuses]

    def trial(self, trial: int) -> TrialRecord:
        """One trial by id.

        Raises:
            KeyError: for an unknown trial.
        """
        for record in self.trials():
            if record.id == trial:
                return record
        raise KeyError(f"Trial {trial} is not in the study {str(self.directory)!r}.")

    def fits(self) -> list[dict[str, Any]]:
        """Every model fit in order: ``{"id", "time", "observations", "m0", "g0", "diagnostics", "trial"}``."""
        rows = self.read(
            "SELECT f.id, f.time, f.observations, f.m0, f.g0, f.diagnostics, s.trial FROM fits f"
            " LEFT JOIN suggestions s ON s.fit = f.id ORDER BY f.id"
        )
        return [{"id": r[0], "time": r[1], "observations": r[2], "m0": r[3], "g0": r[4],
                 "diagnostics": json.loads(r[5]), "trial": r[6]} for r in rows]

    def spent(self) -> tuple[int, float]:
        """The study's cost so far: epochs completed and training seconds, summed over its trials."""
        epochs, seconds = self.read("SELECT COALESCE(SUM(epochs_done), 0), COALESCE(SUM(seconds), 0) FROM trials")[0]
        return int(epochs), float(seconds)


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
