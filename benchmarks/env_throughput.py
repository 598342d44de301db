"""LayerwiseLREnv cost per inner optimizer step vs. a plain PyTorch loop, and env steps per second.

Both sides train the same model (fixed tasks sampled from each zoo family's train split) on the
same data for the same number of optimizer steps; they alternate (A B A B ...) so both see the same
machine load. Each measurement records wall time and the process's CPU time: everything runs in this
one single-threaded process, so CPU time is the work done, and it is far less disturbed by other
processes on a shared machine. Target: env / plain <= 1.2 at interval 25 on CPU. Then env steps/s
with 1 and 2 ParallelEnv workers.

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

from ganno_lightning.envs import keys
from ganno_lightning.envs.layerwise_env import EnvConfig, LayerwiseLREnv
from ganno_lightning.envs.task import TaskFamily, TrainingTask
from ganno_lightning.envs.tasks import FAMILIES, make_family

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


class Clock:
    """Wall and CPU seconds since creation."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def plain_loop(task: TrainingTask, steps: int) -> tuple[float, float]:
    """(wall, CPU) seconds for `steps` optimizer steps of the task in a hand-written PyTorch loop."""
    module = task.module.train()
    optimizer = module.configure_optimizers()
    loader = module.train_dataloader()
    batches = iter(loader)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*self\.log\(\).*")
        clock = Clock()
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
        return clock.read()


def env_loop(env: LayerwiseLREnv, env_steps: int) -> tuple[float, float]:
    """(wall, CPU) seconds for `env_steps` env steps (each `interval` optimizer steps), reset excluded."""
    td = env.reset()
    td.set(keys.ACTION, torch.full((env.max_agents,), 3))  # x1: the same LR as the plain loop
    clock = Clock()
    for _ in range(env_steps):
        td = env.step(td)["next"]
        td.set(keys.ACTION, torch.full((env.max_agents,), 3))
    return clock.read()


def measure(family: FixedTask, config: EnvConfig, env_steps: int, reps: int) -> tuple[list, list, str, int]:
    """Alternating plain/env timings of one task: ``(plain, env, task name, agents)``, each a list of
    ``(wall, CPU)`` seconds per repetition."""
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
    rows, family_rows = [], []
    totals = {}  # family -> [plain wall, plain CPU, env wall, env CPU] summed over its tasks
    for family_name in args.families:
        total = totals.setdefault(family_name, [0.0] * 4)
        for task_seed in range(args.tasks):
            plain, ours, name, layers = measure(FixedTask(family_name, task_seed), config, args.env_steps, args.reps)
            cells = []
            for clock in (0, 1):  # wall, CPU
                plain_s = statistics.median(p[clock] for p in plain)
                env_s = statistics.median(o[clock] for o in ours)
                ratio = statistics.median(o[clock] / p[clock] for o, p in zip(ours, plain))
                total[clock] += plain_s
                total[2 + clock] += env_s
                cells += [f"{plain_s / steps * 1e3:.3f}", f"{env_s / steps * 1e3:.3f}", f"{ratio:.3f}"]
            rows.append(f"| {name} | {layers} | {' | '.join(cells)} |")
        family_rows.append(f"| {family_name} | {total[2] / total[0]:.3f} | {total[3] / total[1]:.3f} |")
    overall = [sum(t[i] for t in totals.values()) for i in range(4)]

    # Every worker trains the same fixed task (its own weights and data order): with random tasks, a
    # synchronous ParallelEnv step waits for the slowest worker's task, and the figure would measure
    # the task draw, not the scaling. ParallelEnv's default shared-memory buffers make the parent
    # spin-poll its workers; with use_buffers=False it blocks on the pipes instead.
    throughput = {}
    for use_buffers in (True, False):
        for workers in (1, 2):
            make = functools.partial(LayerwiseLREnv, FixedTask(args.families[0], 0), config)
            penv = ParallelEnv(workers, [functools.partial(make, seed=s) for s in range(workers)], num_threads=1,
                               use_buffers=use_buffers)
            penv.rollout(2, break_when_any_done=False)  # start-up and first reset
            start = time.perf_counter()
            penv.rollout(args.env_steps, break_when_any_done=False)
            throughput[use_buffers, workers] = workers * args.env_steps / (time.perf_counter() - start)
            penv.close()

    lines = [
        "# LayerwiseLREnv throughput (CPU, 1 thread per process)",
        "",
        f"Interval {args.interval}; {steps} optimizer steps per measurement; {args.reps} alternating pairs per task "
        f"(plain loop, then env, same model and data); torch {torch.__version__}.",
        "",
        "Wall: elapsed time. CPU: this process's CPU time (the same work, less disturbed by other load).",
        "",
        "| task (train split) | agents | plain wall ms/step | env wall ms/step | env / plain wall (median of pairs) "
        "| plain CPU ms/step | env CPU ms/step | env / plain CPU (median of pairs) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "| family | env / plain, wall (total time of its tasks) | env / plain, CPU |",
        "|---|---|---|",
        *family_rows,
        f"| **all tasks** | **{overall[2] / overall[0]:.3f}** | **{overall[3] / overall[1]:.3f}** |",
        "",
        f"ParallelEnv env steps / s (each worker trains the first {args.families[0]} task above, random actions), "
        "wall clock:",
        "",
        "| workers | use_buffers=True (TorchRL's default: the parent spin-polls) "
        "| use_buffers=False (the parent blocks) |",
        "|---|---|---|",
        *(f"| {w} | {throughput[True, w]:.2f} | {throughput[False, w]:.2f} |" for w in (1, 2)),
        "",
        f"Command: `python benchmarks/env_throughput.py --families {' '.join(args.families)} --interval {args.interval}`",
    ]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
