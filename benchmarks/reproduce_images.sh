#!/usr/bin/env bash
# Trains and evaluates every image result in docs/results.md, one after another
# (each run resumable: rerunning this script continues where it stopped).
#   DATA=../shared/data EPOCHS=20 bash benchmarks/reproduce_images.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
EPOCHS=${EPOCHS:-20}
CLASS_EPOCHS=${CLASS_EPOCHS:-$EPOCHS}
LR=${LR:-1e-3}
LUNET=${LUNET:-.venv/bin/lunet}
mkdir -p runs docs/results
for ds in mnist fashion-mnist; do
  for kind in unconditional per_class; do
    out=runs/$ds-$kind
    extra=(); epochs=$EPOCHS
    if [ $kind = per_class ]; then extra=(--per-class); epochs=$CLASS_EPOCHS; fi
    $LUNET train --dataset $ds --data-dir "$DATA" --out $out --epochs $epochs --lr $LR "${extra[@]}" --resume --no-progress
    $LUNET evaluate $out --data-dir "$DATA" --json docs/results/$ds-$kind.json
    $LUNET sample $out --data-dir "$DATA" --out docs/figures/$ds-$kind-samples.png --temperature 1.0
    $LUNET sample $out --data-dir "$DATA" --out docs/figures/$ds-$kind-samples-T0.7.png --temperature 0.7
    if [ $kind = per_class ]; then
      $LUNET sample $out --data-dir "$DATA" --out docs/figures/$ds-$kind-samples-fitted.png --prior fitted
      $LUNET agreement $out --data-dir "$DATA" --json docs/results/$ds-$kind-agreement.json
    else
      $LUNET interpolate $out --data-dir "$DATA" --out docs/figures/$ds-interpolation.png
    fi
  done
done
