"""Issue #18 diagnostic: can an agent's observations tell whether its LR is too high or too low?

An agent can only fix a wrong LR if what it observes says which way the LR is wrong. This probe
rolls out the meta-training env (``env.privileged: true``, so each observation comes with each
layer's log10(LR / its task's calibrated best LR)) under random actions, then fits a small
supervised network (per layer: own features, mean and max over layers, as the actor reads them)
that predicts that log-ratio from the observation alone, and scores it on held-out episodes. A
high score means the features carry the signal and PPO is what fails to use it; a low one, that
the features are the bottleneck.

    PYTHONPATH=. python benchmarks/feature_probe.py configs/experiments/ganno_matched_candidate.yaml \\
        --episodes 400 --out benchmarks/results/feature_probe.md
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from ganno_lightning.envs import keys
from ganno_lightning.envs.config import make_env
from ganno_lightning.layerwise.features import ALL_FEATURE_NAMES, FEATURE_NAMES, FEATURE_SETS
from ganno_lightning.layerwise.policy import pool_agents

#: |log10(LR / best)| above this is "clearly wrong" (2x), where the side is scored.
CLEAR = math.log10(2.0)


def collect(config_path: str, episodes: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Per episode: observations [steps, agents, features], privileged [steps, agents, 4], mask [steps, agents]."""
    loaded = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
    config = {"env": {**loaded["env"], "privileged": True, "features": "hypergradient"}, "family": loaded["family"]}
    env = make_env(config, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(episodes):
        td = env.reset()
        steps = [td]
        while not td["done"].item():
            action = torch.randint(env.num_actions, (env.max_agents,), generator=generator)
            td = env.step(td.set(keys.ACTION, action))["next"]
            steps.append(td)
        data.append({name: torch.stack([s[key] for s in steps]) for name, key in
                     (("obs", keys.OBSERVATION), ("privileged", keys.PRIVILEGED), ("mask", keys.MASK))})
    env.close()
    return data


def inputs(episodes: list[dict], columns: list[int], mean: torch.Tensor | None = None,
           std: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of [own, mean, max] normalised features, their targets and decision indices (valid agents only)."""
    xs, ys, ts = [], [], []
    for ep in episodes:
        obs = ep["obs"][..., columns]
        if mean is not None:
            obs = ((obs - mean) / std).clamp(-5, 5)
        rows = torch.cat([obs, pool_agents(obs, ep["mask"])], -1)
        valid = ep["mask"] & (ep["privileged"][..., 1] > 0)
        xs.append(rows[valid])
        ys.append(ep["privileged"][..., 0][valid])
        ts.append(torch.arange(len(obs)).unsqueeze(-1).expand_as(valid)[valid])
    return torch.cat(xs), torch.cat(ys), torch.cat(ts)


def fit_probe(train: list[dict], test: list[dict], columns: list[int], seed: int) -> dict[str, float]:
    """R^2 of the predicted log-ratio and the share of clearly wrong LRs whose side it gets right."""
    raw = torch.cat([ep["obs"][..., columns][ep["mask"]] for ep in train])
    mean, std = raw.mean(0), raw.std(0).clamp_min(1e-3)
    x, y, _ = inputs(train, columns, mean, std)
    x_test, y_test, t_test = inputs(test, columns, mean, std)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(x.shape[1], 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(300):
        for batch in torch.randperm(len(x)).split(512):
            loss = (net(x[batch]).squeeze(-1) - y[batch]).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        pred = net(x_test).squeeze(-1)
    result = {"r2": float(1 - (pred - y_test).square().mean() / y_test.var())}
    for name, chosen in (("all", t_test >= 0), ("first decision", t_test == 0), ("later", t_test > 0)):
        clear = chosen & (y_test.abs() > CLEAR)
        result[f"side ({name})"] = float((pred[clear].sign() == y_test[clear].sign()).float().mean())
        result[f"n ({name})"] = int(clear.sum())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a meta-training config (its env and family sections)")
    parser.add_argument("--episodes", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the table here (markdown)")
    parser.add_argument("--cache", default=None, help="keep the collected episodes in this .pt file (and reuse it)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.is_file():
        data = torch.load(cache)
    else:
        data = collect(args.config, args.episodes, args.seed)
        if cache is not None:
            torch.save(data, cache)
    split = int(0.8 * len(data))
    train, test = data[:split], data[split:]
    # log_lr is the absolute LR: with the layer's kind and size it can name a zoo task's best LR
    # from memory, which says nothing about a user's task; these rows leave it out (and only it,
    # unlike the `scale_free` feature set, which also drops log_loss).
    without_log_lr = [ALL_FEATURE_NAMES.index(n) for n in FEATURE_SETS["hypergradient"] if n != "log_lr"]
    sets = {
        "default (23)": [ALL_FEATURE_NAMES.index(n) for n in FEATURE_NAMES],
        "hypergradient (25)": [ALL_FEATURE_NAMES.index(n) for n in FEATURE_SETS["hypergradient"]],
        "default without log_lr (22)": [ALL_FEATURE_NAMES.index(n) for n in FEATURE_NAMES if n != "log_lr"],
        "hypergradient without log_lr (24)": without_log_lr,
        "update_grad_cos only": [ALL_FEATURE_NAMES.index("update_grad_cos")],
    }
    rows = [(name, fit_probe(train, test, columns, args.seed)) for name, columns in sets.items()]
    lines = [
        "# Can the observations tell a too-high LR from a too-low one? (issue #18 diagnostic)", "",
        f"Command: `PYTHONPATH=. python benchmarks/feature_probe.py {args.config} --episodes {args.episodes} "
        f"--seed {args.seed}`; {platform.machine()}, torch {torch.__version__}, {time.perf_counter() - started:.0f} s.",
        "",
        f"{len(data)} episodes of the config's env under uniformly random actions ({len(train)} to fit, "
        f"{len(test)} held out). Target: each layer's log10(LR / its task's calibrated best constant LR) at each "
        "decision; a probe (MLP on the layer's own features and their mean and max over layers, as the actor "
        "reads them; no memory) predicts it from the observation. `side`: of the held-out decisions whose LR is "
        "more than 2x from the best, the share whose direction (too high / too low) the probe gets right "
        "(0.5: chance); `first decision`: after the first interval only.", "",
        "| features | R^2 of log10(LR/best) | side, all | side, first decision | side, later "
        "| clearly wrong decisions |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        lines.append(f"| {name} | {r['r2']:.2f} | {r['side (all)']:.2f} | {r['side (first decision)']:.2f} | "
                     f"{r['side (later)']:.2f} | {r['n (all)']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
