#!/usr/bin/env bash
# The main job: the text-only floor (LF-DNN on the transcript alone) and the five papers' models
# (SAGE-Net, MMILN, DMD, LRCMT, MISA) on the 229 MOSI clips shipped with msakit (mosi-demo, all
# three modalities), 5 folds grouped by video, then ONE leaderboard: each model's mean ± std (n)
# and its paired difference to the text-only floor with a 95 % CI and p (msakit compare's cluster
# bootstrap / permutation over videos), the majority-class rate of these clips and which
# differences are inside the noise. Needs no data download.
#
# Budgets: every model but LRCMT keeps the language model (all-MiniLM-L6-v2) frozen, so its hidden
# states are computed once per clip and read back from the on-disk cache (train.lm_cache=auto,
# ~/.cache/msakit/lm; no text augmentation runs here) and an epoch costs only the fusion layers.
# LRCMT trains LoRA adapters in the LM (no cache possible), so it gets the smallest budget. Each
# model runs up to its epoch cap with early stopping on the validation loss (patience); caps and
# learning rates were chosen from the validation curves (epochs.csv), never from test numbers.
# Extra arguments go to every msakit train (e.g. `--seeds 1 2 3`).
set -euo pipefail
data="${MSAKIT_DATA:-mosi-demo}"
out="${MSAKIT_RUNS:-runs}/main-$(date +%Y%m%d-%H%M%S)"
common=(--data "$data" --folds 5 --output-dir "$out" --no-progress)
frozen=(--set model.freeze_language_model=true)

train() {  # train NAME MODEL [--set ...]
  local name=$1 model=$2; shift 2
  echo "== $name"
  msakit train "$model" "${common[@]}" --set run.name="$name" "$@" "${EXTRA[@]}"
}
EXTRA=("$@")
start=$SECONDS
train text-floor lf_dnn "${frozen[@]}" --set 'model.modalities=[text]' --set train.epochs=60 --set train.patience=10 --set train.lr=3e-3
train sagenet    sagenet "${frozen[@]}" --set train.epochs=20 --set train.patience=6
train mmiln      mmiln   "${frozen[@]}" --set train.epochs=20 --set train.patience=6
train dmd        dmd     "${frozen[@]}" --set train.epochs=20 --set train.patience=6 --set train.grad_accumulation=1 --set train.lr=1e-3
train misa       misa    "${frozen[@]}" --set train.epochs=20 --set train.patience=6 --set train.lr=1e-3
train lrcmt      lrcmt   --set train.epochs=8 --set train.patience=3
echo "trained in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
msakit leaderboard "$out/text-floor" "$out"/{sagenet,mmiln,dmd,lrcmt,misa} --output-dir "$out"
echo "total $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
