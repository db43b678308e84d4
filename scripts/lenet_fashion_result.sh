#!/usr/bin/env bash
# The Fashion-MNIST comparison in results/lenet-fashion-mnist/: Frankle & Carbin's LeNet-300-100
# protocol (examples/lenet-fashion-mnist.toml: magnitude + θ0, random re-initialisation, random
# pruning, high-movement; seeds 0, 1, 2; 10 rounds), trained by two one-thread processes side by
# side, each training 3 seeds stacked (benchmarks/lenet_throughput.py measures the ways to use 2 cores). The processes
# share the study folder: each claims the cells the other is not running, and a rerun skips
# finished cells and resumes interrupted ones. The report (without checkpoints) is copied into
# results/, its accuracy figure into docs/assets/.
# Usage: bash scripts/lenet_fashion_result.sh [STUDY_DIR] [DATA_DIR]   (about 3 hours on 2 quiet cores)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/lenet-fashion-mnist}"
data="${2:-/usr/share/datasets}"
for worker in 1 2; do
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 lth compare --spec examples/lenet-fashion-mnist.toml --data-dir "$data" --out "$out" \
    --parallel 3 --no-energy --no-progress --no-report > "$out.worker-$worker.log" 2>&1 &
  sleep 20  # the first claims its cell before the second looks
done
wait
lth report "$out" --out results/lenet-fashion-mnist --baseline "magnitude(layer) / init"   # the winning ticket, paired with each control
cp results/lenet-fashion-mnist/accuracy_vs_remaining.png docs/assets/lenet-fashion-mnist.png
echo "wrote results/lenet-fashion-mnist/ and docs/assets/lenet-fashion-mnist.png from $out"
