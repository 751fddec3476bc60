#!/usr/bin/env bash
# Spheroid imbalance: baselines against synthetic balancing at 10 % and 1 % minority.
# Fill in the paths of study.yaml first. Usage: examples/spheroid_imbalance/run.sh
set -euo pipefail
cd "$(dirname "$0")"
python -m classify split --config study.yaml
python -m lora train --config study.yaml
python -m generate --config study.yaml
for pct in 10 1; do
  frac=$(python -c "print($pct / 100)")
  python -m classify cv --config study.yaml --minority-fraction "$frac" --output "runs/spheroid/report_${pct}pct"
  python -m classify cv --config study.yaml --minority-fraction "$frac" --mixes real --class-weights \
    --output "runs/spheroid/report_${pct}pct_class_weights"
done
