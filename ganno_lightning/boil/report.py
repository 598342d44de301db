"""What a BOIL study did, from its store: PNG plots and CSV tables, optionally logged to W&B.

Written into ``<study_dir>/report/`` (atomically, so a reader never sees half a file):

- ``best_so_far.png`` / ``.csv``: the best ``monitor`` value seen, against epochs spent (summed
  over trials) and against wall-clock seconds since the study's first point;
- ``trials.png`` / ``.csv``: every chosen ``(x, t)``: each hyperparameter's value against the
  trial's length, coloured by the trial's final value;
- ``compression.png`` / ``fits.csv``: the learned compression ``(m0, g0)`` at each model fit,
  and the epoch weights it gives (first and last fit);
- ``posterior_mean.png`` / ``.csv`` (when the core has a fitted model): the model's mean score
  (normalised, higher is better) along each hyperparameter through the best configuration, at the
  shortest, middle and longest training.

Example::

    from ganno_lightning.boil.report import write_report

    paths = write_report("runs/boil", core=tuner.core)   # after tuner.run()
    paths["best_so_far.png"]
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

from ganno_lightning.boil.store import BOILStore, TrialRecord
from ganno_lightning.config import WandbConfig
from ganno_lightning.files import atomic_file, atomic_write_text
from ganno_lightning.tuning.space import parse_space

__all__ = ["best_so_far", "write_report"]


def _better(mode: str) -> Any:
    return (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)


def best_so_far(trials: Sequence[TrialRecord], mode: str) -> list[dict[str, Any]]:
    """One row per epoch-end point in the order reported: time, epochs spent so far, and the best value.

    Rows: ``{"time_s", "epochs_spent", "trial", "epoch", "value", "best"}``; ``time_s`` counts from the
    study's first point. Non-finite values are kept as rows but never become the best.
    """
    better = _better(mode)
    points = []
    for trial in trials:
        epochs = {epoch for epoch, _ in trial.epoch_curve()}
        last = {}
        for point in sorted(trial.points, key=lambda p: p.global_step):
            last[point.epoch] = point  # the last validation within each epoch
        points += [(p.time, trial.id, e, p.value) for e, p in last.items() if e in epochs]
    points.sort()
    start = points[0][0] if points else 0.0
    rows, best = [], None
    for spent, (at, trial, epoch, value) in enumerate(points, start=1):
        if math.isfinite(value) and (best is None or better(value, best)):
            best = value
        rows.append({"time_s": at - start, "epochs_spent": spent, "trial": trial, "epoch": epoch, "value": value,
                     "best": best})
    return rows


def _csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(c) for c in columns])
    return buffer.getvalue()


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def write_report(
    study: Union[BOILStore, str, os.PathLike],
    out_dir: Union[str, os.PathLike, None] = None,
    core: Any = None,
    wandb: Optional[WandbConfig] = None,
) -> dict[str, Path]:
    """Write the study's plots and tables (see the module docstring); log them to W&B if enabled.

    Args:
        study: the study's store or directory.
        out_dir: where to write; default ``<study_dir>/report``.
        core: the tuner's core; with a fitted model, the posterior-mean plot is drawn too.
        wandb: log the plots and tables to Weights & Biases (``enabled``, ``project``, ``mode``, ``name``).

    Returns:
        File name -> path of everything written.

    Raises:
        ValueError: the directory holds no BOIL study.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    store = study if isinstance(study, BOILStore) else BOILStore(study)
    settings = store.settings()
    if "space" not in settings:
        raise ValueError(f"`study` {str(store.directory)!r} holds no BOIL study (no settings stored).")
    order = settings.get("dimensions") or list(settings["space"])  # x's order; the stored dict is sorted
    space = parse_space({name: settings["space"][name] for name in order})
    mode, monitor = settings["mode"], settings["monitor"]
    t_min, t_max = settings["epochs"]
    out = Path(out_dir) if out_dir is not None else store.directory / "report"
    out.mkdir(parents=True, exist_ok=True)
    trials = store.trials()
    written: dict[str, Path] = {}

    def text(name: str, content: str) -> None:
        atomic_write_text(out / name, content)
        written[name] = out / name

    # best so far
    rows = best_so_far(trials, mode)
    text("best_so_far.csv", _csv(rows, ["time_s", "epochs_spent", "trial", "epoch", "value", "best"]))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, key, label in ((axes[0], "epochs_spent", "epochs spent (all trials)"), (axes[1], "time_s", "wall-clock s")):
        ax.step([r[key] for r in rows], [r["best"] for r in rows], where="post")
        ax.set_xlabel(label)
    axes[0].set_ylabel(f"best {monitor}")
    axes[0].set_title("best so far")
    written["best_so_far.png"] = _save(fig, out / "best_so_far.png")

    # trials: the chosen (x, t)
    names = list(space)
    trial_rows = []
    for t in trials:
        curve = t.epoch_curve()
        trial_rows.append({"trial": t.id, **{n: t.values.get(n) for n in names},
                           **{f"x_{n}": u for n, u in zip(names, t.x)}, "max_epochs": t.max_epochs,
                           "epochs_done": t.epochs_done, "status": t.status, "seconds": round(t.seconds, 3),
                           "final": curve[-1][1] if curve else None, "source": t.info.get("source")})
    columns = ["trial", *names, *(f"x_{n}" for n in names), "max_epochs", "epochs_done", "status", "seconds",
               "final", "source"]
    text("trials.csv", _csv(trial_rows, columns))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    finals = [r["final"] if r["final"] is not None and math.isfinite(r["final"]) else math.nan for r in trial_rows]
    for ax, name in zip(axes[0], names):
        values = [r[name] for r in trial_rows]
        xs = values if all(_numeric(v) for v in values) else [space[name].to_unit(v) for v in values]
        points = ax.scatter(xs, [r["max_epochs"] for r in trial_rows], c=finals, cmap="viridis_r" if mode == "min"
                            else "viridis", edgecolors="k", linewidths=0.3)
        for r, x in zip(trial_rows, xs):
            ax.annotate(str(r["trial"]), (x, r["max_epochs"]), fontsize=6, xytext=(2, 2), textcoords="offset points")
        if space[name].log:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("trial length (epochs)")
    if trial_rows:
        fig.colorbar(points, ax=axes[0][-1], label=f"final {monitor}")
    axes[0][0].set_title("chosen (x, t); label: trial id")
    fig.tight_layout()
    written["trials.png"] = _save(fig, out / "trials.png")

    # compression over time
    fits = store.fits()
    start = trials[0].created if trials else 0.0
    fit_rows = [{"fit": f["id"], "time_s": f["time"] - start, "observations": f["observations"], "m0": f["m0"],
                 "g0": f["g0"], "trial": f["trial"]} for f in fits]
    text("fits.csv", _csv(fit_rows, ["fit", "time_s", "observations", "m0", "g0", "trial"]))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    shown = [r for r in fit_rows if r["m0"] is not None and r["g0"] is not None]
    axes[0].plot([r["observations"] for r in shown], [r["m0"] for r in shown], "o-", label="m0 (midpoint)")
    axes[0].set_xlabel("trials seen by the fit")
    axes[0].set_ylabel("m0")
    twin = axes[0].twinx()
    twin.plot([r["observations"] for r in shown], [r["g0"] for r in shown], "s--", color="tab:orange", label="g0")
    twin.set_ylabel("g0 (growth)")
    axes[0].set_title("learned compression")
    if shown:
        from ganno_lightning.boil.compression import epoch_weights  # torch: imported only when drawn

        for r, style in ((shown[0], ":"), (shown[-1], "-")):
            axes[1].plot(range(1, t_max + 1), epoch_weights(t_max, r["m0"], r["g0"]), style,
                         label=f"fit {r['fit']} (m0={r['m0']:.2f}, g0={r['g0']:.1f})")
        axes[1].legend(fontsize="small")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("weight in the curve's score")
    axes[1].set_title("compression weights (first and last fit)")
    fig.tight_layout()
    written["compression.png"] = _save(fig, out / "compression.png")

    # posterior mean along each dimension through the best configuration
    if core is not None and getattr(core, "last_fit", None):
        written.update(_posterior(core, space, trials, mode, monitor, (t_min, t_max), out, text))

    if wandb is not None and wandb.enabled and wandb.mode != "disabled":
        _log_to_wandb(wandb, store, written)
    return written


