"""How much of the BOIL-against-ASHA-TPE comparison is the final retraining's luck (issue #19).

:mod:`boil_vs_asha` scores each tuner's recommendation by one retraining for ``T_max`` epochs with one
seed (``RETRAIN_SEED``) and compares tuners seed by seed. This script retrains the recommendations
that two tuners made in a finished benchmark log with ``K`` seeds (``RETRAIN_SEED + 0 .. K - 1``;
the first repeats the benchmark's own retraining, and the report counts how many match it exactly)
and reports per task and checkpoint:

- the spread of one configuration's test loss over retraining seeds (median standard deviation),
  beside the median gap between the two tuners' picks;
- the paired wins (the first tuner's test loss lower; a tie, such as the same pick, is not a win)
  under each single retraining seed, so the spread of that count is the luck of the draw, and under
  the mean over the ``K`` seeds, with a 95% Wilson interval for the win rate.

Every retraining is one job of :class:`~ganno_lightning.trials.pool.JobPool`, appended to ``--cache``
as it finishes; a rerun with the same cache retrains nothing twice.

    PYTHONPATH=. python benchmarks/boil_retrain_noise.py --log runs/boil_dev20/A_log.jsonl \\
        --cache runs/retrain_noise/dev.jsonl --out benchmarks/results/boil_retrain_noise_dev.md --workers 2
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from boil_vs_asha import BASELINE, RETRAIN_SEED, TARGET, job_failure, strict_json, train_config
from report import write_report

from ganno_lightning.examples.tuning_tasks import TUNING_TASKS
from ganno_lightning.files import atomic_write_text
from ganno_lightning.trials.pool import JobPool, finished_record, read_log


def _values_key(values: Mapping[str, Any]) -> str:
    return json.dumps(dict(values), sort_keys=True)


def _config_key(task: str, pick: Mapping[str, Any]) -> tuple[str, int, str]:
    """A retrained configuration: its task, its length (``T_max``) and its values."""
    return (task, int(pick["t_max"]), _values_key(pick["values"]))


def retrain_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """A JobPool job: one configuration retrained with one seed and scored on the test split."""
    task = TUNING_TASKS[job["task"]]
    loss = train_config(task, job["values"], job["t_max"], job["seed"], test=True).test_loss
    return {"id": job["id"], "key": job["key"], "status": "ok", "test_loss": loss if math.isfinite(loss) else "inf"}


def picks(records: Sequence[Mapping[str, Any]], tuners: Sequence[str], checkpoints: Sequence[float]
          ) -> dict[tuple[str, int, float], dict[str, dict[str, Any]]]:
    """``(task, study seed, checkpoint) -> tuner -> the benchmark's pick`` where every tuner made one.

    Raises:
        ValueError: if two records are the same study (task, tuner and seed), e.g. from two logs.
    """
    out: dict[tuple[str, int, float], dict[str, dict[str, Any]]] = {}
    seen: set[tuple[str, str, int]] = set()
    for record in records:
        if record.get("status") != "ok" or record["tuner"] not in tuners:
            continue
        study = (record["task"], record["tuner"], record["seed"])
        if study in seen:
            raise ValueError(f"--log: study {study} appears twice; pass each (task, tuner, seed) once, e.g. merge"
                             " the logs keeping one study of each.")
        seen.add(study)
        for fraction in checkpoints:
            pick = record["checkpoints"].get(str(fraction), {}).get("rule")
            if pick is not None:
                out.setdefault((record["task"], record["seed"], fraction), {})[record["tuner"]] = {
                    **pick, "t_max": record["t_max"]}
    return {k: v for k, v in out.items() if all(t in v for t in tuners)}


def wilson(wins: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial rate (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarise(pairs: Mapping[tuple[str, int, float], Mapping[str, Mapping[str, Any]]],
              scores: Mapping[tuple[str, int, str], list[float]], tuners: Sequence[str], k: int) -> list[dict[str, Any]]:
    """One row per (task, checkpoint): spreads, single-seed wins per retraining seed, mean-of-K wins."""
    first, second = tuners
    rows = []
    for task, fraction in sorted({(t, f) for t, _, f in pairs}):
        keys = sorted(s for t, s, f in pairs if t == task and f == fraction)
        losses = {(s, tuner): scores[_config_key(task, pairs[(task, s, fraction)][tuner])]
                  for s in keys for tuner in tuners}
        spreads = [statistics.stdev(v) for v in losses.values() if all(map(math.isfinite, v))]
        means = {key: statistics.fmean(v) for key, v in losses.items()}
        gaps = [abs(means[(s, first)] - means[(s, second)]) for s in keys
                if math.isfinite(means[(s, first)]) and math.isfinite(means[(s, second)])]
        per_seed = [sum(losses[(s, first)][i] < losses[(s, second)][i] for s in keys) for i in range(k)]
        mean_wins = sum(means[(s, first)] < means[(s, second)] for s in keys)
        same = sum(_values_key(pairs[(task, s, fraction)][first]["values"])
                   == _values_key(pairs[(task, s, fraction)][second]["values"]) for s in keys)
        reproduced = sum(losses[(s, tuner)][0] == pairs[(task, s, fraction)][tuner].get("test_loss")
                         for s in keys for tuner in tuners)
        rows.append({
            "task": task, "checkpoint": fraction, "studies": len(keys), "same_pick": same,
            "median_sd": statistics.median(spreads) if spreads else None,
            "median_gap": statistics.median(gaps) if gaps else None,
            "wins_per_seed": per_seed, "wins_mean": mean_wins, "wins_mean_interval": wilson(mean_wins, len(keys)),
            "median_mean": {t: statistics.median(means[(s, t)] for s in keys) for t in tuners},
            "reproduced": reproduced, "scores": 2 * len(keys),
            "per_study": [{"seed": s, **{t: losses[(s, t)] for t in tuners}} for s in keys],
        })
    return rows


def markdown(rows: Sequence[Mapping[str, Any]], args: argparse.Namespace, command: str) -> list[str]:
    """The report: how to read it, then one table row per (task, checkpoint) of :func:`summarise`."""
    first, second = args.tuners
    seeds = f"{RETRAIN_SEED}..{RETRAIN_SEED + args.retrain_seeds - 1}"
    lines = [
        f"# How much of {first} against {second} is the retraining's luck",
        "",
        f"Command: `PYTHONPATH=. python benchmarks/boil_retrain_noise.py {command}`",
        "",
        f"Each pick of the log's studies (the benchmark's recommendation rule) retrained for T_max epochs with"
        f" {args.retrain_seeds} seeds ({seeds}) and scored on the test split. `sd`: the median over picks of the test"
        f" loss's standard deviation across those seeds; `gap`: the median over studies of |{first} - {second}| in"
        f" mean test loss. `wins, one seed each`: studies where {first}'s pick scores lower, counted under each"
        f" retraining seed alone (the first is the benchmark's own measure); `wins, mean of {args.retrain_seeds}`:"
        " under the mean over seeds, with a 95% Wilson interval for the rate. `reproduced`: retrainings with seed"
        f" {RETRAIN_SEED} equal to the log's score to the last digit.",
        "",
        f"| task | checkpoint | studies | same pick | sd | gap | wins, one seed each | wins, mean of {args.retrain_seeds}"
        f" | win rate (95% CI) | median mean test loss {first} / {second} | reproduced |",
        "|---|---:|---:|---:|---:|---:|---|---:|---|---|---:|",
    ]
    for row in rows:
        low, high = row["wins_mean_interval"]
        n = row["studies"]
        medians = " / ".join(f"{row['median_mean'][t]:.4f}" for t in args.tuners)
        sd = "-" if row["median_sd"] is None else f"{row['median_sd']:.4f}"
        gap = "-" if row["median_gap"] is None else f"{row['median_gap']:.4f}"
        lines.append(f"| {row['task']} | {row['checkpoint']:.0%} | {n} | {row['same_pick']} | {sd} | {gap} |"
                     f" {', '.join(map(str, row['wins_per_seed']))} | {row['wins_mean']}/{n} |"
                     f" {row['wins_mean'] / n:.0%} ({low:.0%}-{high:.0%}) | {medians} |"
                     f" {row['reproduced']}/{row['scores']} |")
    return lines


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (``argv``, or ``sys.argv[1:]``); ``--retrain-seeds`` below 2 is an error."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, nargs="+", required=True, help="boil_vs_asha.py study logs (JSON lines)")
    parser.add_argument("--tuners", nargs=2, default=[TARGET, BASELINE], help="the pair to compare, first one's wins")
    parser.add_argument("--checkpoints", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--retrain-seeds", type=int, default=5, help="retraining seeds per pick (at least 2)")
    parser.add_argument("--workers", type=int, default=0, help="retrainings at once, one process each; 0: here")
    parser.add_argument("--cache", type=Path, required=True, help="JSON lines of finished retrainings (resume)")
    parser.add_argument("--out", type=Path, required=True, help="the Markdown report (.json beside it)")
    args = parser.parse_args(argv)
    if args.retrain_seeds < 2:
        parser.error(f"--retrain-seeds must be at least 2 to measure a spread, got {args.retrain_seeds}.")
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    records = [r for path in args.log for r in read_log(path).values()]
    try:
        pairs = picks(records, args.tuners, args.checkpoints)
    except ValueError as err:
        sys.exit(str(err))
    lengths = {record["t_max"] for record in records if record.get("status") == "ok"}
    if len(lengths) > 1:
        sys.exit(f"--log: studies with different T_max {sorted(lengths)}; rescore one T_max at a time.")
    if not pairs:
        sys.exit(f"--log {[str(p) for p in args.log]}: no study where every one of {args.tuners} made a pick at"
                 f" {args.checkpoints}; pass logs written by benchmarks/boil_vs_asha.py with both tuners.")
    configs = {_config_key(task, pick): pick["values"] for (task, _, _), by_tuner in pairs.items()
               for pick in by_tuner.values()}
    jobs = []
    for (task, t_max, key), values in sorted(configs.items()):
        for i in range(args.retrain_seeds):
            settings = {"task": task, "values": values, "t_max": t_max, "seed": RETRAIN_SEED + i}
            jobs.append({"id": f"{task}/{key}/{RETRAIN_SEED + i}", "key": json.dumps(settings, sort_keys=True),
                         **settings})
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    done = read_log(args.cache)
    cached = sum(finished_record(job, done) is not None for job in jobs)
    print(f"{len(configs)} distinct picks, {len(jobs)} retrainings ({cached} cached)",
          file=sys.stderr, flush=True)

    with JobPool(retrain_job, processes=args.workers, retries=1) as pool:
        pool.run(jobs, failure=job_failure, log=args.cache, done=done)
    finished = read_log(args.cache)
    scores: dict[tuple[str, int, str], list[float]] = {}
    for job in jobs:
        result = finished_record(job, finished)
        if result is None or result.get("status") != "ok":
            sys.exit(f"retraining {job['id']} did not finish ({result}); rerun to retry it.")
        scores.setdefault(_config_key(job["task"], job), []).append(float(result["test_loss"]))
    rows = summarise(pairs, scores, args.tuners, args.retrain_seeds)
    write_report(markdown(rows, args, " ".join(argv)), args.out)
    # non-finite losses (a diverged retraining) as strings, as boil_vs_asha.json writes them: strict JSON
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(strict_json(rows), indent=1, allow_nan=False) + "\n")


if __name__ == "__main__":
    main()
