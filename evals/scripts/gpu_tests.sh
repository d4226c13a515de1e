#!/usr/bin/env bash
# Every GPU-only test (`-m gpu`, each under its own time limit, every failure's reason kept) and a short
# efficiency smoke run on one GPU, results under $OUT.
# Usage (on a GPU machine, repo root; wheels per gpu_env.sh in .whl/ and .whl-fp8/ for the FP8 tests):
#   bash evals/scripts/gpu_tests.sh
set -uo pipefail
source evals/scripts/gpu_env.sh
OUT=${OUT:-runs/gpu-tests}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
# every test file that has a gpu test (grep -l "mark.gpu" tests/test_*.py)
python3 -m pytest -q -p no:cacheprovider -m gpu -o timeout=180 --tb=short -rfEs \
  $(grep -l "mark.gpu" tests/test_*.py) 2>&1 | tee "$OUT/pytest_gpu.txt" | tail -30
python3 -m evals efficiency --random-weights tiny --seconds 6 --warmup 2 --device cuda --policies streaming \
  --out "$OUT/efficiency-tiny" 2>&1 | tail -20 | tee "$OUT/efficiency_tiny.txt"