def _posterior(core: Any, space: Mapping[str, Any], trials: Sequence[TrialRecord], mode: str, monitor: str,
               epochs: tuple[int, int], out: Path, text: Any) -> dict[str, Path]:
    import matplotlib.pyplot as plt
    import torch

    better = _better(mode)
    best, anchor = None, [0.5] * len(space)
    for t in trials:
        for _, value in t.epoch_curve():
            if math.isfinite(value) and (best is None or better(value, best)):
                best, anchor = value, list(t.x)
    t_min, t_max = epochs
    lengths = sorted({t_min, (t_min + t_max) // 2, t_max})
    grid = [i / 40 for i in range(41)]
    rows = []
    fig, axes = plt.subplots(1, len(space), figsize=(4.2 * len(space), 3.6), squeeze=False)
    for d, (ax, (name, dim)) in enumerate(zip(axes[0], space.items())):
        us = grid if dim.choices is None else [(i + 0.5) / len(dim.choices) for i in range(len(dim.choices))]
        for length in lengths:
            points = torch.tensor([[*anchor[:d], u, *anchor[d + 1:], length / t_max] for u in us], dtype=torch.float64)
            mean = [float(m) for m in core.posterior_mean(points)]
            values = [dim.from_unit(u) for u in us]
            rows += [{"hyperparameter": name, "value": v, "u": u, "epochs": length, "mean": m}
                     for v, u, m in zip(values, us, mean)]
            xs = values if dim.choices is None or all(_numeric(v) for v in values) else us
            ax.plot(xs, mean, "o-" if dim.choices is not None else "-", label=f"t={length}")
        if dim.log:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("posterior mean score (higher is better)")
    axes[0][0].legend(fontsize="small")
    axes[0][0].set_title(f"model of {monitor}, through the best configuration")
    fig.tight_layout()
    text("posterior_mean.csv", _csv(rows, ["hyperparameter", "value", "u", "epochs", "mean"]))
    return {"posterior_mean.png": _save(fig, out / "posterior_mean.png")}


def _log_to_wandb(config: WandbConfig, store: BOILStore, written: Mapping[str, Path]) -> None:
    import wandb

    run = wandb.init(project=config.project, name=config.name or "boil", job_type="boil-report",
                     dir=str(store.directory), mode=config.mode, config=store.settings())
    logged: dict[str, Any] = {}
    for name, path in written.items():
        key = f"boil/{Path(name).stem}"
        if name.endswith(".png"):
            logged[key] = wandb.Image(str(path))
        else:
            with open(path, newline="") as handle:
                reader = list(csv.reader(handle))
            logged[f"{key}_table"] = wandb.Table(columns=reader[0], data=reader[1:]) if reader else None
    run.log({k: v for k, v in logged.items() if v is not None})
    run.finish()
