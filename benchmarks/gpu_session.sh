#!/usr/bin/env bash
# Everything that needs a GPU, in one go, for a machine that is lent for minutes:
#   1. the CUDA tests (tests/properties/test_cuda.py);
#   2. Table 1 on the GPU (`lunet bench --device cuda`, full mode: epochs measured);
#   3. the speed ratios on the GPU (`lunet bench --micro --device cuda`);
#   4. the default `lunet train --dataset mnist --device cuda` (60 epochs, steps replayed
#      as CUDA graphs), alone on the GPU; its training seconds per epoch go to
#      train-epoch-lunet-mnist-60ep.json (train_epoch_s);
#      with EXTRA=1 also, side by side within BUDGET seconds, RealNVP on MNIST
#      (epochs from the epoch time step 2 measured) and an 8-block LU-Net with a
#      learnable slope (4.92M free parameters);
#   5. test-set evaluation and sample grids of every run trained in step 4;
#   6. 3 epochs each with eager steps (--no-cuda-graph) and with --compile, to
#      train-epoch-lunet-mnist-eager.json and train-epoch-lunet-mnist-compiled.json.
# Results go to $OUT: gpu-results.tar.gz (logs, JSON, metrics, PNGs) and the
# best weights of each run (`lunet export`), split into parts of 15 MB
# (`cat NAME.pt.part-* > checkpoint.pt` joins them).
#
#   DATA=path/to/data OUT=results BUDGET=200 bash benchmarks/gpu_session.sh
#
# Runs with the machine's own python3 and torch (PYTHONPATH=src); each stage has
# its own time limit, cut to what is left of TOTAL seconds (default 540, so that
# one 10-minute call holds it all), and a failed stage does not stop the others.
set -u
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-gpu-results}
BUDGET=${BUDGET:-200}
LU_EPOCHS=${LU_EPOCHS:-80}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
# For a rehearsal on a CPU: DEVICE=cpu BENCH_ARGS="--quick --models lunet" TRAIN_ARGS="--limit 1000" EVAL_ARGS="--limit 300"
BENCH_ARGS=${BENCH_ARGS:-}
TRAIN_ARGS=${TRAIN_ARGS:-}
EVAL_ARGS=${EVAL_ARGS:-}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
R=$OUT/work
mkdir -p "$R/runs" "$R/figures"
LUNET="$PY -m lunet.cli"
stage() { echo; echo "=== $* ($(date +%T))"; }
# a stage's time limit: its own cap, or what is left before the packing's last 20 seconds
DEADLINE=$(( $(date +%s) + ${TOTAL:-540} - 20 ))
cap() { local left=$(( DEADLINE - $(date +%s) )); [ "$left" -lt "$1" ] && set -- "$left"; [ "$1" -lt 1 ] && set -- 1; echo "$1"; }

stage "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"

stage "1. CUDA tests"
timeout $(cap 90) $PY -m pytest -q -p no:cacheprovider tests/properties/test_cuda.py tests/test_frozen.py 2>&1 | tail -5

stage "2. Table 1 on the GPU"
timeout $(cap 120) $LUNET bench --device "$DEVICE" $BENCH_ARGS --json "$R/bench-cuda.json" || echo "stage 2 failed"

stage "3. speed ratios on the GPU"
timeout $(cap 60) $LUNET bench --micro --device "$DEVICE" --json "$R/micro-cuda.json" || echo "stage 3 failed"

# a run's training seconds per epoch (validation excluded), under the name the bench JSONs use
epoch_json() {
$PY - "$R/runs/$1/metrics.jsonl" "$R/train-epoch-$1.json" <<'EOF'
import json, sys
try:
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
except OSError:
    sys.exit("no metrics: the run did not save a checkpoint")
last = rows[-1]
# the first epoch of a compiled run waits for the compiler: the later ones show the step
steady = [b["train_seconds"] - a["train_seconds"] for a, b in zip(rows, rows[1:])]
out = {"train_epoch_s": last["train_seconds"] / last["epoch"], "epochs": last["epoch"], "steps": last.get("steps"),
       "train_seconds": last["train_seconds"], "val_bits_per_dim": last["val_bits_per_dim"],
       "later_epochs_s": steady}
json.dump(out, open(sys.argv[2], "w"), indent=2)
print(sys.argv[2], out)
EOF
}

