#!/usr/bin/env bash
# Issue 20's device check, about 6 minutes on one H200 (prepared 2026-12-01, not yet run: no device was lent to
# that session). The GPU bench at two Qwen3 shapes from their published configs, random weights, bf16, LoRA r=64
# (experts not adapted), All-NLI-shaped prompts, padded and packed at 33 triplets per step (no GradCache):
# Qwen3-VL-8B and the Qwen3-Omni-30B-A3B thinker (~63 GB of bf16 weights: an 80 GB GPU is tight, an H200 is not).
# Writes gpu_results.{md,json} per shape and the logs under $OUT (the device tool's folder) or
# experiments/bench/issue20. Needs lco importable beside a CUDA torch (see device_check_19.sh).
# Usage, from the repo root: bash experiments/bench/device_check_20.sh
set -euo pipefail
out=${OUT:-experiments/bench/issue20}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
} | tee "$out/machine.txt"
for size in qwen3_vl_8b qwen3_omni_30b_a3b; do
  python -m lco.bench.gpu size=$size lengths=allnli 'pack=[false,true]' global_batch=null steps=4 warmup=1 \
      output_dir="$out/$size" 2>&1 | tee "$out/log_$size.txt"
done
