#!/usr/bin/env bash
# Issue 29's GPU figures in one run of about 10 minutes on one lent GPU (H100 or H200), every figure a ratio of two
# sides measured in the same run. Run from the repository root:
#
#     OUT=/tmp/gpu bash bench/gpu_check.sh         # PY=.venv/bin/python by default
#
# Each step has its own time limit (a step cut short still prints its per-round figures to the log). The log and the
# markdown/JSON files land in $OUT; copy the tables into BENCHMARKS.md by hand, with the GPU's name.
#
# What it measures (the targets of issue 29):
#   1. generate vs bare diffusers, SD 1.5 size, 512 px, fp16, batch 1 / 4 / 16, with `generate` beside itself with
#      Euler a's noise drawn per step (diffusers' way) vs pre-drawn and pinned (diffusion/euler_noise.py)  [>= 1.0]
#   2. the trainer vs the valid bare loop, SD 1.5 at 512, fp16 and bf16                                    [>= 0.95]
#   3. the bare training step eager vs channels_last vs torch.compile vs both, SD 1.5 at 512, bf16
#   4. K = 15 LoRAs together vs one at a time, SD 1.5 at 512, fp16 (one GradScaler per group)              [>= 4x]
#   5. B7 features at 600 px, eager vs compiled predict, batch 16 and 32                                  [>= 4x]
set -u
PY=${PY:-.venv/bin/python}
OUT=${OUT:-bench/gpu-out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export HF_HUB_OFFLINE=1

step() {  # step SECONDS MODULE ARGS...: one benchmark, limited to SECONDS, its output appended to the log
    local limit=$1
    shift
    echo "== $(date -u +%H:%M:%S) timeout ${limit}s: $PY -m $*" | tee -a "$LOG"
    timeout "$limit" "$PY" -m "$@" >>"$LOG" 2>&1
    echo "== exit $?" | tee -a "$LOG"
}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$LOG"
step 140 bench.bench_generate --sd15 --device cuda --batch 1 4 16 --images 16 --steps 20 --repeats 1 --no-fuse --no-floor
step 100 bench.bench_lora --sd15 --device cuda --precision fp16 bf16 --steps 6 --rounds 2 --md "$OUT/lora.md"
step 120 bench.bench_lora --compile --compile-model sd15 --device cuda --precision bf16 --steps 6 --rounds 2 --md "$OUT/lora.md"
step 120 bench.bench_lora_together --model sd15 --device cuda --groups 15 --images 2 --repeats 1 --batch-size 1 \
    --resolution 512 --precision fp16 --cache-latents --rounds 1 --md "$OUT/lora_together.md" --json "$OUT/lora_together.json"
step 90 bench.bench_b7 --device cuda --batch 16 32 --no-train --steps 5 --json "$OUT/b7.json"
grep -E '^\|' "$LOG" | tail -n 60
