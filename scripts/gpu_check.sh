#!/usr/bin/env bash
# One prepared GPU check (run where CUDA is present, with lth importable and, for real-data
# parts, LTH_DATA_DIR set): the CUDA-graph engine tests, the suite's tiny studies on CUDA,
# benchmarks/gpu_study.py, then each study given as "NAME:LTH RUN ARGS" on CUDA, each cut at
# RUN_SECONDS (default 240; a cut run keeps its completed rounds). Every stage has its own
# time limit so that one slow stage cannot eat the session's device time.
#   SUITE_SECONDS=0 skips the full suite; GPU_STUDY_ARGS passes flags to gpu_study.py
#   (e.g. "--full-study --parallel-study 8"); GPU_STUDY_SECONDS limits it (default 300).
#   scripts/gpu_check.sh "quick:--preset quick" "seed-r0:--preset seed --rounds 0"
# On a CPU, before a GPU session (checks the script against the code, measures nothing):
#   DEVICE=cpu SUITE_SECONDS=0 GPU_STUDY_ARGS=--smoke scripts/gpu_check.sh "tiny:--preset quick --rounds 1 --train.epochs 1"
# Logs and each run's tables go to $OUT (default /tmp/lth-gpu).
set -u
out=${OUT:-/tmp/lth-gpu}
work=$(mktemp -d)
mkdir -p "$out"
device=${DEVICE:-cuda}
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"

echo "== GPU engine tests (graphed vs eager, graphed study)"
start=$SECONDS
timeout "${ENGINE_TEST_SECONDS:-180}" python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -15
echo "engine tests: $((SECONDS - start)) s"

if [ "${SUITE_SECONDS:-300}" != 0 ]; then
  echo "== test suite, LTH_TEST_DEVICE=cuda"
  start=$SECONDS
  LTH_TEST_DEVICE=cuda timeout "${SUITE_SECONDS:-300}" python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tail -25
  echo "test suite: $((SECONDS - start)) s"
fi

echo "== benchmarks/gpu_study.py ${GPU_STUDY_ARGS:-}"
start=$SECONDS
timeout "${GPU_STUDY_SECONDS:-300}" python3 benchmarks/gpu_study.py --data-dir "${LTH_DATA_DIR:-none}" ${GPU_STUDY_ARGS:-} 2>&1 | tee "$out/gpu_study.txt"
echo "gpu_study: $((SECONDS - start)) s"

for spec in "$@"; do
  name=${spec%%:*}
  echo "== lth run ${spec#*:} --device $device"
  start=$SECONDS
  timeout "${RUN_SECONDS:-240}" python3 -m lth run ${spec#*:} --device "$device" --out "$work/$name" --no-progress
  echo "$name: $((SECONDS - start)) s wall (exit $?)"
  python3 -m lth show "$work/$name"
  cp "$work/$name/rounds.csv" "$out/$name-rounds.csv" 2>/dev/null
  cp "$work/$name/metrics.jsonl" "$out/$name-metrics.jsonl" 2>/dev/null
done
