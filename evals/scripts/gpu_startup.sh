#!/usr/bin/env bash
# Startup on one GPU (issue 18): the gpu tests of the background compilation, then `evals startup` with
# random 7B weights written to the machine's local disk: one cold run (empty compile caches) and two
# warm ones, 40 one-second HD chunks each, paced as a live feed.
# Usage (on a GPU machine, repo root; wheels per gpu_env.sh in .whl/): bash evals/scripts/gpu_startup.sh
#
# APP=1 times the desktop app too (`--app`: `python -m app --start` offscreen, cold and warm, after the
# CLI's runs). The app needs PySide6, which the image lacks (the Qt bundle in .whl-qt/, built here by
# `python evals/scripts/qt_bundle.py`), and PyAV (.whl-media/); with .whl they are more than the 64 MiB a
# call carries. So .whl-media travels first, in a call of its own, and stays on the machine (an ignored
# folder is kept there between calls) for the next call, made while the machine is still warm:
#   1. carry [".whl-media"], command `true`
#   2. carry [".whl", ".whl-qt"], command `APP=1 CHUNKS=20 TESTS=0 bash evals/scripts/gpu_startup.sh`
# (CHUNKS: chunks per run, 40 by default; 20 still reach the compiled path and keep six runs inside one
# call's 10 minutes. TESTS=0 leaves out the gpu tests. DROP=1 evicts the weights from the page cache
# before every run, so each reads them from disk: the start after a boot, where core/prefetch.py's
# reading ahead counts; without it every run after the disk-rate probe finds them in memory.)
set -uo pipefail
source evals/scripts/gpu_env.sh
OUT=${OUT:-runs/gpu-startup}
mkdir -p "$OUT"
WEIGHTS=${WEIGHTS:-/tmp/streamvlm-random-7b}
CHUNKS=${CHUNKS:-40}
APP_RUNS=()
DROP_RUNS=()
if [ "${DROP:-0}" = 1 ]; then DROP_RUNS=(--drop-page-cache); fi
if [ "${APP:-0}" = 1 ]; then
  if ! python3 -c "import av, PySide6.QtWidgets" 2>/dev/null; then
    echo "error: APP=1 needs PyAV (.whl-media, carried in the call before) and the Qt bundle (.whl-qt); see this script's header" | tee "$OUT/startup.txt"
    exit 2
  fi
  APP_RUNS=(--app)
fi
rm -rf "$WEIGHTS"
if [ "${TESTS:-1}" = 1 ]; then
  python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_warmup.py tests/test_decode_step.py 2>&1 | tail -15 | tee "$OUT/pytest_warmup.txt"
fi
python3 -m evals startup --random-weights 7b --weights-dir "$WEIGHTS" --warm 2 --chunks "$CHUNKS" \
  --device cuda "${APP_RUNS[@]}" "${DROP_RUNS[@]}" --out "$OUT/startup" 2>&1 | grep -v "^INFO" | tail -30 | tee "$OUT/startup.txt"
