#!/usr/bin/env bash
# A whole study, as the recipe a user copies:
#   split -> one LoRA per class per fold -> synthetic images at LoRA weights 1.0 and 0.8
#   -> realism scores -> 5-fold cross-validation over every mix -> report.html
#
# Usage: examples/quickstart/study.sh [OUT] [CONFIG]
#   OUT     where everything goes (default: demo)
#   CONFIG  the study file (default: examples/quickstart/study.yaml, the offline smoke settings)
#   DATA=DIR MODEL=DIR|FILE|HUB_ID   use your own images and base model instead of the demo ones
#
# Every stage is skipped when it finished before (marker in OUT/.done/), and each command
# resumes its own unfinished work, so a killed study is re-run with the same command.
# Delete OUT/.done/<stage> to redo a stage after changing its settings.
set -euo pipefail
OUT=${1:-demo}
CONFIG=${2:-$(dirname "$0")/study.yaml}
if [ -x .venv/bin/python ]; then export PATH="$PWD/.venv/bin:$PATH"; fi
DEMO=0; [ -z "${DATA:-}" ] && DEMO=1
CLASSIFIER=()
DATA=${DATA:-$OUT/data}
MODEL=${MODEL:-$OUT/models/tiny-sd}
SPLIT=$OUT/folds.json

stage() {  # stage NAME "what it does" COMMAND...
  local name=$1 what=$2; shift 2
  if [ -f "$OUT/.done/$name" ]; then echo "== $name: done before, skipped ($what)"; return; fi
  echo "== $name: $what"
  local t0=$SECONDS
  "$@"
  mkdir -p "$OUT/.done" && touch "$OUT/.done/$name"
  echo "== $name: finished in $((SECONDS - t0)) s"
}

mkdir -p "$OUT"
if [ "$DEMO" = 1 ]; then
  stage data "writing the demo data set (generated stand-ins for micrographs, not real data)" \
    python -m prompts demo-data "$DATA" --images "${DEMO_IMAGES:-90}" --size 128
  stage model "writing the tiny Stable Diffusion (random weights: a smoke model, not a real one)" \
    python -m lora tiny-model "$MODEL"
  # No ImageNet weights offline: random EfficientNet weights with batch-norm statistics
  # calibrated on the demo images stand in for them (smoke only; real runs use imagenet).
  WEIGHTS=$OUT/models/classifier.weights.h5
  stage weights "calibrating a random EfficientNet on the demo images (offline stand-in for ImageNet weights)" \
    python -m classify calibrate-weights --config "$CONFIG" --data "$DATA" --output "$WEIGHTS"
  CLASSIFIER=(--weights "$WEIGHTS")
fi
stage split "splitting $DATA into folds (grouped as the config says)" \
  python -m classify split --config "$CONFIG" --data "$DATA" --output "$SPLIT"
stage lora "training one LoRA per class on each fold's training images only" \
  accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    -m lora train --config "$CONFIG" --model "$MODEL" --data "$DATA" --split "$SPLIT" --fold all --output "$OUT/lora" \
    --resume latest
stage generate "sampling synthetic images with each fold's LoRAs at every LoRA weight" \
  python -m generate --config "$CONFIG" --model "$MODEL" --lora "$OUT/lora" --data "$DATA" --split "$SPLIT" \
    --fold all --output "$OUT/synthetic"
stage realism "measuring realism (KID and a real-vs-synthetic classifier) per class and LoRA weight" \
  python -m classify realism --config "$CONFIG" --data "$DATA" --synthetic "$OUT/synthetic" --output "$OUT/realism" \
    "${CLASSIFIER[@]}"
stage cv "cross-validating the classifier over every training mix" \
  python -m classify cv --config "$CONFIG" --data "$DATA" --split "$SPLIT" --synthetic "$OUT/synthetic" \
    --realism "$OUT/realism" --output "$OUT/report" "${CLASSIFIER[@]}"
echo "report: $(cd "$OUT/report" && pwd)/report.html"
