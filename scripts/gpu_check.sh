#!/usr/bin/env bash
# One prepared GPU check (run where CUDA is present, with LTH_DATA_DIR set and lth importable):
# the test suite with its tiny study on CUDA, then each study given as "NAME:LTH RUN ARGS" on
# CUDA, each cut at RUN_SECONDS (default 240) — a cut run keeps its completed rounds.
# Logs and each run's tables go to $OUT (default /tmp/lth-gpu).
#   scripts/gpu_check.sh "quick:--preset quick" "seed-r0:--preset seed --rounds 0"
set -u
out=${OUT:-/tmp/lth-gpu}
work=$(mktemp -d)
mkdir -p "$out"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

echo "== test suite, LTH_TEST_DEVICE=cuda"
start=$SECONDS
LTH_TEST_DEVICE=cuda timeout 300 python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tail -25
echo "test suite: $((SECONDS - start)) s"

for spec in "$@"; do
  name=${spec%%:*}
  echo "== lth run ${spec#*:} --device cuda"
  start=$SECONDS
  timeout "${RUN_SECONDS:-240}" python3 -m lth run ${spec#*:} --device cuda --out "$work/$name" --no-progress
  echo "$name: $((SECONDS - start)) s wall (exit $?)"
  python3 -m lth show "$work/$name"
  cp "$work/$name/rounds.csv" "$out/$name-rounds.csv" 2>/dev/null
  cp "$work/$name/metrics.jsonl" "$out/$name-metrics.jsonl" 2>/dev/null
done
