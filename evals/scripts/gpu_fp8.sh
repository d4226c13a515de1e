#!/usr/bin/env bash
# 8-bit weights and fused projections on one GPU (issue 22), in under 9 minutes: the tests of
# tests/test_quantize.py and tests/test_fused.py (their gpu tests compare each path with bf16), the
# numerical drift of each FP8 recipe against bf16 with random 7B weights (`evals efficiency --drift`),
# then short `evals efficiency` streams (random 7B weights, 1280x720, 20 tokens forced, batch 1) for
# bf16 / fp8 recipes x fused on/off at 2 FPS and the main pairs at 8 FPS: decode ms per token and GB/s
# against the copy ceiling, prefill, chunk and peak memory. Everything lands in $OUT (one folder per
# step, plus summary.json and summary.md gathering them).
# Each step runs on its own (one failing does not stop the next) under a share of the time left; the
# steps are in order of importance and the ones the budget does not reach are listed as skipped.
# Usage (on a GPU machine, repo root; wheels per gpu_env.sh in .whl/, torchao among them):
#   bash evals/scripts/gpu_fp8.sh        # BUDGET=seconds in all (540), STREAM=seconds of each stream (30)
set -uo pipefail
source evals/scripts/gpu_env.sh
OUT=${OUT:-runs/gpu-fp8}
mkdir -p "$OUT"
BUDGET=${BUDGET:-540}  # seconds from the start of this script, its setup included
STREAM=${STREAM:-30}
START=0  # bash counts SECONDS from the start of the script
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, torchao, transformers; print('torch', torch.__version__, 'torchao', torchao.__version__, 'transformers', transformers.__version__)" 2>&1 | tail -1 | tee "$OUT/versions.txt"

# The first chunk compiles in the foreground (warm-up chunks leave it out of the medians); the
# background compilation would mix eager chunks into a short run's medians.
printf '[acceleration]\ncompile_in_background = false\n' > "$OUT/efficiency.toml"

step() {  # step NAME LIMIT_SECONDS COMMAND...: run it, echoed, within its limit and the time left
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - (SECONDS - START) - 5))
  if ((left < 30)); then
    echo "== $name: skipped, $((SECONDS - START)) s of the $BUDGET s budget used" | tee -a "$OUT/steps.txt"
    return
  fi
  ((limit > left)) && limit=$left
  echo "== $name (limit ${limit} s): $*" | tee -a "$OUT/steps.txt"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local status=$?
  grep -v "^INFO\|^W[0-9]" "$OUT/$name.log" | tail -12
  echo "== $name: exit $status after $((SECONDS - START)) s in all" | tee -a "$OUT/steps.txt"
}

efficiency() {  # efficiency NAME FPS WEIGHTS FUSED
  local name=$1 fps=$2 weights=$3 fused=$4
  step "$name" 110 python3 -m evals efficiency --random-weights 7b --device cuda --resolution 1280x720 \
    --fps "$fps" --tokens 20 --seconds "$STREAM" --warmup 16 --policies streaming --weights "$weights" \
    --fuse-projections "$fused" --config "$OUT/efficiency.toml" --out "$OUT/$name"
}

# Each test under its own limit (pytest-timeout), so one that hangs cannot take the others' time; the
# short tracebacks and every failure's reason stay in tests.log.
step tests 240 python3 -m pytest -q -p no:cacheprovider -o timeout=150 --tb=short -rfEs \
  tests/test_quantize.py tests/test_fused.py
step faults 90 python3 -m pytest -q -p no:cacheprovider -o timeout=80 --tb=short -rfEs -m gpu tests/test_faults_oom.py
step drift 80 python3 -m evals efficiency --random-weights 7b --device cuda --drift --resolution 1280x720 \
  --out "$OUT/drift"
efficiency bf16-2fps 2 bf16 off
efficiency fp8-dynamic-2fps 2 fp8-dynamic off
efficiency bf16-8fps 8 bf16 off
efficiency fp8-dynamic-8fps 8 fp8-dynamic off
efficiency bf16-fused-2fps 2 bf16 on
efficiency fp8-weight-only-2fps 2 fp8-weight-only off
efficiency fp8-dynamic-fused-2fps 2 fp8-dynamic on
efficiency fp8-weight-only-fused-2fps 2 fp8-weight-only on

python3 - "$OUT" <<'EOF' 2>&1 | tee "$OUT/summary.md"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
runs = []
for path in sorted(out.glob("*/results.json")):
    data = json.loads(path.read_text())
    meta, (s, *_) = data["meta"], data["summary"]
    runs.append({"run": path.parent.name, "device": meta["device"], "weights": meta["weights"],
                 "fused": meta["fuse_projections"], "fps": meta["fps"], "seconds": meta["seconds"],
                 "copy_ceiling_gbps": meta["copy_ceiling_gbps"], "decode_weight_gb": meta["decode_weight_bytes"] / 1e9,
                 **{k: s.get(k) for k in ("decode_ms_per_token", "decode_gbps", "prefill_ms", "vision_ms",
                                          "total_ms", "peak_memory_gib", "cached_tokens_end", "status")}})
drift = out / "drift" / "drift.json"
summary = {"runs": runs, "drift": json.loads(drift.read_text()) if drift.exists() else None}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print("| run | weights | fused | FPS | decode ms/token | decode GB/s (of copy ceiling) | weights GB | prefill ms | vision ms | chunk ms | peak GiB | status |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in runs:
    def f(key, fmt="{:.2f}"):
        return fmt.format(r[key]) if r.get(key) is not None else ""
    share = f" ({r['decode_gbps'] / r['copy_ceiling_gbps']:.0%})" if r["decode_gbps"] and r["copy_ceiling_gbps"] else ""
    print(f"| {r['run']} | {r['weights']} | {'on' if r['fused'] else 'off'} | {r['fps']:g} | {f('decode_ms_per_token')} | "
          f"{f('decode_gbps', '{:,.0f}')}{share} | {f('decode_weight_gb')} | {f('prefill_ms', '{:.1f}')} | "
          f"{f('vision_ms', '{:.1f}')} | {f('total_ms', '{:.1f}')} | {f('peak_memory_gib')} | {r['status']} |")
if summary["drift"]:
    print()
    print((out / "drift" / "drift.md").read_text())
print(f"\n{runs[0]['device'] if runs else 'no runs'}; copy ceiling {runs[0]['copy_ceiling_gbps']:,.0f} GB/s" if runs and runs[0]["copy_ceiling_gbps"] else "")
EOF
echo "== done after $((SECONDS - START)) s; outputs in $OUT" | tee -a "$OUT/steps.txt"
