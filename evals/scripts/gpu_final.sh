#!/usr/bin/env bash
# The efficiency figures of docs/performance.md, part 1 (one device-tool call): the GPU-side tests,
# then a 1000-second HD stream at 2 FPS and an HD stream at 8 FPS, streaming policy, 20 tokens
# forced per chunk, full-size random 7B weights. Part 2 (the stock baseline) is gpu_stock.sh.
set -uo pipefail
out=${OUT:-runs/gpu}
mkdir -p "$out/hd2fps" "$out/hd8fps"
source evals/scripts/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pytest -q -p no:cacheprovider -m gpu $(grep -l "mark.gpu" tests/*.py) 2>&1 | tail -3 | tee "$out/gpu_tests.log"
python3 -m evals efficiency --random-weights 7b --seconds "${SECONDS_2FPS:-1000}" --resolution 1280x720 --fps 2 \
  --tokens 20 --policies streaming --out "$out/hd2fps" 2>&1 | tail -5
python3 -m evals efficiency --random-weights 7b --seconds "${SECONDS_8FPS:-90}" --resolution 1280x720 --fps 8 \
  --tokens 20 --policies streaming --out "$out/hd8fps" 2>&1 | tail -5
