#!/usr/bin/env bash
# The best LU-Net recipe (`lunet train --recipe best`) on MNIST and Fashion-MNIST: train, evaluate,
# sample (docs/results.md, "The best recipe"). Each run is resumable: rerunning continues it.
#   DATA=../shared/data bash reproduce/best_recipe.sh [mnist|fashion-mnist ...]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
LUNET=${LUNET:-.venv/bin/lunet}
mkdir -p runs docs/results docs/figures
DATASETS=("$@")
if [ ${#DATASETS[@]} -eq 0 ]; then DATASETS=(mnist fashion-mnist); fi
for ds in "${DATASETS[@]}"; do
  out=runs/$ds-best
  extra=()
  if [ -f "$out/checkpoint.pt" ]; then extra=(--resume); fi
  $LUNET train --dataset "$ds" --data-dir "$DATA" --out "$out" --recipe best "${extra[@]}" --no-progress
  $LUNET evaluate "$out" --data-dir "$DATA" --json "docs/results/$ds-best.json"
  $LUNET sample "$out" --data-dir "$DATA" --out "docs/figures/$ds-best-samples.png" --temperature 1.0
  $LUNET sample "$out" --data-dir "$DATA" --out "docs/figures/$ds-best-samples-T0.7.png" --temperature 0.7
done
