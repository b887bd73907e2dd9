#!/usr/bin/env bash
# The main job: MISA and the LF-DNN floor on the 229 MOSI clips shipped with msakit (mosi-demo,
# all three modalities), 5 folds grouped by video, then their results tables. Needs no data
# download. Minutes on 2 CPU cores.
set -euo pipefail
data="${MSAKIT_DATA:-mosi-demo}"
out="${MSAKIT_RUNS:-runs}"
# 6 epochs per fold keeps the job to minutes on a CPU; extra arguments are passed on
# (e.g. `bash examples/main.sh --epochs 30 --seeds 1 2 3` for the full budget).
for model in misa lf_dnn; do
  msakit train "$model" --data "$data" --folds 5 --epochs 6 --output-dir "$out" \
    --no-progress "$@"
done
