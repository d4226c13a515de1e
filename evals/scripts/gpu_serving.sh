#!/usr/bin/env bash
# The many-streams sweep on one GPU: a random 7B folder served by `python -m core serve`'s engine
# (cache pool, batched decode), N client processes streaming HD JPEG frames in real time, then the
# same with the old one-chunk-at-a-time server for comparison.
# Usage (on a GPU machine, repo root; wheels per gpu_env.sh plus websockets in .whl/):
#   bash evals/scripts/gpu_serving.sh [LEVELS] [SECONDS] [SERIAL_LEVELS, or none]
# FORMAT=fp8-dynamic (any --weights value) serves the language model's linears in that format (torchao's
# wheel in .whl-fp8/).
set -uo pipefail
source evals/scripts/gpu_env.sh
OUT=${OUT:-runs/gpu-serving}
LEVELS=${1:-1,4,8,16,24}
SECONDS_PER_LEVEL=${2:-30}
SERIAL_LEVELS=${3:-1,4,8}
mkdir -p "$OUT"
MODEL=/tmp/random-7b
FORMAT=${FORMAT:-bf16}
python3 trainer/scripts/random_7b.py "$MODEL"
python3 -m evals server-load --model "$MODEL" --clients "$LEVELS" --seconds "$SECONDS_PER_LEVEL" \
  --resolution 1280x720 --weights "$FORMAT" --out "$OUT/batched" 2>&1 | grep -v "^INFO" | tail -30 | tee "$OUT/batched.txt"
if [ "$SERIAL_LEVELS" != "none" ]; then
  python3 -m evals server-load --model "$MODEL" --serial --clients "$SERIAL_LEVELS" --seconds "$SECONDS_PER_LEVEL" \
    --resolution 1280x720 --out "$OUT/serial" 2>&1 | grep -v "^INFO" | tail -30 | tee "$OUT/serial.txt"
fi
