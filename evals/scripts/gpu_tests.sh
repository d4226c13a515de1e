#!/usr/bin/env bash
# The GPU-only tests (`-m gpu`) and a short efficiency smoke run on one GPU, results under $OUT.
# Usage (on a GPU machine, repo root; wheels per gpu_env.sh in .whl/): bash evals/scripts/gpu_tests.sh
set -uo pipefail
source evals/scripts/gpu_env.sh
OUT=${OUT:-runs/gpu-tests}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_decode_step.py tests/test_kernels.py 2>&1 | tee "$OUT/pytest_gpu.txt"
python3 -m evals efficiency --random-weights tiny --seconds 6 --warmup 2 --device cuda --policies streaming \
  --out "$OUT/efficiency-tiny" 2>&1 | tail -20 | tee "$OUT/efficiency_tiny.txt"
