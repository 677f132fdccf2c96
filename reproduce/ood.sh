#!/usr/bin/env bash
# Out-of-distribution detection for the four runs of reproduce/images.sh (run that first):
# each data set's test set against the other's, for the run and for the
# full-covariance Gaussian baseline. Writes docs/results/ood-*.json and
# docs/figures/ood-*.png; docs/ood.md shows the tables.
#   DATA=../shared/data bash reproduce/ood.sh
#   python reproduce/collect_results.py        # adds the AUROCs to docs/results.json
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
LUNET=${LUNET:-.venv/bin/lunet}
mkdir -p docs/results docs/figures
for ds in mnist fashion-mnist; do
  if [ "$ds" = mnist ]; then other=fashion-mnist; else other=mnist; fi
  for kind in unconditional per_class; do
    $LUNET ood "runs/$ds-$kind-60ep" --against "$other" --data-dir "$DATA" \
      --json "docs/results/ood-$ds-$kind.json" --plot "docs/figures/ood-$ds-$kind.png"
  done
done
