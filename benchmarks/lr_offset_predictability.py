"""Issue #18 diagnostic: can what an agent sees at step 0 tell how far a task's best LR is from its drawn LR?

A per-task teacher moves each run's LR to the run's own tuned constant LR (a task pool, ``ganno-build-task-pool``).
An agent can follow it at its first decision only if the observation there predicts that offset. This script
draws each run of a pool's seeds (``make_env(recipe, seed)``, only its reset: the step-0 probe, so the recipe
needs a decision at step 0) and regresses the pool's offset, log10(tuned LR / drawn LR), on:

- the step-0 observation without the LR probe's features, averaged over the layers;
- the same with the LR probe's three loss changes, raw or as ratios and logs (:func:`probe_transforms`);
- the LR probe alone;
- the cell's best LR, log10(drawn LR / the cell's calibrated best): privileged, what the cell expert knows.

Scores are out-of-fold R² over 5 folds (ridge regression and gradient-boosted trees), and the AUC of telling
whether the drawn LR is the grid's best (offset 0) from the rest.

    PYTHONPATH=. python benchmarks/lr_offset_predictability.py \\
        configs/experiments/ganno_imitation_calibrated_expert_candidate.yaml env.unknown_total_prob=0 \\
        env.action_multipliers=wide env.decision_steps=front_loaded env.features=lr_probe --episodes 100 \\
        --task-pool benchmarks/results/task_pool_check_seeds10000.json --out benchmarks/results/lr_offset_predictability.md
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from expert_ceiling import recipe_env_config, task_pool_of
from ganno_lightning.envs import keys
from ganno_lightning.envs.config import env_config, make_env
from ganno_lightning.layerwise.features import LR_PROBE_FEATURES, LR_PROBE_MULTIPLIERS

#: Below this, a loss change counts as none (the logs of :func:`probe_transforms` floor here).
_TINY = 1e-7


def probe_transforms(changes: np.ndarray) -> np.ndarray:
    """``[runs, 3]`` probe loss changes (at 1/8x, 1x, 8x) -> ``[runs, 4]``: how far each step is from linear, and
    the logs of the two smaller decreases.

    Columns: change at 1x over 8 x change at 1/8x, change at 8x over 8 x change at 1x (1: the loss falls in
    proportion to the step, a too-low LR; below 1 or negative: it overshoots), clipped to [-4, 4]; then
    log(decrease at 1x) and log(decrease at 1/8x), floored at log(1e-7).

    Example::

        >>> probe_transforms(np.array([[-0.001, -0.008, -0.064]])).round(2)
        array([[ 1.  ,  1.  , -4.83, -6.91]])
    """
    assert changes.shape[1] == len(LR_PROBE_MULTIPLIERS) == 3 and LR_PROBE_MULTIPLIERS == (0.125, 1.0, 8.0)
    eighth, one, eight = changes.T

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.clip(a / np.where(np.abs(b) < _TINY, -_TINY, b), -4, 4)

    return np.stack([ratio(one, 8 * eighth), ratio(eight, 8 * one),
                     np.log(np.clip(-one, _TINY, None)), np.log(np.clip(-eighth, _TINY, None))], axis=1)


def at_grid_best(offset: np.ndarray) -> np.ndarray:
    """Whether each run's drawn LR is its grid's best (the pool rounds its LRs: within 1% counts)."""
    return np.abs(offset) < math.log10(1.01)


def first_observations(config: dict, seeds: range) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Each seed's step-0 observation averaged over its valid layers, and log10(drawn LR / cell's best) (nan where
    unknown); the feature names of the observation."""
    rows, cells = [], []
    for seed in seeds:
        env = make_env(config, seed=seed)
        try:
            td = env.reset()
            observation, mask, privileged = td[keys.OBSERVATION], td[keys.MASK], td[keys.PRIVILEGED]
            rows.append(observation[mask].mean(0).numpy())
            cells.append(privileged[0, 0].item() if privileged[0, 1].item() > 0 else math.nan)
        finally:
            env.close()
    return np.stack(rows), np.array(cells), list(env_config(config).features)


