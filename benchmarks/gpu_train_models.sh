#!/usr/bin/env bash
# The ablation models of docs/results.md, trained side by side on one GPU with the shipped model's
# recipe (small preset, seed 0) and one switch each; plus the shipped recipe at batch 16.
# usage: benchmarks/gpu_train_models.sh CT OUTDIR [SECONDS_LIMIT] [--resume]
# A run stopped by the limit keeps its last checkpoint; run again with --resume to finish it.
set -u
CT=$1; OUT=$2; LIMIT=${3:-0}; shift $(( $# < 3 ? $# : 3 )); EXTRA=("$@")
mkdir -p "$OUT"
train() {
  local name=$1; shift
  OMP_NUM_THREADS=3 timeout "$LIMIT" python3 -m SphericalRegLib.cli train --ct "$CT" --out "$OUT/$name.pt" \
    --config small --seed 0 --device cuda "$@" "${EXTRA[@]}" >> "$OUT/$name.log" 2>&1 &
}
train se3 --metric se3
train euclidean --space euclidean
train hyperbolic --space hyperbolic
train plain --features plain
train main-b16 --batch-size 16
wait
for f in "$OUT"/*.log; do echo "== $f"; tr '\r' '\n' < "$f" | grep -v '^\s*$' | tail -4; done
