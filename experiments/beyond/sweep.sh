#!/usr/bin/env bash
# Regenerates every run of experiments/beyond/README.md: the toy world's reference recipe (64 steps) against the
# same stage with duplicate masking, margin masking, Matryoshka and mined negatives, 3 seeds each, then the tables.
#   bash experiments/beyond/sweep.sh            Env: PY (default .venv/bin/python), OUT (default logs/beyond),
#                                               SEEDS (default 0,1,2), JOBS (runs side by side, default 2),
#                                               ONLY (a grep pattern: run only the settings lines it matches)
set -euo pipefail
export PY=${PY:-.venv/bin/python} OUT=${OUT:-logs/beyond} SEEDS=${SEEDS:-0,1,2} OMP_NUM_THREADS=1
JOBS=${JOBS:-2}
# the reference recipe of experiments/toyworld (lr 4e-4, LoRA r 64 on every projection, T 0.03, batch 32, one
# one-attribute hard negative per row): 1024 text triplets of the training scenes, 2 epochs = 64 steps
RECIPE="experiment=toyworld data.sources.scenes.n=1024"

# mined negatives: the same 1024 rows per seed, their hard negative replaced by the pool candidate the base model
# ranks highest among those at most (1 - m) x the positive's cosine (NV-Retriever's positive-aware rule): m = 0.05
# (sentence-transformers' suggestion) into mined_m05/, m = 0.1 into mined_m10/
for seed in ${SEEDS//,/ }; do
  for margin in 05 10; do
    [[ -f "$OUT/mined_m$margin/seed$seed.jsonl.summary.json" ]] && continue
    "$PY" -m lco.mine source@input=scenes input.n=1024 input.split=train seed="$seed" model=toy_omni_pretrained \
      num_negatives=1 relative_margin=0.$margin out="$OUT/mined_m$margin/seed$seed.jsonl" \
      hydra.run.dir="$OUT/mined_m$margin/run$seed"
  done
done

sweep() {  # job folders named by their overrides, the mined file's path (it holds '/') left out of the name
  "$PY" -m lco.train -m "seed=$SEEDS" logger=none callbacks.model_checkpoint=null hydra.sweep.dir="$OUT/runs" \
    'hydra.sweep.subdir=${hydra.job.override_dirname}' \
    'hydra.job.config.override_dirname.exclude_keys=[data.sources.mined.path]' $RECIPE "$@"
}
export -f sweep
export RECIPE
grep -e "${ONLY:-}" <<LINES | xargs -d '\n' -P "$JOBS" -I{} bash -c 'set -f; sweep $1' _ {}
loss.mask_duplicates=false
loss.mask_duplicates=true
loss.mask_duplicates=true loss.false_negative_margin=0.02
loss.matryoshka_dims=[128,32,8]
~data.sources.scenes +source@data.sources.mined=jsonl data.sources.mined.path=$PWD/$OUT/mined_m05/seed\${seed}.jsonl data.sources.mined.allow_outside_root=true tags=[mined_m05]
~data.sources.scenes +source@data.sources.mined=jsonl data.sources.mined.path=$PWD/$OUT/mined_m10/seed\${seed}.jsonl data.sources.mined.allow_outside_root=true tags=[mined_m10]
LINES
"$PY" experiments/beyond/compare.py "$OUT"
