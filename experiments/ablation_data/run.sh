#!/usr/bin/env bash
# The data ablation end to end (experiments/ablation_data/README.md): a text-only run, a text + multimodal run,
# the soup of their two adapters, its export as a plain transformers / sentence-transformers folder, and the report.
#   MM94K=/data/mm94k.jsonl bash experiments/ablation_data/run.sh
# TEXT_ARGS / MM_ARGS replace each run's data overrides, EXTRA is appended to both runs (a dry run on this
# machine: see tests/test_ablation_data.py). Outputs: $ROOT/{text_only,text_mm,soup}/...
set -euo pipefail
PY=${PY:-python}
ROOT=${ROOT:-logs/ablation_data/$(date +%F_%H-%M-%S)}
read -r -a text_args <<< "${TEXT_ARGS:-data=allnli}"
read -r -a mm_args <<< "${MM_ARGS:-data=mix data.sources.mm94k.path=${MM94K:?set MM94K to the 94K multimodal JSONL}}"
read -r -a extra <<< "${EXTRA:-}"

"$PY" -m lco.train experiment=ablation_data "${text_args[@]}" "hydra.run.dir=$ROOT/text_only" "${extra[@]}"
"$PY" -m lco.train experiment=ablation_data "${mm_args[@]}" "hydra.run.dir=$ROOT/text_mm" "${extra[@]}"
"$PY" -m lco.soup "adapters=[$ROOT/text_only/adapter,$ROOT/text_mm/adapter]" "out=$ROOT/soup/adapter" \
  "hydra.run.dir=$ROOT/soup"
"$PY" -m lco.export "checkpoint=$ROOT/soup/adapter" "out=$ROOT/soup/export" "hydra.run.dir=$ROOT/soup"
echo "ablation_data: runs, soup and export under $ROOT"
