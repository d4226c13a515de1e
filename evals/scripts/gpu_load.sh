#!/usr/bin/env bash
# Where loading a random 7B folder onto the GPU spends its seconds (evals/scripts/load_breakdown.py),
# twice: the second run finds the shards in the page cache. Results under $OUT.
# Usage (on a GPU machine, repo root; wheels per gpu_env.sh in .whl/): bash evals/scripts/gpu_load.sh
set -uo pipefail
source evals/scripts/gpu_env.sh
OUT=${OUT:-runs/gpu-load}
WEIGHTS=${WEIGHTS:-/tmp/streamvlm-random-7b}
mkdir -p "$OUT"
[ -f "$WEIGHTS/config.json" ] || python3 trainer/scripts/random_7b.py "$WEIGHTS"
for run in 1 2; do
  python3 evals/scripts/load_breakdown.py "$WEIGHTS" --out "$OUT/run$run" 2>&1 | grep -v "^INFO" | tail -12 | tee "$OUT/run$run.txt"
done
