#!/usr/bin/env bash
# Chain the stages by hand on the built-in dataset: what `r2scp demo` does for one recovery method.
# Usage: bash examples/pipeline.sh [WORK_DIR]
set -euo pipefail
work=${1:-runs/example}

r2scp synth "$work/data" --videos 400 --seed 0
r2scp extract "$work/data" --out "$work/features.h5" --encoder handcrafted --segments 8
r2scp build-bank "$work/features.h5" --out "$work/bank" --keys bind --neighbours 16
r2scp train-experts "$work/features.h5" --bank "$work/bank" --out "$work/experts" --recovery cmr+cap --seed 0
r2scp train-router "$work/experts" --out "$work/router" --seed 0
for missing in none audio visual; do
  r2scp eval "$work/router" --missing "$missing" --out "$work/eval-$missing"
done
r2scp report "$work"/eval-* --out "$work/report"
