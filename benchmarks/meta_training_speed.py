"""Meta-training speed with the inner training on CPU vs on a GPU (``env.device``), same config.

Two measurements, each on every device given:

1. One ``LayerwiseLREnv`` per family of the default mixture, in this process: wall ms per env step
   (``interval`` optimizer steps of a fixed train-split task, action x1), after warm-up steps.
2. ``ganno-train`` itself (a fresh process per device) on ``configs/ganno_default.yaml`` cut to a few
   iterations: env steps per second per iteration (collection and the update, from its
   ``metrics.csv``) and the whole run's wall time, start-up included.

Only the inner training moves: ``env.device`` is the one device key of meta-training. The policy,
the critic and the PPO update stay on CPU (networks of a few thousand parameters; TorchRL's
TensorDicts live on CPU, see ``LayerwiseLREnv``).

    python benchmarks/meta_training_speed.py --devices cpu cuda --out meta_training_speed.md
    python benchmarks/meta_training_speed.py --devices cpu --iterations 2   # CPU only
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from env_throughput import FixedTask, env_loop
from report import write_report

from ganno_lightning.envs.layerwise_env import EnvConfig, LayerwiseLREnv

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "meta_training_speed.md"
FAMILIES = ("mlp_digits", "teacher_student", "cnn_digits", "sequence")  # four of ganno_default.yaml's six families


def env_ms_per_step(family: str, device: str, interval: int, env_steps: int, tasks: int) -> tuple[float, str]:
    """Median over ``tasks`` fixed tasks of the wall ms per env step; and the first task's name."""
    config = EnvConfig(horizon=(env_steps + 4) * interval, interval=interval, device=device)
    per_step, name = [], ""
    for seed in range(tasks):
        env = LayerwiseLREnv(FixedTask(family, seed), config, seed=0)
        env_loop(env, 2)  # warm-up: first reset, CUDA kernels and allocator
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall, _ = env_loop(env, env_steps)  # each step ends on the host (its observation), no sync needed
        per_step.append(wall / env_steps * 1e3)
        name = name or env.task.name
        env.close()
    return statistics.median(per_step), name


