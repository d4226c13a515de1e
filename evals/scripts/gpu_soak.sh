#!/usr/bin/env bash
# The H200 soak of issue 21: random 7B weights (built in memory), 1280x720 at 2 FPS through the whole
# pipeline (engine, SRT/VTT/JSONL writers, the recorder) for STREAM seconds of stream time (3000: 50
# minutes) as fast as the GPU runs it, sampled every 60 chunks; the verdict compares RSS, GPU memory,
# descriptors, threads, cached tokens, positions and the chunk time of the first and last ten minutes.
# The compilation runs in the foreground at the first chunk, so no eager chunk is in the first window.
# Samples go to samples.jsonl as they are taken: a run cut by LIMIT still leaves its figures.
# Usage (on a GPU machine, repo root; wheels per gpu_env.sh in .whl/): bash evals/scripts/gpu_soak.sh
set -uo pipefail
source evals/scripts/gpu_env.sh
OUT=${OUT:-runs/gpu-soak}
mkdir -p "$OUT"
STREAM=${STREAM:-3000}
LIMIT=${LIMIT:-560}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
git rev-parse --short HEAD > "$OUT/revision.txt" 2>/dev/null || true
printf '[acceleration]\ncompile_in_background = false\n' > "$OUT/soak.toml"
timeout "$LIMIT" python3 -m evals soak --random-weights 7b --device cuda --resolution 1280x720 \
  --seconds "$STREAM" --every 60 --warmup 300 --config "$OUT/soak.toml" --out "$OUT/soak" \
  > "$OUT/soak.log" 2>&1
echo "soak exit $?" | tee -a "$OUT/soak.log"
grep -v "^INFO\|^W[0-9]" "$OUT/soak.log" | tail -40
ls -l "$OUT"/soak/soak.mp4 | tee -a "$OUT/soak.log"; rm -f "$OUT"/soak/soak.mp4  # too large to bring back
