"""Each zoo task's best constant learning rate, and the draw of a user's LR around it.

Users start from LRs that are sometimes right, sometimes 10x too high, sometimes 10x too low. A
zoo that draws LRs from fixed ranges instead starts most tasks far below their optimum (the best
LR of a grid x0.1-x10 sat at its x10 edge on 11 of 16 train-range tasks), so any policy that raises
LRs looks good. With ``lr_sampling: around_best`` a family draws a task's LR log-uniformly from
0.1x to 10x of the best constant LR of the task's *cell* (family, optimizer, depth and the
family's layer-changing choices), read from a table shipped beside this module
(``best_lrs.json``) that ``ganno-calibrate-lrs`` (:mod:`.calibration`) writes: per cell, a constant-LR grid search on a
representative task, widened past any edge its best point sits on.

Width, batch size and the family's other knobs are not part of a cell, so a task's best LR may
differ from its cell's by a factor: the 0.1x-10x draw covers that, and the table records the grid
losses so the spread can be checked.

Example::

    from ganno_lightning.envs.tasks import make_family

    family = make_family("mlp_digits", lr_sampling="around_best")
    task = family.sample(torch.Generator().manual_seed(0))
    task.info["lr"] / task.info["best_lr"]            # between 0.1 and 10
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["LR_SAMPLINGS", "SPREAD", "TABLE_PATH", "around", "best_lr", "best_schedule"]

#: How a family draws a task's initial LR: from its ``lr`` range, or around its cell's best LR.
LR_SAMPLINGS = ("ranges", "around_best")
#: The calibrated table that ships with the package.
TABLE_PATH = Path(__file__).with_name("best_lrs.json")
#: ``around_best`` draws the LR from ``best / SPREAD`` to ``best * SPREAD``, log-uniformly.
SPREAD = 10.0


@functools.lru_cache(maxsize=4)
def _table(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text()) if Path(path).is_file() else {"cells": {}}


def best_lr(cell: str, path: str | Path = TABLE_PATH) -> float:
    """The calibrated best constant LR of ``cell`` (see :meth:`ZooFamily.lr_cell`).

    Raises:
        ValueError: If the table has no entry for the cell, naming it and the command that adds it.
    """
    entry = _table(str(path))["cells"].get(cell)
    if entry is None:
        raise ValueError(
            f"No calibrated best LR for the task cell {cell!r} in {path}. Add it with "
            f"`ganno-calibrate-lrs configs/calibrate_lrs.yaml` (with this family and split), or draw LRs "
            f"from the family's ranges (`lr_sampling: ranges`)."
        )
    return float(entry["best_lr"])


def best_schedule(cell: str, path: str | Path = TABLE_PATH) -> tuple[str, float]:
    """Which of the calibrated schedules trains ``cell`` to the lower loss, and its best (peak) LR.

    ``("cosine", best_cosine_lr)`` where the cell has a cosine calibration (``ganno-calibrate-lrs
    schedule=cosine``) whose best loss is below the best constant LR's, else ``("constant", best_lr)``:
    the cosine does not win everywhere (it trains the LSTM family's dev tasks to 2x the tuned
    constant LR's loss).

    Raises:
        ValueError: If the table has no entry for the cell (see :func:`best_lr`).
    """
    constant = best_lr(cell, path)
    entry = _table(str(path))["cells"][cell]
    if "best_cosine_lr" in entry and _best_loss(entry["cosine_losses"]) < _best_loss(entry["losses"]):
        return "cosine", float(entry["best_cosine_lr"])
    return "constant", constant


def _best_loss(losses: dict[str, float | None]) -> float:
    return min((v for v in losses.values() if v is not None), default=float("inf"))


def around(best: float, generator: torch.Generator, spread: float = SPREAD) -> float:
    """A log-uniform draw from ``best / spread`` to ``best * spread`` (default :data:`SPREAD`).

    Example::

        >>> lr = around(1e-2, torch.Generator().manual_seed(0))
        >>> 1e-3 <= lr <= 1e-1
        True
    """
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    return best * spread ** (2.0 * u - 1.0)


def clear_cache() -> None:
    """Forget loaded tables (after the calibration rewrote one)."""
    _table.cache_clear()


def load_table(path: str | Path = TABLE_PATH) -> dict[str, Any]:
    """The table at ``path`` (``{"cells": {}}`` when there is none yet)."""
    return _table(str(path))
