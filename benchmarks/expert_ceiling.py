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
  indices, so the deployed ``"mean"`` cannot be replayed here);
- with ``--oracle-grid``, two per-run oracles, as the evaluation's ``@tuned`` baselines: the constant
  LR and the env's cosine prior at whichever grid factor of the run's LR ends lowest, a teacher that
  knows each task's own best rather than its cell's;
- with ``--task-pool`` (a pool built over these seeds, ``ganno-build-task-pool``), ``per-task expert``: the
  expert aimed at each run's own tuned constant LR, the teacher of a recipe with ``env.task_pool``; and
  ``per-task calibrated expert``: the same, annealing by a cosine where the task's cell trains better so.

Runs end only on a non-finite loss (``env.divergence_factor`` is raised so that a loss spike does not
end the run, as in an evaluation). The figure per run is its final validation loss over the constant
LR's: the share below 1, the share more than 2% above (harm), and their geometric mean with a 95%
bootstrap interval over runs, each ratio as the evaluation's paired comparison takes it
(``paired_stats.log_ratio``: clipped to 1/100-100x, a diverged run the 100x end; losses under 1e-3 tie).

    PYTHONPATH=. python benchmarks/expert_ceiling.py \\
        configs/experiments/ganno_imitation_calibrated_expert_candidate.yaml env.unknown_total_prob=0 \\
        --agent benchmarks/results/ensemble_members/member0_calibrated_expert_s0.pt \\
        --episodes 100 --oracle-grid 0.1,0.3,1,3,10 --out benchmarks/results/expert_ceiling_calibrated.md
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from tensordict import TensorDictBase

from ganno_lightning.agents.evaluation.analysis import FAR_FROM_BEST
from ganno_lightning.agents.evaluation.paired_stats import log_ratio
from ganno_lightning.agents.imitation import expert_actions
from ganno_lightning.envs import keys
from ganno_lightning.envs.config import check_task_pool, env_config
from ganno_lightning.envs.replay import Policy, Replay, at_lr_factor, constant_policy, replay, replay_config
from ganno_lightning.envs.task_pool import PoolTask, TaskPool
from ganno_lightning.layerwise.agent import GANNOAgent
from ganno_lightning.layerwise.decisions import resolve_decision_steps
from ganno_lightning.layerwise.features import resolve_feature_names
from ganno_lightning.layerwise.prior import LRPrior

#: The row of the expert aimed at each run's own tuned LR (``--task-pool``).
TASK_EXPERT = "per-task expert"
#: The row of the per-task expert that also anneals where the task's cell trains better under a cosine.
TASK_CALIBRATED_EXPERT = "per-task calibrated expert"
#: The per-run oracles' rows, by the prior schedule they run under.
ORACLES = {"none": "tuned constant (oracle)", "cosine": "tuned cosine (oracle)"}
#: Losses below this count as solved: two solved runs tie (a copy task ends at 1e-5 or exactly 0 by chance). The
#: evaluation's tie is below 1e-3 of the task's initial loss; the replays do not record it, so the floor is absolute.
SOLVED = 1e-3
#: More than this over the constant LR's final validation loss is harm (as in the evaluation's report).
HARM = 1.02


def recipe_env_config(config_path: str | Path, overrides: list[str]) -> tuple[dict, dict]:
    """The recipe's ``env`` and ``family`` sections set up for replays (``replay_config``) and its ``algo`` section."""
    loaded = OmegaConf.merge(OmegaConf.load(config_path), OmegaConf.from_dotlist(overrides))
    loaded = OmegaConf.to_container(loaded, resolve=True)
    return replay_config(loaded), loaded.get("algo", {})


