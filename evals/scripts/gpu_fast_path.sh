#!/usr/bin/env bash
# One device-tool call for the GPU fast path: correctness on the GPU, the phase benchmark with
# its alternatives, and the efficiency run of the streaming policy.
# Usage (on a GPU machine, repo root): bash evals/scripts/gpu_fast_path.sh SECONDS
set -euo pipefail
seconds=${1:-150}
out=${OUT:-runs/gpu}
mkdir -p "$out"
source evals/scripts/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_decode_step.py tests/test_vision.py tests/test_engine_equivalence.py 2>&1 | tail -3 | tee "$out/gpu_tests.log"
python3 evals/scripts/bench_phases.py --warm 24 --out "$out" > "$out/phases.log" 2>&1 || true
grep -v "^ *File\|^    " "$out/phases.log" | grep -v "^--\|^ *Name\|^void\|^ *nvjet\|elementwise\|Self C" | tail -45
python3 -m evals efficiency --random-weights 7b --seconds "$seconds" --resolution 1280x720 --tokens 20 \
  --policies "${POLICIES:-streaming}" --out "$out" 2>&1 | tail -6 | tee "$out/efficiency.log"
