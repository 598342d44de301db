"""The per-layer learning-rate schedule an agent produced: kept, written as CSV, plotted."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = ("step", "layer", "lr", "scale", "action")


class LRSchedule:
    """Effective LR and scale of every layer at every decision (and at the start).

    Args:
        layer_names: The agents' names, in agent order.

    Example::

        >>> schedule = LRSchedule(["0", "2"])
        >>> schedule.record(0, lrs=[0.1, 0.1], scales=[1.0, 1.0])
        >>> schedule.record(25, lrs=[0.2, 0.05], scales=[2.0, 0.5], actions=[6, 0])
        >>> schedule.lrs_of("2"), schedule.scales_of("2")
        ([0.1, 0.05], [1.0, 0.5])
    """

    def __init__(self, layer_names: Sequence[str]) -> None:
        self.layer_names = tuple(layer_names)
        self.steps: list[int] = []
        self.lrs: list[list[float]] = []
        self.scales: list[list[float]] = []
        self.actions: list[list[int] | None] = []

    def record(self, step: int, lrs: Sequence[float], scales: Sequence[float],
               actions: Sequence[int] | None = None) -> None:
        if self.steps and self.steps[-1] == int(step):  # a decision at step 0 supersedes the initial row
            for column in (self.steps, self.lrs, self.scales, self.actions):
                column.pop()
        self.steps.append(int(step))
        self.lrs.append([float(x) for x in lrs])
        self.scales.append([float(x) for x in scales])
        self.actions.append(None if actions is None else [int(a) for a in actions])

    def lrs_of(self, layer: str) -> list[float]:
        """The effective LR of ``layer`` at every recorded step."""
        j = self.layer_names.index(layer)
        return [row[j] for row in self.lrs]

    def scales_of(self, layer: str) -> list[float]:
        """The LR scale (the agent's cumulative action) of ``layer`` at every recorded step."""
        j = self.layer_names.index(layer)
        return [row[j] for row in self.scales]

    def rows(self) -> list[tuple[int, str, float, float, int | None]]:
        """Long-format rows ``(step, layer, lr, scale, action)``, as in the CSV and W&B table."""
        return [
            (step, name, lrs[j], scales[j], None if actions is None else actions[j])
            for step, lrs, scales, actions in zip(self.steps, self.lrs, self.scales, self.actions)
            for j, name in enumerate(self.layer_names)
        ]

    def __len__(self) -> int:
        return len(self.steps)

    def to_csv(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for step, name, lr, scale, action in self.rows():
                writer.writerow([step, name, repr(lr), repr(scale), "" if action is None else action])
        return path

    def figure(self) -> Any:
        """A matplotlib figure of what the agent did and what it gave.

        Left, the agent's action: a heatmap (layers x decisions) of every layer's LR scale, on a log
        colour scale centred on 1 (red raised the LR, blue lowered it). Right, the effective LR
        (scheduler LR x scale) of every layer, which an LR scheduler's decay can dominate: a layer
        whose scale the agent raised 4x still shows a falling LR under a cosine schedule.

        Example::

            >>> schedule = LRSchedule(["0", "2"])
            >>> schedule.record(0, lrs=[0.1, 0.1], scales=[1.0, 1.0])
            >>> schedule.record(25, lrs=[0.2, 0.05], scales=[2.0, 0.5])
            >>> [axes.get_title() for axes in schedule.figure().axes[:2]]
            ["agent's LR scale per layer (its action)", 'effective LR per layer (scheduler LR x scale)']
        """
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from matplotlib.colors import LogNorm
        from matplotlib.ticker import FuncFormatter

        fig, (heat, lines) = plt.subplots(1, 2, figsize=(12, max(3.0, 0.35 * len(self.layer_names) + 1.5)))
        grid = [[max(row[j], 1e-30) for row in self.scales] for j in range(len(self.layer_names))]
        # symmetric about 1 in powers of two, so "no change" is the neutral colour and 4x reads as
        # far from it as 1/4x
        reach = max((max(max(r), 1 / min(r)) for r in grid if r), default=2.0)
        octaves = max(1, math.ceil(math.log2(reach) - 1e-9))
        image = heat.imshow(grid, aspect="auto", interpolation="nearest", cmap="RdBu_r",
                            norm=LogNorm(vmin=2.0 ** -octaves, vmax=2.0 ** octaves))
        heat.set_yticks(range(len(self.layer_names)), labels=self.layer_names, fontsize=7)
        ticks = list(range(0, len(self.steps), max(1, len(self.steps) // 8)))
        heat.set_xticks(ticks, labels=[str(self.steps[t]) for t in ticks])
        heat.set_xlabel("optimizer step")
        heat.set_title("agent's LR scale per layer (its action)")
        stride = math.ceil(octaves / 4)  # at most nine ticks
        colorbar = fig.colorbar(image, ax=heat, ticks=[2.0 ** k for k in range(-octaves, octaves + 1, stride)])
        colorbar.ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
        colorbar.ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
        for j, name in enumerate(self.layer_names):
            lines.plot(self.steps, [row[j] for row in self.lrs], label=name)
        lines.set_yscale("log")
        lines.set_xlabel("optimizer step")
        lines.set_ylabel("effective LR")
        lines.set_title("effective LR per layer (scheduler LR x scale)")
        if len(self.layer_names) <= 12:
            lines.legend(fontsize=7)
        fig.tight_layout()
        return fig

    def plot(self, path: str | os.PathLike) -> Path:
        """Write :meth:`figure` (the scale heatmap beside the effective LR) as an image."""
        import matplotlib.pyplot as plt

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig = self.figure()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def state_dict(self) -> dict[str, Any]:
        return {"layer_names": list(self.layer_names), "steps": list(self.steps), "lrs": [list(r) for r in self.lrs],
                "scales": [list(r) for r in self.scales], "actions": [None if a is None else list(a) for a in self.actions]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = tuple(state.get("layer_names", self.layer_names))
        if saved != self.layer_names:
            raise ValueError(f"Saved schedule is for layers {list(saved)}, this model has {list(self.layer_names)}.")
        self.steps = list(state.get("steps", []))
        self.lrs = [list(r) for r in state.get("lrs", [])]
        self.scales = [list(r) for r in state.get("scales", [])]
        self.actions = [None if a is None else list(a) for a in state.get("actions", [None] * len(self.steps))]
