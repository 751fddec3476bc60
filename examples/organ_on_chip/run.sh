#!/usr/bin/env bash
# The organ-on-chip study on one GPU machine. Fill in data.data and the model paths of
# study.yaml / study_leakage_free.yaml first. Usage: examples/organ_on_chip/run.sh [original|leakage_free]
set -euo pipefail
cd "$(dirname "$0")"
VARIANT=${1:-leakage_free}
if [ "$VARIANT" = leakage_free ]; then  # per-fold LoRAs: the whole-study workflow, one job per fold and class
  cd ../.. && exec snakemake --cores all --configfile examples/organ_on_chip/study_leakage_free.yaml
fi
CONFIG=study.yaml  # the original protocol: one LoRA per class on all images (the report flags the leak)

python -m classify split --config "$CONFIG"                 # folds.json / folds_grouped.json
python -m lora train --config "$CONFIG"  # one LoRA per class (per fold when lora.fold: all)
python -m generate --config "$CONFIG"                        # w1.0/ and w0.8/ trees (per fold when generate.fold: all)
python -m classify realism --config "$CONFIG" --output "runs/$VARIANT-realism"
python -m classify cv --config "$CONFIG" --realism "runs/$VARIANT-realism"
