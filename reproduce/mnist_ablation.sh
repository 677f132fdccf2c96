#!/usr/bin/env bash
# One change at a time to `lunet train --recipe best` on MNIST, every variant under the same budget of
# training seconds (--time-budget: the cosine schedule laid out over it), evaluated by `lunet evaluate`
# (docs/results.md, "The best recipe, further"). Each run resumes when rerun.
#   DATA=../shared/data BUDGET=600 bash reproduce/mnist_ablation.sh [VARIANT ...]
# VARIANT is one of the names below (default: all of them, in this order). DATASET=fashion-mnist
# runs the same variants on Fashion-MNIST (runs/fashion-mnist-ablation-*, docs/results/fashion-mnist-ablation/).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
BUDGET=${BUDGET:-600}
DATASET=${DATASET:-mnist}
LUNET=${LUNET:-.venv/bin/lunet}
declare -A CHANGE=(
  [recipe]=""
  [bins-16]="--bins 16"
  [bins-32]="--bins 32"
  [bound-8]="--spline-bound 8"
  [bound-4]="--spline-bound 4"
  [blocks-6]="--blocks 6"
  [lr-2e-3]="--lr 2e-3"
  [input-spline]="--input-spline"
  [bins-16-input-spline]="--bins 16 --input-spline"
  [bins-16-input-spline-bound-4]="--bins 16 --input-spline --spline-bound 4"
  [bins-16-input-spline-batch-128]="--bins 16 --input-spline --batch-size 128"
  [bins-16-input-spline-ema-0.999]="--bins 16 --input-spline --ema 0.999"
)
ORDER=(recipe bins-16 bins-32 bound-8 bound-4 blocks-6 lr-2e-3 input-spline bins-16-input-spline bins-16-input-spline-bound-4
  bins-16-input-spline-batch-128 bins-16-input-spline-ema-0.999)
VARIANTS=("$@")
if [ ${#VARIANTS[@]} -eq 0 ]; then VARIANTS=("${ORDER[@]}"); fi
mkdir -p runs "docs/results/$DATASET-ablation"
for name in "${VARIANTS[@]}"; do
  if [ -z "${CHANGE[$name]+set}" ]; then echo "unknown variant $name; one of: ${ORDER[*]}" >&2; exit 2; fi
  out=runs/$DATASET-ablation-$name-${BUDGET}s
  extra=()
  if [ -f "$out/checkpoint.pt" ]; then extra=(--resume); fi
  # shellcheck disable=SC2086  # the change is a list of options
  $LUNET train --dataset "$DATASET" --data-dir "$DATA" --out "$out" --recipe best --time-budget "$BUDGET" \
    ${CHANGE[$name]} "${extra[@]}" --no-progress
  $LUNET evaluate "$out" --data-dir "$DATA" --json "docs/results/$DATASET-ablation/$name-${BUDGET}s.json"
done
