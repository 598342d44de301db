"""LayerwiseLREnv cost per inner optimizer step vs. a plain PyTorch loop, and env steps per second.

Both sides train the same model (one fixed task from the zoo, same seed) on the same data for the
same number of optimizer steps; they alternate (A B A B ...) so both see the same machine load.
Target: env / plain <= 1.2 at interval 25 on CPU. Then env steps/s with 1 and 2 ParallelEnv workers.

    python benchmarks/env_throughput.py [--family mlp_digits] [--interval 25]
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
from envs.tasks import make_family

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="mlp_digits")
    parser.add_argument("--tasks", type=int, default=4, help="tasks sampled from the family's train split")
    parser.add_argument("--interval", type=int, default=25)
    parser.add_argument("--env-steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: one thread each is fastest, and workers don't fight

    steps = args.env_steps * args.interval
    config = EnvConfig(horizon=steps + 2 * args.interval, interval=args.interval)
    rows, total_plain, total_env = [], 0.0, 0.0
    for task_seed in range(args.tasks):
        family = FixedTask(args.family, task_seed)
        env = LayerwiseLREnv(family, config, seed=0)
        env.reset()
        name, layers = env.task.name, env.controller.num_agents
        plain_loop(family.sample(None), steps)  # warm-up
        env_loop(env, 2)
        plain, ours = [], []
        for _ in range(args.reps):
            plain.append(plain_loop(family.sample(None), steps))
            ours.append(env_loop(env, args.env_steps))
        ratio = statistics.median(o / p for o, p in zip(ours, plain))
        total_plain, total_env = total_plain + statistics.median(plain), total_env + statistics.median(ours)
        rows.append(f"| {name} | {layers} | {statistics.median(plain) / steps * 1e3:.3f} | "
                    f"{statistics.median(ours) / steps * 1e3:.3f} | {ratio:.3f} |")

    throughput = {}
    for workers in (1, 2):
        make = functools.partial(LayerwiseLREnv, make_family(args.family), config)
        penv = ParallelEnv(workers, [functools.partial(make, seed=s) for s in range(workers)], num_threads=1)
        penv.rollout(2, break_when_any_done=False)  # start-up and first reset
        start = time.perf_counter()
        penv.rollout(args.env_steps, break_when_any_done=False)
        throughput[workers] = workers * args.env_steps / (time.perf_counter() - start)
        penv.close()

    lines = [
        f"# LayerwiseLREnv throughput ({args.family}, CPU, 1 thread per process)",
        "",
        f"Interval {args.interval}; {steps} optimizer steps per measurement; {args.reps} alternating pairs per task "
        f"(plain loop, then env, same model and data); torch {torch.__version__}.",
        "",
        "| task (train split) | agents | plain ms/step | env ms/step | env / plain |",
        "|---|---|---|---|---|",
        *rows,
        f"| **all tasks (total time)** | | | | **{total_env / total_plain:.3f}** |",
        "",
        "| ParallelEnv workers | env steps / s (random tasks of the family, random actions) |",
        "|---|---|",
        *(f"| {w} | {throughput[w]:.2f} |" for w in (1, 2)),
        "",
        f"Command: `python benchmarks/env_throughput.py --family {args.family} --interval {args.interval}`",
    ]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
