#!/usr/bin/env bash
# Run several short meta-trainings (issue #18's pilots) side by side, one process group each, on a
# machine with many cores: every pilot gets its own ganno-train process with `run.workers` env
# workers, PILOT_JOBS pilots at a time (default: all at once; 8 pilots of 2 workers fill 16 cores).
#
#   OUT=runs/pilots PILOT_JOBS=1 bash benchmarks/agent_pilots.sh configs/experiments/pilots_act_early_prior.txt
#
# The list file has one pilot per line, `name: key=value ...` (ganno-train overrides on top of
# configs/experiments/ganno_pilot.yaml, or of PILOT_CONFIG); blank lines and `#` comments are skipped.
# Each pilot writes $OUT/<name>/ (agent.pt, checkpoint.pt, metrics.csv, train.log). A pilot stopped
# by PILOT_TIMEOUT keeps its last checkpoint; export it with ganno-train ... run.resume=true
# run.total_frames=<the checkpoint's frames>. Setup: benchmarks/device_setup.sh. PILOT_PACK=1 also
# packs every pilot's agent.pt, checkpoint.pt and metrics.csv into $OUT/pilots.tgz (the device tool
# returns only a few files per run).
# On the lent H200 machine's 16 cores, 8 pilots of 2 workers ran at about 25 env steps/s each (a
# 20480-frame pilot: about 14 minutes); on 2 cores one pilot alone runs at about 60.
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
LIST=${1:?usage: agent_pilots.sh PILOT_LIST}
OUT=${OUT:-${TMPDIR:-/tmp}/agent_pilots}
CONFIG=${PILOT_CONFIG:-configs/experiments/ganno_pilot.yaml}
TIMEOUT=${PILOT_TIMEOUT:-3600}
JOBS=${PILOT_JOBS:-1000}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
failed() { echo "FAILED: $1 (exit $2)"; }
source benchmarks/device_setup.sh
echo "$(nproc) cores; config $CONFIG; timeout ${TIMEOUT}s"

pids=() names=()
while IFS= read -r line; do
  line=${line%%#*}
  [[ -z ${line// } ]] && continue
  name=${line%%:*}; name=${name// }
  read -r -a overrides <<<"${line#*:}"
  mkdir -p "$OUT/$name"
  while (($(jobs -rp | wc -l) >= JOBS)); do wait -n; done
  echo "start $name: ${overrides[*]}"
  ( timeout -k 10 "$TIMEOUT" "${PYP[@]}" -m ganno_lightning.agents.train "$CONFIG" "${overrides[@]}" \
      run.out_dir="$OUT/$name" run.progress=false run.wandb=false 2>&1 \
      | grep -v "\[torchrl\]\[INFO\]" > "$OUT/$name/train.log" ) &
  pids+=($!) names+=("$name")
done <"$LIST"

for i in "${!pids[@]}"; do
  wait "${pids[$i]}"; code=$?
  name=${names[$i]}
  last=$(tail -n 1 "$OUT/$name/metrics.csv" 2>/dev/null | cut -d, -f1-6)
  echo "$name: exit $code; last metrics row (iteration, frames, return, episodes, reward/step, steps/s): $last"
done
rm -rf "$SHADOW"
if [[ ${PILOT_PACK:-0} == 1 ]]; then
  (cd "$OUT" && tar czf pilots.tgz --ignore-failed-read "${names[@]/%//agent.pt}" "${names[@]/%//checkpoint.pt}" \
      "${names[@]/%//metrics.csv}" && ls -l pilots.tgz)
fi
