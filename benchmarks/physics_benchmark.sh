#!/usr/bin/env bash
# The registrations behind docs/results.md, "X-ray physics": tuning cases (seed 5100, used while
# writing the reader and the masked residual) and report cases (seed 5200, never tuned on).
# One registration process at a time, one thread (a shared 2-core CPU).
#   benchmarks/physics_benchmark.sh simulate   # the case folders
#   benchmarks/physics_benchmark.sh evaluate   # what the table reports
#   benchmarks/physics_benchmark.sh second     # cases 3-5 of each preset, where time allowed
#   benchmarks/physics_benchmark.sh before     # the same cases with the library before this work
# LIMIT (default 3): cases evaluated per preset of the 6 simulated (the CPU time we had).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
PY=.venv/bin/python
SR=.venv/bin/sphericalreg
CT=$($PY -c 'from SphericalRegLib.example import example_ct_path; print(example_ct_path())')
MODEL=Resources/Models/chest_example.pt
LIMIT=${LIMIT:-3}
REPORT=${REPORT:-"shutters plain random hard instruments"}
METHODS=${METHODS:-ours,regressor}   # ours-init: from init.json, the intensity side apart from the regressor
TAG=${TAG:-}                          # suffix of the output folders
case "${1:-evaluate}" in
  simulate)
    for p in shutters instruments processed-8bit hard random; do
      [ -d runs/phys_tune/$p ] || $SR simulate --ct "$CT" --n 4 --seed 5100 --physics $p --out runs/phys_tune/$p
    done
    for p in $REPORT; do
      [ -d runs/phys_eval_cases/$p ] || $SR simulate --ct "$CT" --n 6 --seed 5200 --physics $p --out runs/phys_eval_cases/$p
    done ;;
  evaluate)
    for p in $REPORT; do
      $SR evaluate runs/phys_eval_cases/$p --model $MODEL --methods "$METHODS" --limit "$LIMIT" \
        --out runs/phys_eval/$p$TAG --threads 1 --overwrite
    done ;;
  second)  # cases 3-5 of each preset (the evaluate step takes the first LIMIT): folders of links, runs/phys_eval/<p>_b
    for p in $REPORT; do
      B=runs/phys_eval_cases/${p}_b
      mkdir -p "$B"
      for k in 003 004 005; do
        ln -sfn "../$p/case_$k" "$B/case_$k"
        ln -sfn "../$p/case_$k.truth.json" "$B/case_$k.truth.json"
      done
      ln -sfn "../$p/simulation.json" "$B/simulation.json"
      $SR evaluate "$B" --model $MODEL --methods "$METHODS" --out runs/phys_eval/${p}_b$TAG --threads 1 --overwrite
    done ;;
  before)  # the same cases with the library of commit BEFORE_COMMIT (the reader and residual before issue 11's work)
    BEFORE=$(mktemp -d)
    git archive "${BEFORE_COMMIT:-88d692d}" SphericalRegLib | tar -x -C "$BEFORE"
    ROOT=$(pwd)
    for p in ${BEFORE_REPORT:-"shutters random"}; do
      # from outside the repository, so that python -m imports the archived library, not the working tree
      (cd "$BEFORE" && PYTHONPATH="$BEFORE" "$ROOT/$PY" -m SphericalRegLib.cli evaluate "$ROOT/runs/phys_eval_cases/$p" \
        --model "$ROOT/$MODEL" --methods "$METHODS" --limit "$LIMIT" --out "$ROOT/runs/phys_eval/before_$p$TAG" \
        --threads 1 --overwrite)
    done ;;
esac
