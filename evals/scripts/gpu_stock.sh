#!/usr/bin/env bash
# The efficiency figures of docs/performance.md, part 2 (one device-tool call): stock transformers
# `generate` over a growing cache against the streaming policy for 200 s of HD video at 2 FPS,
# then probes of where stock generate runs out of GPU memory.
set -uo pipefail
out=${OUT:-runs/gpu}
mkdir -p "$out/stock"
source evals/scripts/gpu_env.sh
python3 -m evals efficiency --random-weights 7b --seconds "${SECONDS_STOCK:-200}" --resolution 1280x720 --fps 2 \
  --tokens 20 --policies streaming,stock --oom-probe --out "$out/stock" 2>&1 | grep -v "━" | tail -30
