#!/usr/bin/env bash
# Issue 19's device check, about 7 minutes on one H100/H200 (prepared 2026-11-30, not yet run: no
# device was lent to those sessions). Omni-3B thinker (random weights, published shapes) on All-NLI-shaped prompts,
# padded vs packed (step.pack), each without and with a shared chat prefix (step.share_prefix), at 33 triplets per
# step and at 1056 through GradCache, all in one process (8 scenarios); writes
# gpu_results.{md,json} (GPU kind, versions, date, every figure) and the log under $OUT (the device tool's folder)
# or experiments/bench/issue19. Needs lco importable beside a CUDA torch: `pip install --no-deps -e .`, and carried
# wheels for what the device image lacks (experiments/bench/gpu_h100.md, "How these ran").
# Usage, from the repo root: bash experiments/bench/device_check_19.sh
set -euo pipefail
out=${OUT:-experiments/bench/issue19}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
} | tee "$out/machine.txt"
python -m lco.bench.gpu size=omni_3b lengths=allnli 'pack=[false,true]' 'share_prefix=[false,true]' steps=4 warmup=1 \
    output_dir="$out" 2>&1 | tee "$out/log.txt"
# regional torch.compile on the packed path at 33 triplets (the first, untimed steps compile)
python -m lco.bench.gpu size=omni_3b lengths=allnli 'pack=[true]' global_batch=null compile=true steps=5 warmup=2 \
    output_dir="$out/compiled" 2>&1 | tee "$out/log_compiled.txt"
