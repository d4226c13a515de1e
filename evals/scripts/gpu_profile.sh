#!/usr/bin/env bash
# Where one steady-state HD chunk's time goes on one GPU (random 7B weights), bf16 and FP8, and whether
# batched sessions give their alone tokens (default mode, and batch-invariant mode); results under $OUT.
# Usage (on a GPU machine, repo root; wheels per gpu_env.sh in .whl/ and .whl-fp8/):
#   bash evals/scripts/gpu_profile.sh          (AGREEMENT=0: the profiles only)
set -uo pipefail
source evals/scripts/gpu_env.sh
OUT=${OUT:-runs/gpu-profile}
mkdir -p "$OUT"
[ "${AGREEMENT:-1}" = 1 ] && python3 evals/scripts/bench_batch.py --sessions "" --out "$OUT/agreement" 2>&1 | tail -15 | tee "$OUT/agreement.txt"
for weights in bf16 fp8-dynamic; do
  python3 evals/scripts/profile_chunk.py --warm 12 --weights "$weights" --out "$OUT/profile-$weights" 2>&1 \
    | tail -40 | tee "$OUT/profile-$weights.txt"
done
