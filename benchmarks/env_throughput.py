"""LayerwiseLREnv cost per inner optimizer step vs. a plain PyTorch loop, and env steps per second.

Both sides train the same model (fixed tasks sampled from each zoo family's train split) on the
same data for the same number of optimizer steps; they alternate (A B A B ...) so both see the same
machine load. Target: env / plain <= 1.2 at interval 25 on CPU. Then env steps/s with 1 and 2
ParallelEnv workers.

    python benchmarks/env_throughput.py [--families mlp_digits cnn_digits ...] [--interval 25]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
import warnings
from pathlib import Path

import torch
from torchrl.envs import ParallelEnv

from report import write_report

from envs import keys
from envs.layerwise_env import EnvConfig, LayerwiseLREnv
from envs.task import TaskFamily, TrainingTask
from envs.tasks import FAMILIES, make_family

RESULTS = Path(__file__).parent / "results" / "env_throughput.md"


class FixedTask(TaskFamily):
    """Always the same sampled task (same hyperparameters; weights from the env's seed)."""

    def __init__(self, family: str, seed: int):
        self.family = make_family(family)
        self.hp_seed = seed

    def sample(self, generator, split="train") -> TrainingTask:
        return self.family.sample(torch.Generator().manual_seed(self.hp_seed), split)

    def max_layers(self, split="train") -> int:
        return self.family.max_layers(split)


def plain_loop(task: TrainingTask, steps: int) -> float:
    """Seconds for `steps` optimizer steps of the task in a hand-written PyTorch loop."""
    module = task.module.train()
    optimizer = module.configure_optimizers()
    loader = module.train_dataloader()
    batches = iter(loader)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*self\.log\(\).*")
        start = time.perf_counter()
        for i in range(steps):
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(loader)
                batch = next(batches)
            loss = module.training_step(batch, i)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return time.perf_counter() - start


def env_loop(env: LayerwiseLREnv, env_steps: int) -> float:
    """Seconds for `env_steps` env steps (each `interval` optimizer steps), reset excluded."""
    td = env.reset()
    td.set(keys.ACTION, torch.full((env.max_agents,), 3))  # x1: the same LR as the plain loop
    start = time.perf_counter()
    for _ in range(env_steps):
        td = env.step(td)["next"]
        td.set(keys.ACTION, torch.full((env.max_agents,), 3))
    return time.perf_counter() - start


def measure(family: FixedTask, config: EnvConfig, env_steps: int, reps: int) -> tuple[list[float], list[float], str, int]:
    """Alternating plain/env timings of one task: ``(plain seconds, env seconds, task name, agents)``."""
    env = LayerwiseLREnv(family, config, seed=0)
    env.reset()
    name, layers = env.task.name, env.controller.num_agents
    plain_loop(family.sample(None), config.interval * 2)  # warm-up
    env_loop(env, 2)
    plain, ours = [], []
    for _ in range(reps):
        plain.append(plain_loop(family.sample(None), env_steps * config.interval))
        ours.append(env_loop(env, env_steps))
    env.close()
    return plain, ours, name, layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--tasks", type=int, default=3, help="tasks sampled from each family's train split")
    parser.add_argument("--interval", type=int, default=25)
    parser.add_argument("--env-steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: one thread each is fastest, and workers don't fight

    steps = args.env_steps * args.interval
    config = EnvConfig(horizon=steps + 2 * args.interval, interval=args.interval)
    rows, family_rows, totals = [], [], {}
    for family_name in args.families:
        family_plain = family_env = 0.0
        for task_seed in range(args.tasks):
            plain, ours, name, layers = measure(FixedTask(family_name, task_seed), config, args.env_steps, args.reps)
            ratio = statistics.median(o / p for o, p in zip(ours, plain))
            family_plain, family_env = family_plain + statistics.median(plain), family_env + statistics.median(ours)
            rows.append(f"| {name} | {layers} | {statistics.median(plain) / steps * 1e3:.3f} | "
                        f"{statistics.median(ours) / steps * 1e3:.3f} | {ratio:.3f} |")
        totals[family_name] = (family_plain, family_env)
        family_rows.append(f"| {family_name} | {family_env / family_plain:.3f} |")
    total_plain = sum(p for p, _ in totals.values())
    total_env = sum(e for _, e in totals.values())

    throughput = {}
    for workers in (1, 2):
        make = functools.partial(LayerwiseLREnv, make_family(args.families[0]), config)
        penv = ParallelEnv(workers, [functools.partial(make, seed=s) for s in range(workers)], num_threads=1)
        penv.rollout(2, break_when_any_done=False)  # start-up and first reset
        start = time.perf_counter()
        penv.rollout(args.env_steps, break_when_any_done=False)
        throughput[workers] = workers * args.env_steps / (time.perf_counter() - start)
        penv.close()

    lines = [
        "# LayerwiseLREnv throughput (CPU, 1 thread per process)",
        "",
        f"Interval {args.interval}; {steps} optimizer steps per measurement; {args.reps} alternating pairs per task "
        f"(plain loop, then env, same model and data); torch {torch.__version__}.",
        "",
        "| task (train split) | agents | plain ms/step | env ms/step | env / plain (median of pairs) |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "| family | env / plain (total time of its tasks) |",
        "|---|---|",
        *family_rows,
        f"| **all tasks** | **{total_env / total_plain:.3f}** |",
        "",
        f"| ParallelEnv workers | env steps / s (random {args.families[0]} tasks, random actions) |",
        "|---|---|",
        *(f"| {w} | {throughput[w]:.2f} |" for w in (1, 2)),
        "",
        f"Command: `python benchmarks/env_throughput.py --families {' '.join(args.families)} --interval {args.interval}`",
    ]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
