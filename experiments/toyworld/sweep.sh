#!/usr/bin/env bash
# Regenerates every run of the toy-world study (experiments/toyworld/README.md) and its reports.
#   bash experiments/toyworld/sweep.sh [lightness|controls|methods|scaling ...]   (default: all four)
# Env: PY (python, default .venv/bin/python), OUT (default logs/toyworld), SEEDS (default 0,1,2),
#      JOBS (Hydra multiruns run side by side, default 2, each with one thread),
#      SNAPSHOTS (scaling: a `python -m lco.pretrain ... snapshots=[...]` run folder).
# lightness starts from the reference recipe (64 steps: data.sources.scenes.n=1024); controls, methods and scaling
# use the stage this study chose, which conf/data/toyworld.yaml holds (16 steps: n=256).
set -euo pipefail
export PY=${PY:-.venv/bin/python} OUT=${OUT:-logs/toyworld} SEEDS=${SEEDS:-0,1,2} OMP_NUM_THREADS=1
JOBS=${JOBS:-2}

# one Hydra multirun into $OUT/<dir>, job folders named by their overrides (so calls can share a sweep folder;
# a later hydra.sweep.subdir=... in the arguments wins)
sweep() {
  local dir=$1; shift
  "$PY" -m lco.train -m "seed=$SEEDS" logger=none callbacks.model_checkpoint=null \
    hydra.sweep.dir="$OUT/$dir" 'hydra.sweep.subdir=${hydra.job.override_dirname}' "$@"
}
export -f sweep

# run "sweep <dir> experiment=toyworld <overrides of the line>" for each line on stdin, JOBS at a time; a line is
# split on spaces only (no globbing, no tilde or $ expansion)
sweeps() {
  xargs -d '\n' -P "$JOBS" -I{} bash -c 'set -f; sweep "$1" experiment=toyworld $2' _ "$1" {}
}

lightness() {  # one factor at a time around the reference stage: lr 4e-4, r 64, T 0.03, all layers, 64 steps
  sweeps lightness <<'LINES'
data.sources.scenes.n=1024
data.sources.scenes.n=1024 optim.optimizer.lr=1e-4,3e-5
data.sources.scenes.n=256,2048
data.sources.scenes.n=1024 method.r=4 method.alpha=8
data.sources.scenes.n=1024 method.r=16 method.alpha=32
data.sources.scenes.n=1024 method.layers=[2,3],[0,1]
data.sources.scenes.n=1024 loss.temperature=0.1,0.01
data.sources.scenes.n=1024 data.sources.scenes.templates=2
LINES
  "$PY" -m lco.report "$OUT/lightness"
}

controls() {  # the chosen stage, the image-text positive control and the random-init control, same budget;
  # then the positive control at the reference budget (64 steps) and at 128 steps
  sweeps controls <<'LINES'
experiment=toyworld
experiment=toyworld_positive
experiment=toyworld_random
experiment=toyworld_positive data.sources.scenes.n=1024
experiment=toyworld_positive data.sources.scenes.n=2048
LINES
  "$PY" -m lco.report "$OUT/controls"
  # in distribution: the same 128-step stages scored on the 267 training combinations instead of held-out ones
  sweeps controls_train_scenes <<'LINES'
data.sources.scenes.n=2048 data.probe.split=train
experiment=toyworld_positive data.sources.scenes.n=2048 data.probe.split=train
LINES
  "$PY" -m lco.report "$OUT/controls_train_scenes"
}

methods() {  # the four methods of the paper's ablation, in miniature, at the chosen stage; CLIP-style trains on
  # image-text pairs (the paper's ~800K-pair multimodal CL), the others on text
  sweeps methods <<'LINES'
method=lora
method=full
method=linear_probe
experiment=toyworld_positive method=clip
LINES
  "$PY" -m lco.report "$OUT/methods"
}

scaling() {  # the chosen stage on pretraining snapshots of rising generative quality
  local p
  for p in "$SNAPSHOTS"/model_step* "$SNAPSHOTS"/model; do  # paths hold '/': name job folders by snapshot
    echo "model.path=$p hydra.sweep.subdir=$(basename "$p")_\${hydra.job.num}"
  done | sweeps scaling
  "$PY" -m lco.report "$OUT/scaling"
}

stages=${*:-lightness controls methods scaling}
if [[ " $stages " == *" scaling "* && ! -d "${SNAPSHOTS:-}/model" ]]; then
  echo "sweep.sh: scaling needs SNAPSHOTS=<a python -m lco.pretrain run folder with model/ and model_step*/>" >&2
  exit 2
fi
for stage in $stages; do "$stage"; done
