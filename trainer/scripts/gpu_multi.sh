#!/usr/bin/env bash
# The multi-GPU run of docs/training.md, on every GPU of one host, in two device-tool calls:
#   bash trainer/scripts/gpu_multi.sh 1   # full-size random 7B, real-length fixture: 24 steps, export, core streams
#   bash trainer/scripts/gpu_multi.sh 2   # the same run killed after its step-12 checkpoint, resumed; 1 vs N GPU bench
# Full size: all 28 decoder layers, FSDP2, bf16, activation checkpointing, frozen vision tower,
# ~19k-token samples (24 s of 1280x720 at 2 FPS), 2 samples per GPU per step (accumulation 2).
set -uo pipefail
part=${1:?part 1 or 2}
out=${OUT:-runs/gpu-multi}
work=${WORK:-runs/gpu-work}  # ignored by git; kept between the two calls while the machine is warm
mkdir -p "$out" "$work"
source evals/scripts/gpu_env.sh
N=$(nvidia-smi -L | wc -l)
common=(--config trainer/configs/stage1.yaml model.path="$work/r7b" data.dir="$work/fx"
  "data.patterns=[train_s12w24_*]" precision.master=bfloat16 batch.global_samples=$((2 * N))
  schedule.epochs=8 run.max_steps=24 run.log_every=1 run.keep_last=1 data.num_workers=3
  optim.lr=1e-4)  # bf16 master weights: a 1e-5 step on random weights would round away
run() { python3 -m torch.distributed.run --nproc-per-node "$N" -m trainer "${common[@]}" "$@"; }

if [ "$part" = 1 ]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpus.txt"
  df -h . | tee "$out/disk.txt"
  rm -rf "$work/r7b"; python3 trainer/scripts/random_7b.py "$work/r7b" 2>&1 | tail -1
  python3 -c "from trainer.fixture import make_fixture as m; m('$work/fx', videos=2, seconds=60, width=1280, height=720, window=24, stride=12, clip=30)"
  start=$(date +%s)
  run run.out="$work/runC" run.save_every=1000 run.export=true > "$out/runC.log" 2>&1
  echo "run C rc=$? in $(( $(date +%s) - start )) s"; tail -5 "$out/runC.log"
  cp "$work/runC/metrics.jsonl" "$out/runC_metrics.jsonl"
  rm -rf "$work/runC/checkpoints"
  python3 -m core run --model "$work/runC/export" --source "$work/fx/videos/match_00.mp4" --device cuda \
    --duration 8 --jsonl "$out/core_stream.jsonl" > "$out/core_stream.log" 2>&1
  echo "core stream rc=$?: $(wc -l < "$out/core_stream.jsonl") lines"
else
  start=$(date +%s)
  run run.out="$work/runAB" run.save_every=12 run.export=false > "$out/runA.log" 2>&1 &
  pid=$!
  until ls "$work"/runAB/checkpoints/step_*12/COMPLETE > /dev/null 2>&1 || ! kill -0 $pid 2> /dev/null; do sleep 1; done
  pkill -9 -f "trainer.*runAB"; wait $pid
  echo "run A killed after its step-12 checkpoint, $(( $(date +%s) - start )) s"
  cp "$work/runAB/metrics.jsonl" "$out/runA_metrics.jsonl"
  run run.out="$work/runAB" run.save_every=12 run.export=false > "$out/runB.log" 2>&1
  echo "run B (resumed) rc=$? at $(( $(date +%s) - start )) s"; tail -3 "$out/runB.log"
  cp "$work/runAB/metrics.jsonl" "$out/runAB_metrics.jsonl"
  rm -rf "$work/runAB"
  OUT="$out/bench_1gpu" python3 -m trainer.bench_step --layers 10 --accumulation 2 --phases > "$out/bench_1gpu.log" 2>&1
  OUT="$out/bench_${N}gpu" python3 -m torch.distributed.run --nproc-per-node "$N" -m trainer.bench_step \
    --layers 10 --accumulation 2 --phases > "$out/bench_${N}gpu.log" 2>&1
  grep -h "s/step" "$out"/bench_*gpu.log
fi
