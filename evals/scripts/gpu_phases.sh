#!/usr/bin/env bash
# One device-tool call: the phase benchmark and a kernel-level profile of one engine chunk.
set -euo pipefail
out=${OUT:-runs/gpu}
mkdir -p "$out"
source evals/scripts/gpu_env.sh
python3 evals/scripts/bench_phases.py --warm 24 --out "$out" > "$out/phases.log" 2>&1 || true
grep -v "^ *File\|^    " "$out/phases.log" | tail -80
python3 evals/scripts/profile_chunk.py --warm 20 --out "$out" > "$out/profile.log" 2>&1 || tail -20 "$out/profile.log"
head -40 "$out/profile_tables.txt"
