"""Issue #18 diagnostic: how good is the imitation recipe's expert, and how far from it is the agent?

The imitation recipes teach the actor to do what a privileged expert does (``agents/imitation.py``:
it reads each layer's LR against its task's calibrated best and steers toward it). If even the
expert, which is told the answer, does not beat the constant LR in 90% of runs, perfect imitation
cannot reach the goal either, and the expert (or the goal) is what to change; if the expert beats
it easily and the agent does not, imitation fidelity is what is missing.

Each episode is one training run of the recipe's meta-training distribution (``make_env`` with its
``env`` and ``family`` sections and ``env.privileged: true``), replayed from the same seed (same
task, starting LR, weights and batches) under each policy:

- ``constant``: every action is the multiplier 1 (the user's LR, untouched);
- ``expert``: the recipe's expert actions (``algo.expert_schedule`` / ``algo.expert_peak_factor``);
- ``agent``: a trained agent file's most likely action (``exploration="mode"``: the env takes action
  indices, so the deployed ``"mean"`` cannot be replayed here).

Runs end only on a non-finite loss (``env.divergence_factor`` is raised so that a loss spike does not
end the run, as in an evaluation). The figure per run is its final validation loss over the constant
LR's: the share below 1, the share more than 2% above (harm), and their geometric mean with a 95%
bootstrap interval over runs.

    PYTHONPATH=. python benchmarks/expert_ceiling.py \\
        configs/experiments/ganno_imitation_calibrated_expert_candidate.yaml \\
        --agent benchmarks/results/ensemble_members/member0_calibrated_expert_s0.pt \\
        --episodes 120 --out benchmarks/results/expert_ceiling.md
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tensordict import TensorDictBase

from ganno_lightning.agents.imitation import expert_actions
from ganno_lightning.envs import keys
from ganno_lightning.envs.config import env_config, make_env
from ganno_lightning.layerwise.agent import GANNOAgent

#: A run ends only when its loss is non-finite: an evaluation does not stop a spiking run either.
NO_SPIKE_END = 1e30
#: More than this over the constant LR's final validation loss is harm (as in the evaluation's report).
HARM = 1.02

Policy = Callable[[TensorDictBase], torch.Tensor]


def recipe_env_config(config_path: str | Path, overrides: list[str]) -> tuple[dict, dict]:
    """The recipe's ``env`` and ``family`` sections (privileged, no spike ending) and its ``algo`` section."""
    loaded = OmegaConf.merge(OmegaConf.load(config_path), OmegaConf.from_dotlist(overrides))
    loaded = OmegaConf.to_container(loaded, resolve=True)
    env = {**loaded["env"], "privileged": True, "divergence_factor": NO_SPIKE_END}
    # A run validates at its end only under a final-validation term; the rewards themselves are not used here.
    env["final_val_weight"] = env.get("final_val_weight") or 1.0
    return {"env": env, "family": loaded["family"]}, loaded.get("algo", {})


def final_val_loss(config: dict, seed: int, policy: Policy) -> float:
    """Replay the run drawn from ``seed`` under ``policy``; its final validation loss (inf if it diverged)."""
    env = make_env(config, seed=seed)
    try:
        td = env.reset()
        while not td["done"].item():
            td = env.step(td.set(keys.ACTION, policy(td)))["next"]
        value = env.run.validation_loss() if math.isfinite(env.controller.last_interval_loss) else math.inf
        return math.inf if value is None or not math.isfinite(value) else float(value)
    finally:
        env.close()


def constant_policy(env_multipliers: list[float]) -> Policy:
    if 1.0 not in env_multipliers:
        raise ValueError(f"`env.action_multipliers` must hold 1 (keep the LR) for the constant-LR run, got "
                         f"{env_multipliers}.")
    keep = env_multipliers.index(1.0)
    return lambda td: torch.full(td[keys.MASK].shape, keep, dtype=torch.long)


def expert_policy(env_multipliers: list[float], algo: dict) -> Policy:
    peak, schedule = float(algo.get("expert_peak_factor", 1.0)), algo.get("expert_schedule", "constant")
    return lambda td: expert_actions(td[keys.PRIVILEGED], env_multipliers, peak, schedule)


