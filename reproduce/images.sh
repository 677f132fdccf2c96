#!/usr/bin/env bash
# Trains and evaluates every image result in docs/results.md, one after another
# (each run resumable: rerunning this script continues where it stopped).
#   DATA=../shared/data bash reproduce/images.sh
# Each run's recipe is spelled out below rather than taken from the defaults,
# so that the recorded numbers stay reproducible when defaults change.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
LUNET=${LUNET:-.venv/bin/lunet}
mkdir -p runs docs/results docs/figures
#   dataset        kind           epochs  lr    grad-clip
RUNS=(
  "mnist          unconditional  60      1e-3  10"
  "mnist          per_class      60      1e-3  10"
  "fashion-mnist  unconditional  60      1e-3  10"
  "fashion-mnist  per_class      60      1e-3  10"
  "mnist          conditional    60      1e-3  10"
)
for spec in "${RUNS[@]}"; do
  read -r ds kind epochs lr clip <<< "$spec"
  out=runs/$ds-$kind-${epochs}ep
  extra=()
  if [ "$kind" = per_class ]; then extra=(--per-class); fi
  if [ "$kind" = conditional ]; then extra=(--conditional); fi
  # --resume continues a run this script started; a new run is started without it
  if [ -n "$(find "$out" -name checkpoint.pt 2>/dev/null | head -n 1)" ]; then extra+=(--resume); fi
  # a run that diverges (the divergence check stops it, keeping the last good checkpoint)
  # continues once from there at half the learning rate
  $LUNET train --dataset "$ds" --data-dir "$DATA" --out "$out" --epochs "$epochs" --lr "$lr" --grad-clip "$clip" \
    "${extra[@]}" --no-progress \
  || $LUNET train --dataset "$ds" --data-dir "$DATA" --out "$out" --epochs "$epochs" --lr "$(python3 -c "print($lr / 2)")" \
    --grad-clip "$clip" "${extra[@]}" --resume --no-progress
  $LUNET evaluate "$out" --data-dir "$DATA" --json "docs/results/$ds-$kind.json"
  $LUNET sample "$out" --data-dir "$DATA" --out "docs/figures/$ds-$kind-samples.png" --temperature 1.0
  $LUNET sample "$out" --data-dir "$DATA" --out "docs/figures/$ds-$kind-samples-T0.7.png" --temperature 0.7
  if [ "$kind" = per_class ]; then
    $LUNET sample "$out" --data-dir "$DATA" --out "docs/figures/$ds-$kind-samples-fitted.png" --prior fitted
  fi
  if [ "$kind" != unconditional ]; then
    $LUNET agreement "$out" --data-dir "$DATA" --json "docs/results/$ds-$kind-agreement.json"
  else
    $LUNET interpolate "$out" --data-dir "$DATA" --out "docs/figures/$ds-interpolation.png"
  fi
done
