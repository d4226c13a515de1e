#!/usr/bin/env bash
# Run GPU scripts in one device call and bring back one archive: the device returns a limited number of
# files, and a benchmark writes dozens (a folder per run, plots, logs). Each script runs with OUT set to
# $OUT/NAME, its output is packed into $OUT/NAME.tgz and its folder removed; a summary of each script's
# exit status and time goes to $OUT/steps.txt. Scripts run in the order given, each whatever the
# previous one's status.
# Usage (on the device, repo root):
#   bash evals/scripts/gpu_run.sh "soak:bash evals/scripts/gpu_soak.sh" "fp8:bash evals/scripts/gpu_fp8.sh"
# or with extra environment for one script:  "fp8:BUDGET=300 bash evals/scripts/gpu_fp8.sh"
# Unpack here:  tar xzf files_at/NAME.tgz -C somewhere
set -uo pipefail
ROOT=${OUT:-runs/gpu}
mkdir -p "$ROOT"
for spec in "$@"; do
  name=${spec%%:*}
  command=${spec#*:}
  started=$SECONDS
  mkdir -p "$ROOT/$name"
  echo "== $name: $command" | tee -a "$ROOT/steps.txt"
  OUT="$ROOT/$name" bash -c "env $command" > "$ROOT/$name/console.log" 2>&1
  status=$?
  tail -25 "$ROOT/$name/console.log"
  tar czf "$ROOT/$name.tgz" -C "$ROOT" "$name" && rm -rf "${ROOT:?}/$name"
  echo "== $name: exit $status after $((SECONDS - started)) s" | tee -a "$ROOT/steps.txt"
done
