#!/usr/bin/env bash
# The scheduler on one GPU: the gpu tests of tests/test_batch.py and the sessions sweep of bench_batch.py.
# Usage (on a GPU machine, repo root; wheels per gpu_env.sh in .whl/): bash evals/scripts/gpu_batch.sh
set -uo pipefail
source evals/scripts/gpu_env.sh
OUT=${OUT:-runs/gpu-batch}
mkdir -p "$OUT"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_batch.py tests/test_decode_step.py tests/test_kernels.py tests/test_paged_attention.py 2>&1 | tail -15 | tee "$OUT/pytest_batch.txt"
python3 evals/scripts/bench_batch.py --sessions 1,8,16,24 --chunks 10 --out "$OUT" 2>&1 | grep -v "^INFO" | tail -20 | tee "$OUT/bench_batch.txt"