def tuned_replay(config: dict, seed: int, keep: Policy, grid: list[float], prior: str,
                 at_x1: Replay | None = None) -> tuple[Replay, float]:
    """The run drawn from ``seed`` at the best of ``grid`` x its initial LR, under ``prior`` and no agent action.

    An oracle, as the evaluation's ``@tuned`` baselines are: the factor is picked per run by the very
    loss it is scored on. Returns that run (its ``start`` is the untuned run's) and the factor. ``at_x1``:
    the x1 run where it was already replayed (the constant row's, when ``prior`` is the recipe's own).
    """
    if list(config["env"].get("init_lr_scale", [1.0, 1.0])) != [1.0, 1.0]:
        raise ValueError(f"`env.init_lr_scale` must be [1, 1] for the oracles (they set it to each grid factor), got "
                         f"{config['env']['init_lr_scale']}; override it with env.init_lr_scale=[1,1].")
    tried = []
    for factor in grid:
        # [1, 1] draws no factor, so the x1 run is exactly the constant row's run (others shift a mid-run draw
        # that only decides whether the agents observe validation losses).
        run = at_x1 if factor == 1.0 and at_x1 is not None else replay(at_lr_factor(config, factor, prior), seed, keep)
        tried.append((run, factor))
    best, factor = min(tried, key=lambda t: t[0].final_val_loss)
    return best._replace(start=tried[grid.index(1.0)][0].start if 1.0 in grid else math.nan), factor


def expert_policy(env_multipliers: list[float], algo: dict) -> Policy:
    peak, schedule = float(algo.get("expert_peak_factor", 1.0)), algo.get("expert_schedule", "constant")
    return lambda td: expert_actions(td[keys.PRIVILEGED], env_multipliers, peak, schedule)


class TaskExpertPolicy:
    """The expert aimed at a pool task's own tuned LR instead of its cell's: a per-task teacher.

    With ``schedule="constant"`` it holds that LR; with ``"calibrated"`` it decays it by a cosine where the
    task's cell trains better so, from the cell's best peak over its best constant LR times the task's own.

    The privileged columns measure LRs against the cell's best LR; at the first decision every layer's LR is
    the task's drawn LR (``task_pool_of`` refuses recipes that draw per-layer LRs; replays do not roll back),
    which fixes how far the cell's best is from the task's own.
    """

    def __init__(self, multipliers: list[float], task: PoolTask, schedule: str = "constant") -> None:
        self.multipliers, self.task, self.schedule, self.shift = multipliers, task, schedule, None

    def __call__(self, td: TensorDictBase) -> torch.Tensor:
        privileged = td[keys.PRIVILEGED].clone()
        if privileged[0, 1].item() == 0:
            raise ValueError(f"The per-task expert needs the task's cell's best LR to place its LR (family "
                             f"`lr_sampling: around_best`); {self.task.task} has none.")
        if self.shift is None:  # log10(cell's best / task's best)
            self.shift = math.log10(self.task.task_lr / self.task.best_lr) - privileged[0, 0].item()
        privileged[..., 0] += self.shift
        return expert_actions(privileged, self.multipliers, schedule=self.schedule)


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


def summary(pairs: list[tuple[float, float]], seed: int = 0, resamples: int = 2000) -> dict[str, float]:
    """Of (policy's, constant LR's) final validation losses: the shares below, equal to and more than 2% above
    the constant LR's, the runs that diverged where it did not, and the geometric mean of the ratios with a 95%
    bootstrap interval over runs; each ratio is the evaluation's (``paired_stats.log_ratio``, floor :data:`SOLVED`)."""
    logs = torch.tensor([log_ratio(value, constant, floor=SOLVED) for value, constant in pairs], dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    means = logs[torch.randint(len(logs), (resamples, len(logs)), generator=generator)].mean(1)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).exp().tolist()
    return {"runs": len(pairs), "below": float((logs < 0).double().mean()), "equal": float((logs == 0).double().mean()),
            "harm": float((logs > math.log(HARM)).double().mean()),
            "diverged": sum(not math.isfinite(v) and math.isfinite(c) for v, c in pairs),
            "geomean": float(logs.mean().exp()), "low": low, "high": high}


def task_pool_of(parser: argparse.ArgumentParser, args: argparse.Namespace, config: dict,
                 seeds: range) -> dict[int, PoolTask]:
    """``--task-pool``'s tasks by seed, checked: built over these seeds, for this recipe, and replayable from the
    task's drawn LR (the per-task expert measures its LR against that)."""
    try:  # the checks an env drawing from this pool makes: same family and runs, no per-layer or scaled LRs
        check_task_pool({"env": {**config["env"], "task_pool": args.task_pool}, "family": config["family"]})
    except ValueError as err:
        parser.error(f"--task-pool: {err}")
    pool = TaskPool.load(args.task_pool)
    tasks = {task.seed: task for task in pool.tasks}
    missing = [seed for seed in seeds if seed not in tasks]
    if missing:
        parser.error(f"--task-pool {args.task_pool} lacks seeds {missing[:5]} (of {len(missing)}): build it over "
                     f"these seeds (first_seed={seeds.start} tasks={len(seeds)}).")
    return tasks


