#!/usr/bin/env bash
# The organ-on-chip study on one GPU machine. Fill in data.data and the model paths of
# study.yaml / study_leakage_free.yaml first. Usage: examples/organ_on_chip/run.sh [original|leakage_free]
set -euo pipefail
cd "$(dirname "$0")"
VARIANT=${1:-leakage_free}
CONFIG=study.yaml; [ "$VARIANT" = leakage_free ] && CONFIG=study_leakage_free.yaml

python -m classify split --config "$CONFIG"                 # folds.json / folds_grouped.json
python -m lora train --config "$CONFIG"  # one LoRA per class (per fold when lora.fold: all)
python -m generate --config "$CONFIG"                        # w1.0/ and w0.8/ trees (per fold when generate.fold: all)
python -m classify realism --config "$CONFIG" --output "runs/$VARIANT-realism"
python -m classify cv --config "$CONFIG" --realism "runs/$VARIANT-realism"