def meta_train(device: str, args: argparse.Namespace, work: Path) -> dict:
    """Run ganno-train on ``device`` in a fresh process; its per-iteration env steps/s and wall time."""
    out = work / f"run_{device.replace(':', '_')}"
    overrides = [f"env.device={device}", f"run.workers={args.workers}", f"run.frames_per_batch={args.frames_per_batch}",
                 f"run.total_frames={args.frames_per_batch * args.iterations}",
                 f"algo.minibatch_size={min(args.minibatch_size, args.frames_per_batch)}", f"run.out_dir={out}",
                 "run.export=null",  # never overwrite the shipped agent that the config exports to
                 "run.wandb=false", "run.progress=false", "run.checkpoint_every=1000000"]
    pool = OmegaConf.load(args.config).get("env", {}).get("task_pool")
    if pool and not Path(pool).is_absolute():  # the run's cwd is `work`: give it the pool's absolute path
        overrides.append(f"env.task_pool={ROOT / pool if (ROOT / pool).is_file() else Path(pool).resolve()}")
    command = [sys.executable, "-m", "ganno_lightning.agents.train", str(Path(args.config).resolve()), *overrides]
    print(f"[meta_training_speed] {device}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    try:
        # cwd outside the checkout: `-m` puts the cwd first on sys.path, and the checkout's own
        # ganno_lightning/ folder lacks envs/ and agents/ (they install under it)
        done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=args.timeout)
        status = "ok" if done.returncode == 0 else f"exit {done.returncode}"
        log = done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        status = f"stopped after {args.timeout} s"
        log = (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace")
    wall = time.perf_counter() - start
    if status != "ok":
        print(f"[meta_training_speed] {device}: {status}; last output:\n" + "\n".join(log.splitlines()[-15:]),
              flush=True)
    rates = []
    metrics = out / "metrics.csv"
    if metrics.is_file():
        with open(metrics, newline="") as f:
            rates = [float(row["charts/env_steps_per_s"]) for row in csv.DictReader(f)]
    return {"status": status, "wall": wall, "rates": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    parser.add_argument("--config", default=str(ROOT / "configs" / "ganno_default.yaml"))
    parser.add_argument("--iterations", type=int, default=3,
                        help="iterations of each ganno-train run (imitation or PPO, as the config has them)")
    parser.add_argument("--frames-per-batch", type=int, default=256, help="env steps per PPO iteration")
    parser.add_argument("--minibatch-size", type=int, default=256, help="as ganno_default.yaml")
    parser.add_argument("--workers", type=int, default=2, help="env processes, as ganno_default.yaml")
    parser.add_argument("--timeout", type=float, default=120, help="seconds; a longer ganno-train run is stopped")
    parser.add_argument("--env-steps", type=int, default=8, help="timed env steps per task in part 1")
    parser.add_argument("--tasks", type=int, default=2, help="fixed tasks per family in part 1")
    parser.add_argument("--interval", type=int, default=25)
    parser.add_argument("--skip-env", action="store_true", help="only the ganno-train runs")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(1)  # as ganno-train's run.threads: tiny models run fastest on one
    devices = args.devices
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    lines = [
        "# Meta-training speed: inner training on " + " vs ".join(devices),
        "",
        f"torch {torch.__version__}, {gpu}, {os.cpu_count()} CPU cores, 1 torch thread per process. "
        "Only the inner training moves (`env.device`); the policy, critic and PPO update stay on CPU.",
        "",
    ]

    if not args.skip_env:
        lines += [f"## 1. One env, wall ms per env step ({args.interval} optimizer steps, fixed train-split task, "
                  f"action x1; median of {args.tasks} tasks x {args.env_steps} steps after 2 warm-up steps)", "",
                  f"| family: first of its {args.tasks} tasks | " + " | ".join(f"{d} ms/step" for d in devices)
                  + (f" | {devices[1]} / {devices[0]} time (above 1: {devices[1]} slower) |" if len(devices) == 2 else " |"),
                  "|---" * (len(devices) + 1 + (len(devices) == 2)) + "|"]
        for family in FAMILIES:
            cells, name = [], ""
            for device in devices:
                try:
                    ms, name = env_ms_per_step(family, device, args.interval, args.env_steps, args.tasks)
                    cells.append(ms)
                except Exception as err:  # one device failing must not lose the other's numbers
                    print(f"[meta_training_speed] env {family} on {device} failed: {type(err).__name__}: {err}",
                          flush=True)
                    cells.append(float("nan"))
                print(f"[meta_training_speed] env {family} on {device}: {cells[-1]:.2f} ms/step", flush=True)
            ratio = f" | {cells[1] / cells[0]:.2f}" if len(cells) == 2 else ""
            lines.append(f"| {name or family} | " + " | ".join(f"{c:.2f}" for c in cells) + ratio + " |")
        lines.append("")

    with tempfile.TemporaryDirectory(prefix="ganno_meta_speed_") as tmp:
        results = {device: meta_train(device, args, Path(tmp)) for device in devices}
    lines += [f"## 2. ganno-train {Path(args.config).name}: {args.iterations} iterations of "
              f"{args.frames_per_batch} env steps, {args.workers} env worker(s), minibatch "
              f"{min(args.minibatch_size, args.frames_per_batch)}", "",
              "env steps/s per iteration: collection and PPO update (ganno-train's `charts/env_steps_per_s`); the "
              "first iteration includes the workers' first resets. Wall: the whole process, imports and start-up "
              "included.", "",
              "| device | status | env steps/s, iteration 1 | env steps/s, later iterations (median) | wall s |",
              "|---|---|---|---|---|"]
    steady = {}
    for device, r in results.items():
        rates = r["rates"]
        steady[device] = statistics.median(rates[1:]) if len(rates) > 1 else float("nan")
        first = f"{rates[0]:.1f}" if rates else "-"
        lines.append(f"| {device} | {r['status']} | {first} | {steady[device]:.1f} | {r['wall']:.1f} |")
    if len(devices) == 2:
        a, b = devices
        lines += ["", f"**{b} / {a}, later iterations' env steps/s: {steady[b] / steady[a]:.2f}** "
                  f"(above 1: {b} is faster); wall {results[b]['wall'] / results[a]['wall']:.2f}x."]
    lines += ["", f"Command: `python benchmarks/meta_training_speed.py --devices {' '.join(devices)} "
              f"--iterations {args.iterations} --frames-per-batch {args.frames_per_batch} --workers {args.workers}`"]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