def scores(inputs: np.ndarray, offset: np.ndarray, folds: int = 5, tree_iterations: int = 100) -> dict[str, float]:
    """Out-of-fold R² of ridge regression and gradient-boosted trees predicting ``offset``, and the AUC of each
    family telling an offset of 0 (the drawn LR is the best) from the rest (nan with one class only)."""
    split = KFold(min(folds, len(offset)), shuffle=True, random_state=0)
    regressors = {
        "ridge": make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13))),
        "trees": HistGradientBoostingRegressor(max_iter=tree_iterations, max_depth=3, random_state=0),
    }
    classifiers = {
        "ridge": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "trees": HistGradientBoostingClassifier(max_iter=tree_iterations, max_depth=3, random_state=0),
    }
    out, at_best = {}, at_grid_best(offset).astype(int)
    total = ((offset - offset.mean()) ** 2).sum()
    for name, model in regressors.items():
        predicted = cross_val_predict(model, inputs, offset, cv=split)
        out[f"{name} R²"] = 1 - ((offset - predicted) ** 2).sum() / total if total > 0 else math.nan
    for name, model in classifiers.items():
        if at_best.min() == at_best.max() or min(np.bincount(at_best)) < split.n_splits:
            out[f"{name} AUC"] = math.nan
            continue
        probability = cross_val_predict(model, inputs, at_best, cv=split, method="predict_proba")[:, 1]
        out[f"{name} AUC"] = roc_auc_score(at_best, probability)
    return out


def report(observations: np.ndarray, cells: np.ndarray, offset: np.ndarray, names: list[str], command: str,
           minutes: float) -> str:
    probe = [names.index(n) for n in LR_PROBE_FEATURES]
    rest = [i for i in range(len(names)) if i not in probe]
    transformed = probe_transforms(observations[:, probe])
    inputs = {
        "step-0 features without the LR probe": observations[:, rest],
        "the same with the LR probe (raw changes)": observations,
        "the same with the LR probe (ratios and logs)": np.concatenate([observations[:, rest], transformed], axis=1),
        "the LR probe alone (ratios and logs)": transformed,
    }
    if np.isfinite(cells).all():  # privileged: what the cell expert knows
        inputs["the cell's best LR (privileged)"] = cells[:, None]
        inputs["the cell's best LR with the LR probe (ratios and logs)"] = np.concatenate([cells[:, None], transformed],
                                                                                          axis=1)
    lines = [
        "# What at step 0 predicts a task's best-LR offset? (issue #18)", "", f"`{command}`", "",
        f"{len(offset)} runs; {minutes:.1f} min. Target: log10(the task's tuned constant LR / its drawn LR), from the "
        f"pool's grid; {np.mean(at_grid_best(offset)):.0%} of runs start at their grid's best. R²: out of fold over "
        "5 folds. AUC: telling a run at its grid's best from the rest.", "",
        "| inputs | ridge R² | trees R² | logistic AUC | trees AUC |", "|---|---|---|---|---|"]
    for name, x in inputs.items():
        s = scores(x, offset)
        lines.append(f"| {name} | {s['ridge R²']:.2f} | {s['trees R²']:.2f} | {s['ridge AUC']:.2f} | "
                     f"{s['trees AUC']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a meta-training recipe (its env and family sections are read)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. env.features=lr_probe")
    parser.add_argument("--task-pool", required=True, help="a pool built over these seeds (ganno-build-task-pool)")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--first-seed", type=int, default=10000)
    parser.add_argument("--out", required=True, help="a Markdown report")
    args = parser.parse_args(argv)
    if args.episodes < 5:
        parser.error(f"--episodes must be at least 5 (one run per fold), got {args.episodes}.")
    config, _ = recipe_env_config(args.config, args.overrides)
    try:
        features = env_config(config).features
    except ValueError as err:
        parser.error(str(err))
    if not set(LR_PROBE_FEATURES) <= set(features):
        parser.error(f"the recipe's env.features must include the LR probe's {list(LR_PROBE_FEATURES)}: override "
                     "env.features=lr_probe (with a decision at step 0).")
    seeds = range(args.first_seed, args.first_seed + args.episodes)
    pool = task_pool_of(parser, args, config, seeds)
    started = time.perf_counter()
    observations, cells, names = first_observations(config, seeds)
    offset = np.array([math.log10(pool[seed].best_lr / pool[seed].task_lr) for seed in seeds])
    command = "PYTHONPATH=. python benchmarks/lr_offset_predictability.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    text = report(observations, cells, offset, names, command, (time.perf_counter() - started) / 60)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