stage "4. the default MNIST run (60 epochs), alone on the GPU"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
common=(--dataset mnist --data-dir "$DATA" --device "$DEVICE" --no-progress $TRAIN_ARGS)
RUNS=(lunet-mnist-60ep)
timeout $(cap 240) $LUNET train "${common[@]}" --out "$R/runs/lunet-mnist-60ep" > "$R/train-lunet-60ep.log" 2>&1 \
  || echo "stage 4 failed"
tail -n 3 "$R/train-lunet-60ep.log"
epoch_json lunet-mnist-60ep

if [ "${EXTRA:-0}" = 1 ]; then
  stage "4b. trainings within ${BUDGET}s (EXTRA=1)"
  # RealNVP epochs: what the budget allows at the measured epoch time, with a
  # margin for validation and for sharing the GPU with the LU-Net training.
  NVP_EPOCHS=$($PY - "$R/bench-cuda.json" "$BUDGET" <<'EOF'
import json, sys
try:
    epoch_s = json.load(open(sys.argv[1]))["models"]["realnvp"]["epoch_s"]
except (OSError, KeyError, ValueError):
    epoch_s = 30.0
print(max(1, int(float(sys.argv[2]) / (1.5 * epoch_s))))
EOF
)
  echo "RealNVP: $NVP_EPOCHS epochs"
  (timeout $(cap $((BUDGET + 30))) $LUNET train "${common[@]}" --model realnvp --out "$R/runs/realnvp-mnist" --epochs "$NVP_EPOCHS" \
    > "$R/train-realnvp.log" 2>&1; echo "realnvp exit $?" >> "$R/train-realnvp.log") &
  (timeout $(cap $((BUDGET + 30))) $LUNET train "${common[@]}" --out "$R/runs/lunet8-alpha-mnist" --blocks 8 --learn-alpha --lr 3e-4 --epochs "$LU_EPOCHS" \
    > "$R/train-lunet8.log" 2>&1; echo "lunet8 exit $?" >> "$R/train-lunet8.log") &
  wait
  tail -n 3 "$R"/train-realnvp.log "$R"/train-lunet8.log
  RUNS+=(realnvp-mnist lunet8-alpha-mnist)
fi

stage "5. evaluation and samples"
for run in "${RUNS[@]}"; do
  dir=$R/runs/$run
  [ -f "$dir/checkpoint.pt" ] || { echo "$run: no checkpoint"; continue; }
  timeout $(cap 45) $LUNET evaluate "$dir" --data-dir "$DATA" --device "$DEVICE" $EVAL_ARGS --json "$R/$run-eval.json" || echo "$run: evaluation failed"
  timeout $(cap 30) $LUNET sample "$dir" --data-dir "$DATA" --device "$DEVICE" --out "$R/figures/$run-samples.png" || echo "$run: sampling failed"
  timeout $(cap 30) $LUNET export "$dir" --out "$R/$run.pt" && rm "$dir/checkpoint.pt"
done

stage "6. 3 epochs with eager steps, and with the loss compiled (inside the captured step)"
# their epoch times beside the default run's
timeout $(cap 45) $LUNET train "${common[@]}" --epochs 3 --no-cuda-graph --out "$R/runs/lunet-mnist-eager" \
  > "$R/train-lunet-eager.log" 2>&1 || echo "stage 6, eager: failed"
tail -n 3 "$R/train-lunet-eager.log"
epoch_json lunet-mnist-eager
timeout $(cap 90) $LUNET train "${common[@]}" --epochs 3 --compile --out "$R/runs/lunet-mnist-compiled" \
  > "$R/train-lunet-compiled.log" 2>&1 || echo "stage 6, compiled: failed"
tail -n 3 "$R/train-lunet-compiled.log"
epoch_json lunet-mnist-compiled
rm -f "$R"/runs/lunet-mnist-{eager,compiled}/checkpoint.pt  # their figures are kept; 40 MB each is not

stage "pack"
for run in "${RUNS[@]}"; do
  [ -f "$R/$run.pt" ] && split -b 15M -d "$R/$run.pt" "$OUT/$run.pt.part-" && rm "$R/$run.pt"
done
tar -czf "$OUT/gpu-results.tar.gz" -C "$R" . && rm -rf "$R"
ls -la "$OUT"
