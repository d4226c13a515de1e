#!/usr/bin/env bash
# GPU cost of the benchmarks, measured (docs/evals.md, "GPU cost"): one device-tool call on one H200,
# random Qwen2.5-VL-7B weights (core.builders.build_random_model; no checkpoint, no data), under
# 6 minutes. Run from the repository root:
#
#   run(kind="nvidia-h200", carry=[".whl"], timeout_s=420, command="bash evals/scripts/gpu_evals_cost.sh")
#
# 1. offline QA: seconds per question for OVO-Bench and each VQA benchmark at their frame budgets
#    (our sampling rules and qwen-vl-utils' pixel budget, evals/offline_qa.py), on synthetic frames
#    at the datasets' real resolutions and a few clip lengths each (the fixtures' clips are tiny);
#    PyAV is not needed (frames are drawn in memory), so only .whl's transformers stack travels.
# 2. commentary: GPU seconds per second of video for inf-stream and livesports-cc, which stream
#    through the engine: `evals efficiency` over 40 s of 1280x720 video at 2 FPS, 20 tokens a reply.
#
# Each step is its own process with its own time limit; a failed step is recorded in its JSON and
# the others still run. Writes $OUT/evals_cost/{offline_qa.json,commentary/,cost.json,cost.md}.
# Smoke run on a CPU with the tiny model: PRESET=tiny DEVICE=cpu SHORT=1 OUT=/tmp/x bash evals/scripts/gpu_evals_cost.sh
set -uo pipefail
out=${OUT:-runs/gpu}/evals_cost
mkdir -p "$out"
source evals/scripts/gpu_env.sh
export PRESET=${PRESET:-7b} DEVICE=${DEVICE:-auto} SHORT=${SHORT:-0} COST_OUT=$out
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1 || true

# 1. Seconds per question (model built once; each question timed after a warm-up; results written as they come).
timeout 230 python3 - <<'EOF' 2>&1 | grep -v "━" | tail -40
import json, math, os, time, traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from core.builders import build_random_model
from evals import ovobench, vlmevalkit, vqa
from evals.offline_qa import OVO_ANSWERS, OVO_PREFIX, FrameBudget, OfflineQA

out = Path(os.environ["COST_OUT"])
short = os.environ["SHORT"] == "1"


def frame_count(seconds: float, fps: float | None, cap: int | None, nframe: int | None) -> int:
    """How many frames our sampling takes of a clip (evals/video.py sample_times: floor(span * fps), capped)."""
    if nframe:
        return nframe
    return min(max(1, math.floor(seconds * fps + 1e-6)), cap)


# (benchmark, frame rule, resolution WxH of its videos, clip lengths in seconds: a handful of questions)
ovo = {"fps": ovobench.FPS, "cap": ovobench.MAX_FRAMES, "nframe": None}
vqa_rule = {name: {"fps": r.get("fps"), "cap": vlmevalkit.MAX_FRAMES, "nframe": r.get("nframe")}
            for name, r in vqa.BENCHMARKS.items()}
PLAN = [
    ("ovobench", ovo, (1280, 720), [20, 60, 240]),  # real-time questions are short clips; backward long
    ("Video-MME", vqa_rule["Video-MME"], (640, 360), [90, 600, 2400]),  # short / medium / long videos
    ("MVBench", vqa_rule["MVBench"], (480, 360), [10, 20]),  # always 64 frames
    ("LongVideoBench", vqa_rule["LongVideoBench"], (854, 480), [60, 480, 1800]),
]
if short:
    PLAN = [(b, r, (112, 64), [4, 8]) for b, r, _, _ in PLAN]

began = time.perf_counter()
model = build_random_model(os.environ["PRESET"], device=os.environ["DEVICE"], dtype="bfloat16" if torch.cuda.is_available() else "float32")
load_s = time.perf_counter() - began
budget = FrameBudget() if not short else FrameBudget.capped(4 * 28 * 28)
qa = OfflineQA(model, budget)
question = ovobench.choice_prompt("What happens just before the end?", ["a", "b", "c", "d"])
rng = np.random.default_rng(0)
sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
report = {"model": model.name, "device": str(model.device), "load_s": round(load_s, 1), "budget": asdict(budget),
          "benchmarks": {}}
first = True
for bench, rule, (w, h), lengths in PLAN:
    rows = []
    for seconds in lengths:
        n = frame_count(seconds, **rule)
        try:
            frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]
            fps = n / seconds
            if first:  # warm-up: kernels, allocator
                qa.answer(frames[: min(n, 8)], fps, question, OVO_ANSWERS, OVO_PREFIX)
                first = False
            sync()
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            answer = qa.answer(frames, fps, question, OVO_ANSWERS, OVO_PREFIX)
            sync()
            s = time.perf_counter() - t
            peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
            rows.append({"clip_s": seconds, "frames": n, "resolution": f"{w}x{h}", "vision_tokens": answer.vision_tokens,
                         "seconds": round(s, 3), "peak_gib": round(peak, 1) if peak else None})
        except Exception as exc:  # e.g. out of memory: recorded, the next question still runs
            rows.append({"clip_s": seconds, "frames": n, "error": f"{type(exc).__name__}: {exc}"[:300]})
            traceback.print_exc()
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
        print(bench, rows[-1], flush=True)
        report["benchmarks"][bench] = rows
        (out / "offline_qa.json").write_text(json.dumps(report, indent=1))
EOF

# 2. Commentary benchmarks: the engine's seconds per 1-s chunk at HD (GPU seconds per second of video).
if [ "$SHORT" = 1 ]; then secs=4; res=112x64; else secs=40; res=1280x720; fi
timeout 100 python3 -m evals efficiency --random-weights "$PRESET" --device "$DEVICE" --seconds "$secs" \
  --resolution "$res" --fps 2 --tokens 20 --policies streaming --out "$out/commentary" 2>&1 | grep -v "━" | tail -15

# 3. The table (from whatever the steps wrote).
python3 - <<'EOF'
import json, os
from pathlib import Path

out = Path(os.environ["COST_OUT"])
cost = {"gpu": (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").exists() else None}
lines = ["| benchmark | clip s | frames | vision tokens | s per question | peak GiB |", "|---|---|---|---|---|---|"]
qa = out / "offline_qa.json"
if qa.exists():
    cost["offline_qa"] = json.loads(qa.read_text())
    for bench, rows in cost["offline_qa"]["benchmarks"].items():
        for r in rows:
            lines.append(f"| {bench} | {r['clip_s']} | {r['frames']} | {r.get('vision_tokens', '-')} | "
                         f"{r.get('seconds', r.get('error'))} | {r.get('peak_gib', '-')} |")
else:
    lines.append("| offline QA step wrote nothing (see the log) | | | | | |")
eff = out / "commentary" / "results.json"
if eff.exists():
    cost["commentary"] = json.loads(eff.read_text())
    lines += ["", "commentary (inf-stream, livesports-cc): `evals efficiency` results in commentary/results.json "
              "(ms per 1-s chunk / 1000 = GPU s per s of video)"]
else:
    lines += ["", "commentary step wrote nothing (see the log)"]
(out / "cost.json").write_text(json.dumps(cost, indent=1))
(out / "cost.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
