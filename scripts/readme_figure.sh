#!/usr/bin/env bash
# The README's figure, from a real run: the quick comparison in examples/quick-comparison.toml
# (high-movement, magnitude, random and high-movement with re-initialisation; seeds 0 and 1; the
# quick preset on real CIFAR-10), its report, and the accuracy plot copied into the docs' assets.
# Usage: bash scripts/readme_figure.sh [STUDY_DIR]   (about 20-30 minutes on a 2-core CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/quick-comparison}"
lth compare --spec examples/quick-comparison.toml --out "$out" --no-energy --no-progress
cp "$out/report/accuracy_vs_remaining.png" docs/assets/quick-comparison.png
cp "$out/report/summary.csv" docs/assets/quick-comparison-summary.csv
echo "wrote docs/assets/quick-comparison.png from $out"