def check_agent_matches(parser: argparse.ArgumentParser, agent: GANNOAgent, env: Any) -> None:
    """``--agent`` must observe the env's features and act by its action set at its decision steps: a feature
    set of the same width would otherwise be read column by column, silently wrong."""
    settings = {
        "features": (list(agent.feature_names), list(resolve_feature_names(env.features))),
        "action_multipliers": ([float(m) for m in agent.action_multipliers], [float(m) for m in env.action_multipliers]),
        "decision_steps": (list(agent.decision_steps), list(resolve_decision_steps(env.decision_steps, env.interval))),
        "prior": (agent.prior, env.prior),
        "prior_above": (agent.prior_above, env.prior_above),
    }
    for name, (agent_value, env_value) in settings.items():
        if agent_value != env_value:
            parser.error(f"--agent {name} is {agent_value}, the recipe's env.{name} gives {env_value}: override "
                         f"env.{name} to match the agent it scores.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", help="a meta-training recipe (its env, family and algo sections are read)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the recipe, e.g. env.unknown_total_prob=0")
    parser.add_argument("--agent", help="a trained agent file to replay beside the expert")
    parser.add_argument("--episodes", type=int, default=120)
    parser.add_argument("--oracle-grid", type=lambda text: [float(x) for x in text.split(",")], default=[],
                        help="e.g. 0.1,0.3,1,3,10: also score per-run tuned constant and cosine LRs over this grid")
    parser.add_argument("--task-pool", help="a pool over these seeds (ganno-build-task-pool ... first_seed=10000): "
                        "also replay the expert aimed at each run's own tuned LR")
    parser.add_argument("--first-seed", type=int, default=10_000, help="seeds first-seed.. (not the training's)")
    parser.add_argument("--out", help="a Markdown report; the per-run losses go beside it as .json")
    parser.add_argument("--rescore", help="a finished run's .json: rewrite its report from it, replaying nothing")
    args = parser.parse_args(argv)
    if args.rescore:
        saved = json.loads(Path(args.rescore).read_text())
        replays = {name: [Replay(**r) for r in runs] for name, runs in saved["runs"].items()}
        write_report(parser.parse_args(shlex.split(saved["command"])[2:]), replays, saved.get("picked", {}),
                     saved.get("minutes", math.nan))
        return
    if args.config is None or args.out is None:
        parser.error("give a recipe and --out (or --rescore a finished run's .json).")
    torch.set_num_threads(1)  # one small network at a time: more threads only contend (and spin) with other jobs
    if args.episodes < 2:
        parser.error(f"--episodes must be at least 2 (for an interval), got {args.episodes}.")
    config, algo = recipe_env_config(args.config, args.overrides)
    multipliers = [float(m) for m in env_config(config).action_multipliers]
    policies: dict[str, Policy] = {"constant": constant_policy(multipliers), "expert": expert_policy(multipliers, algo)}
    agent_policy = None
    if args.agent:
        agent = GANNOAgent.load(args.agent)
        check_agent_matches(parser, agent, env_config(config))
        agent_policy = AgentPolicy(agent)
        policies["agent (mode)"] = agent_policy
    seeds = range(args.first_seed, args.first_seed + args.episodes)
    env = env_config(config)
    # an oracle under the prior the recipe's runs train with reuses the constant row's run as its x1 point
    recipe_prior = env.prior if LRPrior(env.prior, env.horizon, above=env.prior_above).active else "none"
    pool_tasks = task_pool_of(parser, args, config, seeds) if args.task_pool else {}
    started = time.perf_counter()
    replays: dict[str, list[Replay]] = {name: [] for name in policies}
    picked: dict[str, list[float]] = {}  # each oracle's factor per run
    for done, seed in enumerate(seeds, start=1):
        if pool_tasks:
            policies[TASK_EXPERT] = TaskExpertPolicy(multipliers, pool_tasks[seed])
            policies[TASK_CALIBRATED_EXPERT] = TaskExpertPolicy(multipliers, pool_tasks[seed], "calibrated")
            replays.setdefault(TASK_EXPERT, [])
            replays.setdefault(TASK_CALIBRATED_EXPERT, [])
        for name, policy in policies.items():
            if policy is agent_policy:
                agent_policy.reset()
            replays[name].append(replay(config, seed, policy))
        for prior in ("none", "cosine") if args.oracle_grid else ():
            run, factor = tuned_replay(config, seed, policies["constant"], args.oracle_grid, prior,
                                       at_x1=replays["constant"][-1] if prior == recipe_prior else None)
            replays.setdefault(ORACLES[prior], []).append(run)
            picked.setdefault(ORACLES[prior], []).append(factor)
        if done % 10 == 0 or done == args.episodes:  # a report so far: a long run stopped early still says something
            write_report(args, replays, picked, (time.perf_counter() - started) / 60)


