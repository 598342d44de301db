#!/usr/bin/env bash
# GPU checks of ganno-lightning in one short run: about 8 minutes on one H200 (16 cores), at most
# about 12.5 (every step stopped at its timeout).
#
#   1. environment: nvidia-smi -L, python/torch/CUDA/lightning/torchrl/tensordict versions, whether
#      torchrl's C++ extension loads (it is built against another torch; ganno does not use it), and
#      `import ganno_lightning.layerwise, .envs, .agents, .agents.train`            -> log only
#   2. tests: every tests/ file that asks `torch.cuda.is_available()` (its GPU tests run there), then
#      tests/layerwise and tests/agents/test_train.py; tests of integrations that are not installed
#      (LightningCLI: jsonargparse; W&B: wandb) are left out                     -> $OUT/gpu_tests.txt
#   3. GANNOCallback's overhead on the GPU (benchmarks/callback_overhead.py, 10.5M-parameter MLP,
#      Adam; target: under 1%), at batch 64 and 1024 -> $OUT/callback_overhead_cuda.md,
#                                                       $OUT/callback_overhead_cuda_b1024.md
#      (the shipped agent's rollback on: its copy goes to pinned host memory on a side stream), and at
#      batch 64 with the rollback off, for its cost   -> $OUT/callback_overhead_cuda_no_rollback.md
#      Then where its per-step cost comes from (benchmarks/gpu_overhead_breakdown.py: plain, split
#      per layer with foreach or fused Adam, the whole callback)  -> $OUT/gpu_overhead_breakdown.md
#   4. meta-training speed with the inner training on CPU vs on the GPU (`env.device`): one env per
#      family, then ganno-train on ganno_default.yaml cut to 3 iterations of 256 env steps (imitation ones:
#      the recipe imitates for its first 30720)
#      (benchmarks/meta_training_speed.py)              -> $OUT/meta_training_speed.md
#
# Everything printed also goes to $OUT/gpu_checks.log. $OUT defaults to /tmp/gpu_checks_out.
# Each step runs under its own timeout and on its own: a failure prints "STEP FAILED: <step>" and
# the next step still runs. Run from anywhere, on any CUDA machine with the project's dependencies:
#
#   OUT=/tmp/gpu_out bash benchmarks/gpu_checks.sh
#
# Setup (wheels in .whl/, this checkout's code first on PYTHONPATH): benchmarks/device_setup.sh.
#
# Without a GPU, steps 3 and 4 are skipped; GPU_CHECKS_DRY=1 runs them on CPU at toy sizes
# instead (to try this script itself; their numbers then mean nothing). GPU_CHECKS_TEST_PROCESSES
# (default 4) sets step 2's pytest-xdist processes; 1 runs the tests in one process.
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-${TMPDIR:-/tmp}/gpu_checks_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee -a "$OUT/gpu_checks.log") 2>&1
TEE_PID=$!
START=$SECONDS

step() { echo; echo "=== [$((SECONDS - START)) s] $*"; }
failed() { echo; echo "STEP FAILED: $1 (exit $2)"; }

step "0. setup: wheels and PYTHONPATH"
source benchmarks/device_setup.sh

step "1. environment"
nvidia-smi -L || echo "(no nvidia-smi)"
timeout -k 5 120 "${PYP[@]}" - <<'EOF' || failed "1. environment" $?
import importlib, platform, warnings
import torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuda available", torch.cuda.is_available(),
      "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")
