#!/usr/bin/env bash
# One command for a person with one GPU: mmret's accelerator numbers, and the PyTorch peer's
# beside them, in under 8 minutes including compilation (docs/PERFORMANCE.md, issue 12).
#
#   bash bench/gpu.sh [OUT_DIR]          # default OUT_DIR: bench/results/gpu-<date>
#
# Runs, most important first, each bounded by what is left of the budget (BUDGET_S, 460 s):
#   1. the two-tower mode (configs/pretrain.py:two_tower, BERT-base, query 16 + item 64 tokens)
#      and, if PyTorch + transformers are installed, the PyTorch peer of the same work
#      (bench/peer_torch_twotower.py), at batch 1024, then 512 and 256;
#   2. the full five-task `base` step at batch 256 (utilisation against PEAK_TFLOPS, 989 =
#      H100/H200 dense bf16);
#   3. the recall step at 10^4, 10^7 and 10^8 item rows (bench/recall_step.py);
# then writes OUT_DIR/gpu.json (everything) and OUT_DIR/gpu.md (the table) with
# bench/gpu_report.py. A step that runs out of time is recorded as such, never dropped.
# SMOKE=1 runs the same sequence with tiny shapes on any machine (a check of the script).
set -u
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/gpu-$(date +%Y%m%d-%H%M)}
mkdir -p "$OUT"
BUDGET_S=${BUDGET_S:-460}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
START=$(date +%s)
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/mmret/jax_cache}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
# Four Grain worker processes make the batches (~2,000 `base` examples/s a core on CPU).
DATA="--config.data.tokenizer=train --config.data.synthshop_size=small --config.data.workers=4"
if [ "${SMOKE:-0}" = 1 ]; then
  TWO="--config configs/pretrain.py:tiny --config.loss.weights.mlm_query=0.0 --config.loss.weights.mlm_title=0.0 --config.loss.weights.mpm=0.0 --config.loss.weights.qim=0.0 --config.loss.weights.qim2=0.0"
  BASE="--config configs/pretrain.py:tiny"; DATA="--config.data.synthshop_size=tiny"
  BATCHES="16 8"; BASE_BATCH=8; STEPS=2; SIZES=1e3,1e4; PEER_BATCHES="16"
else
  TWO="--config configs/pretrain.py:two_tower"; BASE="--config configs/pretrain.py:base"
  BATCHES="1024 512 256"; BASE_BATCH=256; STEPS=10; SIZES=1e4,1e7,1e8; PEER_BATCHES="1024 512 256"
fi
HAVE_TORCH=0
python -c "import torch, transformers; assert torch.cuda.is_available()" 2>/dev/null && HAVE_TORCH=1

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
run() {  # run NAME CMD...: bounded by the time left; the exit status goes to NAME.status
  local name=$1; shift
  local t; t=$(left)
  if [ "$t" -le 15 ]; then echo "skipped: out of time" > "$OUT/$name.status"; return; fi
  echo "[gpu.sh] $name (${t}s left)"
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1
  echo "exit $?" > "$OUT/$name.status"
  tail -n 2 "$OUT/$name.log"
}

for B in $BATCHES; do
  run "two_tower_$B" python bench/pretrain_step.py $TWO $DATA --batch_size "$B" --steps "$STEPS" \
      --peak_tflops "$PEAK_TFLOPS" --out "$OUT/two_tower_$B.json"
  if [ "$HAVE_TORCH" = 1 ] && [ "${SMOKE:-0}" != 1 ]; then
    run "peer_$B" python bench/peer_torch_twotower.py --batch_size "$B" --out "$OUT/peer_$B.json"
  fi
  if [ "$B" = "$(echo $BATCHES | cut -d' ' -f1)" ]; then  # the headline pair first, then base
    run "base_$BASE_BATCH" python bench/pretrain_step.py $BASE $DATA --batch_size "$BASE_BATCH" \
        --steps "$STEPS" --peak_tflops "$PEAK_TFLOPS" --out "$OUT/base_$BASE_BATCH.json"
  fi
done
run recall python bench/recall_step.py --sizes "$SIZES" --out "$OUT/recall.json"
python bench/gpu_report.py "$OUT" --have_torch "$HAVE_TORCH" --seconds "$(( $(date +%s) - START ))"