def groups(runs: list[Replay]) -> dict[str, list[int]]:
    """Run indices per row: all, by where the LR started against the cell's best, and by family."""
    rows: dict[str, list[int]] = {"all runs": list(range(len(runs)))}
    far = math.log10(FAR_FROM_BEST)  # the start's sides, as the evaluation's report splits them
    for label, test in (("start >= 3x the best LR", lambda x: x >= far),
                        ("start within 3x of the best LR", lambda x: abs(x) < far),
                        ("start <= 1/3 of the best LR", lambda x: x <= -far)):
        rows[label] = [i for i, r in enumerate(runs) if test(r.start)]
    for family in sorted({r.task.split("(")[0] for r in runs}):
        rows[family] = [i for i, r in enumerate(runs) if r.task.startswith(family + "(")]
    return rows


def write_report(args: argparse.Namespace, replays: dict[str, list[Replay]], picked: dict[str, list[float]],
                 minutes: float) -> None:
    constant = replays["constant"]
    lines = []
    for label, indices in groups(constant).items():
        if not indices:
            continue
        for name, runs in replays.items():
            if name == "constant":
                continue
            s = summary([(runs[i].final_val_loss, constant[i].final_val_loss) for i in indices])
            lines.append(f"| {label} | {name} | {s['runs']} | {s['below']:.0%} | {s['equal']:.0%} | {s['harm']:.0%} | "
                         f"{s['diverged']} | "
                         f"{s['geomean']:.3f} ({s['low']:.3f}-{s['high']:.3f}) |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/expert_ceiling.py", args.config, *args.overrides,
                        *(["--agent", args.agent] if args.agent else []), f"--episodes {args.episodes}",
                        *([f"--oracle-grid {','.join(f'{f:g}' for f in args.oracle_grid)}"] if args.oracle_grid else []),
                        *([f"--task-pool {args.task_pool}"] if args.task_pool else []),
                        f"--first-seed {args.first_seed}", f"--out {args.out}"])
    out.write_text("\n".join([
        "# The imitation recipe's expert, replayed on its own meta-training distribution (issue #18)", "",
        f"`{command}`", "",
        f"{len(constant)} runs (seeds {args.first_seed}-{args.first_seed + len(constant) - 1}), each replayed from the "
        f"same task, LR, weights and batches under every policy; {minutes:.1f} min on "
        f"{platform.processor() or platform.machine()}. Per run: final validation loss over the constant LR's (the "
        "user's LR untouched); the start's side is against the task's cell's calibrated best LR, which the expert "
        "aims at. An oracle that picks x1 equals the constant LR's run (\"equal to it\"). See the script's docstring.", "",
        "| runs | policy | n | below the constant LR | equal to it | harm (> 2% worse) | diverged (the constant LR did not) "
        "| geometric mean ratio (95% CI) |",
        "|---|---|---|---|---|---|---|---|", *lines, "",
        *[f"{name}: factor picked per run (of {args.oracle_grid}): "
          + ", ".join(f"x{f:g} {factors.count(f)}" for f in args.oracle_grid) + "." for name, factors in picked.items()],
        ""]))
    out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "runs": {name: [r._asdict() for r in runs] for name, runs in replays.items()},
         "picked": picked, "minutes": minutes}, indent=1))
    print(out.read_text())


if __name__ == "__main__":
    main()