for name in ("lightning", "numpy", "tensordict", "torchrl", "omegaconf", "antlr4"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')} from {module.__file__}")
    except Exception as err:
        print(f"{name}: IMPORT FAILED: {type(err).__name__}: {err}")
try:
    import torchrl._torchrl  # built against another torch: a failure here costs only prioritized replay buffers
    print("torchrl C++ extension: loads")
except Exception as err:
    print(f"torchrl C++ extension: does not load ({type(err).__name__}: {str(err)[:200]}); unused by ganno")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import ganno_lightning.layerwise, ganno_lightning.envs, ganno_lightning.agents  # noqa: E401
    import ganno_lightning.agents.train  # torchrl collectors and objectives
    from ganno_lightning import GANNOCallback  # noqa: F401
print("import ganno_lightning.layerwise, .envs, .agents, .agents.train: OK from", ganno_lightning.__file__)
EOF
HAVE_CUDA=0
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null && HAVE_CUDA=1

step "2. tests: GPU tests, tests/layerwise, tests/agents/test_train.py"
mapfile -t GPU_TEST_FILES < <(grep -rl --include='test_*.py' "cuda.is_available" tests | sort)
echo "files with GPU tests: ${GPU_TEST_FILES[*]}"
# Tests of optional integrations the GPU machine lacks are left out: LightningCLI's need jsonargparse
# (the `cli` extra); three need wandb (W&B logging; meta-training logs to W&B by default).
SKIP_FILES=" " OPTIONS=()
if ! "${PYP[@]}" -c "import jsonargparse" 2>/dev/null; then
  SKIP_FILES=" tests/layerwise/test_cli.py "
  echo "no jsonargparse: tests/layerwise/test_cli.py left out"
fi
if ! "${PYP[@]}" -c "import wandb" 2>/dev/null; then
  OPTIONS+=(--deselect tests/layerwise/test_callback.py::test_metrics_reach_every_logger
            --deselect tests/layerwise/test_schedule.py::test_wandb_logs_the_scale_heatmap_beside_the_effective_lr
            --deselect tests/agents/test_train.py::test_smoke_run_exports_an_agent_the_callback_loads)
  echo "no wandb: its 3 tests left out"
fi
# 4 processes, each test file in one of them, when pytest-xdist is there (the GPU machine has it);
# on 16 cores that is about 1 minute instead of 2
PROCESSES=${GPU_CHECKS_TEST_PROCESSES:-4}  # 1: one process, no xdist
if ((PROCESSES > 1)) && "${PYP[@]}" -c "import xdist" 2>/dev/null; then
  OPTIONS+=(-n "$PROCESSES" --dist loadfile)
fi
# the GPU tests' files first, so their results are in even if the timeout cuts the rest
TESTS=("${GPU_TEST_FILES[@]}")
for t in tests/layerwise tests/agents/test_train.py; do
  for f in $(find "$t" -name 'test_*.py' | sort); do
    [[ " ${TESTS[*]} " == *" $f "* || $SKIP_FILES == *" $f "* ]] || TESTS+=("$f")
  done
done
OMP_NUM_THREADS=4 timeout -k 10 150 "${PYP[@]}" -m pytest -q -p no:cacheprovider -rs --durations=10 \
  --continue-on-collection-errors ${OPTIONS[@]+"${OPTIONS[@]}"} "${TESTS[@]}" 2>&1 \
  | tee "$OUT/gpu_tests.txt" || failed "2. tests" $?
if ((HAVE_CUDA)) && grep -E "^SKIPPED.*(GPU|CUDA|cuda)" "$OUT/gpu_tests.txt"; then
  echo "STEP FAILED: 2. tests: GPU tests were skipped on a machine with CUDA"
fi

if ((HAVE_CUDA)); then
  DEVICE=cuda
  CO_ARGS=(--intervals 30 --reps 8)
  # batch 1024: ~14 ms a step on an H200 (collating 1024 samples a batch on the host), ~11 s a run at
  # 30 intervals, which 11 runs cannot fit in 60 s; 8 intervals and 3 pairs are 7 runs of ~4 s
  CO_B1024_ARGS=(--batch 1024 --intervals 8 --reps 3)
  MT_ARGS=(--devices cpu cuda --iterations 3 --frames-per-batch 256 --timeout 70)
elif [[ ${GPU_CHECKS_DRY:-0} == 1 ]]; then
  echo; echo "no CUDA: GPU_CHECKS_DRY=1, steps 3 and 4 run on CPU at toy sizes (numbers mean nothing)"
  DEVICE=cpu
  CO_ARGS=(--width 256 --interval 5 --intervals 2 --reps 1)
  CO_B1024_ARGS=(--width 256 --interval 5 --intervals 2 --reps 1 --batch 1024)
  MT_ARGS=(--devices cpu --iterations 2 --frames-per-batch 32 --minibatch-size 32 --env-steps 2 --tasks 1 --timeout 120)
else
  DEVICE=
fi

step "3. GANNOCallback overhead on $DEVICE"
if [[ -n $DEVICE ]]; then
  timeout -k 10 90 "$PY" benchmarks/callback_overhead.py --device "$DEVICE" "${CO_ARGS[@]}" \
    --out "$OUT/callback_overhead_cuda.md" || failed "3. callback overhead, batch 64" $?
  timeout -k 10 60 "$PY" benchmarks/callback_overhead.py --device "$DEVICE" "${CO_B1024_ARGS[@]}" \
    --out "$OUT/callback_overhead_cuda_b1024.md" || failed "3. callback overhead, batch 1024" $?
  timeout -k 10 90 "$PY" benchmarks/callback_overhead.py --device "$DEVICE" "${CO_ARGS[@]}" --rollback off \
    --out "$OUT/callback_overhead_cuda_no_rollback.md" || failed "3. callback overhead, no rollback" $?
  if [[ $DEVICE == cuda ]]; then BD_ARGS=(--budget 60); else BD_ARGS=(--quick); fi
  timeout -k 10 150 "${PYP[@]}" benchmarks/gpu_overhead_breakdown.py --device "$DEVICE" "${BD_ARGS[@]}" \
    --out "$OUT/gpu_overhead_breakdown.md" || failed "3. overhead breakdown" $?
else
  echo "skipped: no CUDA"
fi

step "4. meta-training speed, inner training on CPU vs GPU"
if [[ -n $DEVICE ]]; then
  timeout -k 10 180 "$PY" benchmarks/meta_training_speed.py "${MT_ARGS[@]}" \
    --out "$OUT/meta_training_speed.md" 2>&1 | grep -v "\[torchrl\]\[INFO\]" || failed "4. meta-training speed" $?
else
  echo "skipped: no CUDA"
fi

rm -rf "$SHADOW"
step "done; results in $OUT:"
ls -l "$OUT"
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null  # the log is complete before the script returns
