#!/usr/bin/env bash
# Past one GPU: the many-streams sweep against `python -m core serve --cluster` with 1 replica, then with
# 2 replicas (one per GPU), on one Ray instance, in one run (docs/serving.md, "Past one GPU").
# A random 7B folder, N client processes streaming 1280x720 noise JPEGs in real time (evals server-load
# --url, unchanged), each level's p50/p99 and which replica served each client.
# Usage (on a machine with 2 GPUs, repo root; wheels per gpu_env.sh, the cluster's among them, in .whl/):
#   bash evals/scripts/gpu_cluster.sh [LEVELS_1] [LEVELS_2] [SECONDS]
# Writes $OUT/one/ and $OUT/two/ (server-load's results.json, summary.md, latency.png), and
# $OUT/cluster.json and $OUT/cluster.md: per replica count the most streams carried at p99 <= 2 s with
# nothing skipped or failed (and also in real time), and the scaling ratio. About 8 minutes.
# A CPU smoke run of the same steps (no wheels to install, the tiny model, no GPU):
#   MODEL=DIR NUM_GPUS=0 RESOLUTION=112x112 SERVE_FLAGS="--device cpu" bash evals/scripts/gpu_cluster.sh 1,2 2,4 4
set -uo pipefail
source evals/scripts/gpu_env.sh
OUT=${OUT:-runs/gpu-cluster}
LEVELS_1=${1:-8,16,24}
LEVELS_2=${2:-16,32,48}
SECONDS_PER_LEVEL=${3:-20}
PORT=8765
URL=ws://127.0.0.1:$PORT
MODEL=${MODEL:-/tmp/random-7b}
RESOLUTION=${RESOLUTION:-1280x720}
NUM_GPUS=${NUM_GPUS:-2}
SERVE_FLAGS=${SERVE_FLAGS:-}
LOGS=/tmp/gpu-cluster-logs
mkdir -p "$OUT" "$LOGS"
export RAY_USAGE_STATS_ENABLED=0
began=$(date +%s)
stamp() { echo "[$(( $(date +%s) - began )) s] $*"; }

python3 -c 'import torch; print("GPUs:", torch.cuda.device_count())'
python3 -c 'import ray, fastapi, starlette, uvicorn, grpc, google.protobuf as pb; print("ray", ray.__version__, "grpc", grpc.__version__, "protobuf", pb.__version__)' || exit 1
[ -f "$MODEL/config.json" ] || python3 trainer/scripts/random_7b.py "$MODEL"
stamp "weights ready"

# One Ray instance for both runs (as `ray start --head` on the first host of a cluster); no dashboard.
python3 -m ray.scripts.scripts start --head --num-gpus="$NUM_GPUS" --include-dashboard=false --disable-usage-stats \
  --object-store-memory=2000000000 > "$LOGS/ray-start.txt" 2>&1 || { cat "$LOGS/ray-start.txt"; exit 1; }
trap 'python3 -m ray.scripts.scripts stop --force > /dev/null 2>&1' EXIT
stamp "ray started"

# run REPLICAS LEVELS NAME: serve from REPLICAS replicas, warm every replica (compilation, first CUDA graphs;
# not reported), sweep LEVELS, stop the application.
run() {
  local replicas=$1 levels=$2 name=$3
  python3 -m core serve --cluster --address auto --replicas "$replicas" --model "$MODEL" --port $PORT \
    --max-sessions 64 $SERVE_FLAGS > "$LOGS/serve-$name.txt" 2>&1 &
  local server=$!
  for _ in $(seq 300); do
    grep -q "^serving" "$LOGS/serve-$name.txt" && break
    kill -0 $server 2>/dev/null || break
    sleep 1
  done
  if ! grep -q "^serving" "$LOGS/serve-$name.txt"; then
    stamp "$name: the cluster did not start"; tail -40 "$LOGS/serve-$name.txt"; kill -INT $server; wait $server
    return 1
  fi
  stamp "$name: $(grep '^serving' "$LOGS/serve-$name.txt")"
  timeout 120 python3 -m evals server-load --url $URL --clients $(( 2 * replicas )) --seconds 25 \
    --resolution "$RESOLUTION" --out "$LOGS/warm-$name" > "$LOGS/warm-$name.txt" 2>&1
  stamp "$name: warmed up"
  timeout 400 python3 -m evals server-load --url $URL --clients "$levels" --seconds "$SECONDS_PER_LEVEL" \
    --resolution "$RESOLUTION" --out "$OUT/$name" 2>&1 | grep -v "^INFO" | tail -40
  stamp "$name: swept $levels"
  kill -INT $server
  timeout 60 tail --pid=$server -f /dev/null || kill -KILL $server
  wait $server 2>/dev/null
  grep -E "ERROR|Traceback" "$LOGS/serve-$name.txt" | head -5
}

run 1 "$LEVELS_1" one
run 2 "$LEVELS_2" two

python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
rows, carried = [], {}
for name, replicas in (("one", 1), ("two", 2)):
    path = out / name / "results.json"
    if not path.is_file():
        print(f"{name}: no results")
        continue
    levels = []
    for level in json.loads(path.read_text())["levels"]:
        # In real time: no client sent a chunk more than one chunk (1 s) after it was due.
        late = max((c["late_ms"] or 0.0 for c in level["per_client"]), default=0.0)
        levels.append({**level["summary"], "late_ms": late, "real_time": late <= 1000})
    ok = [s for s in levels if s["p99_ms"] is not None and s["p99_ms"] <= 2000 and not s["skipped"] and not s["failed"]]
    real = [s for s in ok if s["real_time"]]
    carried[replicas] = {
        "p99_2s": max((s["clients"] for s in ok), default=0),
        "p99_2s_real_time": max((s["clients"] for s in real), default=0),
    }
    for s in levels:
        rows.append((replicas, s))
ratio = {
    key: round(carried[2][key] / carried[1][key], 2) if carried.get(1, {}).get(key) and 2 in carried else None
    for key in ("p99_2s", "p99_2s_real_time")
}
(out / "cluster.json").write_text(json.dumps({"carried": carried, "scaling": ratio, "levels": [
    {**s, "replica_count": r} for r, s in rows]}, indent=1))
lines = ["| replicas | streams | p50 ms | p99 ms | max ms | skipped | failed | stream-s per s | most late ms | clients per replica |",
         "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
for r, s in rows:
    spread = ", ".join(f"{n}" for n in s.get("replicas", {}).values())
    lines.append(f"| {r} | {s['clients']} | {s['p50_ms']} | {s['p99_ms']} | {s['max_ms']} | {s['skipped']} "
                 f"| {s['failed']} | {s['stream_s_per_s']} | {s['late_ms']} | {spread} |")
lines += ["", f"streams carried at p99 <= 2 s, none skipped or failed (p99_2s), and also with no client a chunk "
          f"behind real time (p99_2s_real_time): {carried}", f"scaling, 2 replicas against 1: {ratio}"]
(out / "cluster.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
stamp "done"
