#!/usr/bin/env bash
# The main job: MISA and the LF-DNN floor on the 229 real MOSI clips (all three modalities),
# 5 folds grouped by video, then their results tables. Minutes on 2 CPU cores.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
data="${MSAKIT_DATA:-$here/../../shared/data}"
pkl="$data/mosi/word_aligned_valid.pkl"
if [ ! -f "$pkl" ]; then
  echo "real data not found at $pkl: set MSAKIT_DATA to the folder holding mosi/" >&2
  exit 2
fi
out="${MSAKIT_RUNS:-runs}"
# 6 epochs per fold keeps the job to minutes on a CPU; extra arguments are passed on
# (e.g. `bash examples/main.sh --epochs 30 --seeds 1 2 3` for the full budget).
for model in misa lf_dnn; do
  msakit train "$model" --data "$pkl" --folds 5 --epochs 6 --output-dir "$out" \
    --no-progress "$@"
done
