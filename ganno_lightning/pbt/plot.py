"""A PNG of each member's hyperparameter schedule and score over training, with exploit events marked."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ganno_lightning.pbt.core import LineageEvent

__all__ = ["plot_schedules"]


def plot_schedules(
    schedule: Sequence[Mapping[str, Any]],
    lineage: Sequence[LineageEvent],
    path: str | os.PathLike,
    log_scale: Mapping[str, bool] | None = None,
    monitor: str = "score",
) -> Path:
    """Draw one panel per hyperparameter plus one for the score; one coloured step line per member.

    An exploit is drawn as a dotted segment from the donor's value to the member's new value at the
    step it happened, so the lineage is visible at a glance.

    Args:
        schedule: :meth:`PopulationStore.schedule` rows (``member``, ``step``, ``event``, ``score``,
            ``hyperparameters``); rows without ``event`` count as reports.
        lineage: :meth:`PopulationStore.lineage` events.
        path: the PNG to write (atomically).
        log_scale: which hyperparameters to draw on a log axis.
        monitor: the score's name for the axis label.

    Example::

        store = PopulationStore("runs/pbt")
        plot_schedules(store.schedule(), store.lineage(), "runs/pbt/schedules.png", {"lr": True})
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ganno_lightning.files import atomic_file

    names = sorted({name for row in schedule for name in row["hyperparameters"]})
    members = sorted({row["member"] for row in schedule})
    fig, axes = plt.subplots(len(names) + 1, 1, figsize=(8, 2.6 * (len(names) + 1)), sharex=True, squeeze=False)
    colours = plt.get_cmap("tab10")
    for i, name in enumerate(names):
        ax = axes[i][0]
        for m in members:
            rows = [r for r in schedule if r["member"] == m]
            ax.step([r["step"] for r in rows], [r["hyperparameters"][name] for r in rows], where="post",
                    color=colours(m % 10), label=f"member {m}")
        for event in lineage:
            if name in event.new_hyperparameters and name in event.old_hyperparameters:
                ax.plot([event.step, event.step], [event.old_hyperparameters[name], event.new_hyperparameters[name]],
                        ":", color=colours(event.donor % 10), linewidth=1)
                ax.scatter([event.step], [event.new_hyperparameters[name]], marker="x", color=colours(event.member % 10))
        if (log_scale or {}).get(name):
            ax.set_yscale("log")
        ax.set_ylabel(name)
    ax = axes[-1][0]
    for m in members:
        rows = [r for r in schedule if r["member"] == m and r["score"] is not None and r.get("event", "report") == "report"]
        ax.plot([r["step"] for r in rows], [r["score"] for r in rows], "o-", markersize=3, color=colours(m % 10),
                label=f"member {m}")
    ax.set_ylabel(monitor)
    ax.set_xlabel("optimizer step")
    axes[0][0].legend(fontsize="small", ncol=min(4, max(1, len(members))))
    axes[0][0].set_title("PBT schedules (x: exploit, dotted: jump from old to new value)")
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
