#!/usr/bin/env bash
# One device-tool call: the core path on one GPU with full-size random 7B weights.
# Usage (on a GPU machine, repo root): bash evals/scripts/gpu_core_timing.sh SECONDS
# Installs carried wheels (.whl/) if any, then measures the ceilings and the three cache policies
# at 1280x720, 2 FPS, 20 tokens forced per chunk. Results land in $OUT (or ./runs/gpu).
set -euo pipefail
seconds=${1:-120}
out=${OUT:-runs/gpu}
mkdir -p "$out"
source evals/scripts/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
python3 -m evals ceilings --out "$out" 2>&1 | tee "$out/ceilings.log"
python3 -m evals efficiency --random-weights 7b --seconds "$seconds" --resolution 1280x720 --tokens 20 \
  --policies "${POLICIES:-streaming,none,recompute}" --out "$out" 2>&1 | tee "$out/efficiency.log"
