#!/usr/bin/env bash
# Startup on one GPU (issue 18): the gpu tests of the background compilation, then `evals startup` with
# random 7B weights written to the machine's local disk: one cold run (empty compile caches) and two
# warm ones, 40 one-second HD chunks each, paced as a live feed.
# Usage (on a GPU machine, repo root; wheels per gpu_env.sh in .whl/): bash evals/scripts/gpu_startup.sh
set -uo pipefail
source evals/scripts/gpu_env.sh
OUT=${OUT:-runs/gpu-startup}
mkdir -p "$OUT"
WEIGHTS=${WEIGHTS:-/tmp/streamvlm-random-7b}
rm -rf "$WEIGHTS"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_warmup.py tests/test_decode_step.py 2>&1 | tail -15 | tee "$OUT/pytest_warmup.txt"
python3 -m evals startup --random-weights 7b --weights-dir "$WEIGHTS" --warm 2 --chunks 40 \
  --device cuda --out "$OUT/startup" 2>&1 | grep -v "^INFO" | tail -30 | tee "$OUT/startup.txt"