class AgentPolicy:
    """A trained agent's most likely action, carrying a recurrent agent's memory within one run."""

    def __init__(self, agent: GANNOAgent) -> None:
        self.agent, self.state = agent, None

    def __call__(self, td: TensorDictBase) -> torch.Tensor:
        decision = self.agent.decide(td[keys.OBSERVATION], self.state, mask=td[keys.MASK], exploration="mode")
        self.state = decision.state
        return decision.actions

    def reset(self) -> None:
        self.state = None


def summary(ratios: list[float], seed: int = 0, resamples: int = 2000) -> dict[str, float]:
    """Shares below 1 and above :data:`HARM`, diverged count, and the geometric mean with a bootstrap interval."""
    finite = torch.tensor([r for r in ratios if math.isfinite(r)], dtype=torch.float64)
    logs = finite.log()
    generator = torch.Generator().manual_seed(seed)
    means = logs[torch.randint(len(logs), (resamples, len(logs)), generator=generator)].mean(1)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).exp().tolist()
    return {"runs": len(ratios), "below": sum(r < 1 for r in ratios) / len(ratios),
            "harm": sum(r > HARM for r in ratios) / len(ratios),
            "diverged": sum(not math.isfinite(r) for r in ratios),
            "geomean": float(logs.mean().exp()), "low": low, "high": high}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a meta-training recipe (its env, family and algo sections are read)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the recipe, e.g. env.unknown_total_prob=0")
    parser.add_argument("--agent", help="a trained agent file to replay beside the expert")
    parser.add_argument("--episodes", type=int, default=120)
    parser.add_argument("--first-seed", type=int, default=10_000, help="seeds first-seed.. (not the training's)")
    parser.add_argument("--out", required=True, help="a Markdown report; the per-run losses go beside it as .json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one small network at a time: more threads only contend (and spin) with other jobs
    if args.episodes < 2:
        parser.error(f"--episodes must be at least 2 (for an interval), got {args.episodes}.")
    config, algo = recipe_env_config(args.config, args.overrides)
    multipliers = [float(m) for m in env_config(config).action_multipliers]
    policies: dict[str, Policy] = {"constant": constant_policy(multipliers), "expert": expert_policy(multipliers, algo)}
    agent_policy = None
    if args.agent:
        agent_policy = AgentPolicy(GANNOAgent.load(args.agent))
        policies["agent (mode)"] = agent_policy
    started = time.perf_counter()
    losses: dict[str, list[float]] = {name: [] for name in policies}
    for done, seed in enumerate(range(args.first_seed, args.first_seed + args.episodes), start=1):
        for name, policy in policies.items():
            if policy is agent_policy:
                agent_policy.reset()
            losses[name].append(final_val_loss(config, seed, policy))
        if done % 10 == 0 or done == args.episodes:  # a report so far: a long run stopped early still says something
            write_report(args, losses, (time.perf_counter() - started) / 60)


def write_report(args: argparse.Namespace, losses: dict[str, list[float]], minutes: float) -> None:
    constant = losses["constant"]
    rows = []
    for name, values in losses.items():
        if name == "constant":
            continue
        ratios = [v / c if math.isfinite(c) else (1.0 if not math.isfinite(v) else 0.0) for v, c in zip(values, constant)]
        s = summary(ratios)
        rows.append(f"| {name} | {s['below']:.0%} | {s['harm']:.0%} | {s['diverged']} | "
                    f"{s['geomean']:.3f} ({s['low']:.3f}-{s['high']:.3f}) |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/expert_ceiling.py", args.config, *args.overrides,
                        *(["--agent", args.agent] if args.agent else []), f"--episodes {args.episodes}",
                        f"--first-seed {args.first_seed}", f"--out {args.out}"])
    out.write_text("\n".join([
        "# The imitation recipe's expert, replayed on its own meta-training distribution (issue #18)", "",
        f"`{command}`", "",
        f"{len(constant)} runs (seeds {args.first_seed}-{args.first_seed + len(constant) - 1}), each replayed from the "
        f"same task, LR, weights and batches under every policy; {minutes:.1f} min on {platform.processor() or platform.machine()}. "
        "Per run: final validation loss over the constant LR's (the user's LR untouched). See the script's docstring.",
        "", "| policy | below the constant LR | harm (> 2% worse) | diverged | geometric mean ratio (95% CI) |",
        "|---|---|---|---|---|", *rows, ""]))
    out.with_suffix(".json").write_text(json.dumps({"command": command, "losses": losses}, indent=1))
    print(out.read_text())


if __name__ == "__main__":
    main()
