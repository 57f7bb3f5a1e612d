#!/usr/bin/env bash
# The candidate EM recipes across microscopes (lib/configs/registry.py CANDIDATES) and their leave-one-microscope-
# out runs, trained longer on a lent GPU in one command under 8 minutes on one H200 (docs/models.md): every run at
# once on the one device (each a small planar U-Net; patches are cut and augmented on one CPU core per run), then
# each judged under lib/protocol.py. Writes weights, reports and cards into $MODEL_DIR (default $OUT/model) and the
# logs into $OUT. Copy that folder into apps/axonseg/model/candidates after looking at its panels, and promote a
# candidate that beats the served model. Needs the shared data: AXONSEG_SHARED_DATA=<../shared/data>.
#   EPOCHS=30 ITERATIONS=100 benchmarks/train_em_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
make .venv/.installed CONSTRAINTS=requirements/constraints-cuda.txt >/dev/null
out="${OUT:-/tmp/axonseg-gpu}"
model_dir="${MODEL_DIR:-$out/model}"
data="${AXONSEG_SHARED_DATA:-../shared/data}"
mkdir -p "$model_dir" "$out"
runs=(
  "mitochondria-em full" "mitochondria-em fibsem-mouse-ca1" "mitochondria-em sstem-fly-l1-vnc"
  "mitochondria-em sstem-fly-l3-vnc" "mitochondria-em sbem-hela"
  "membrane-em full" "membrane-em fibsem-fly" "membrane-em sstem-fly-l1-vnc" "membrane-em sstem-fly-l3-vnc"
)
for run in "${runs[@]}"; do
  set -- $run
  leave=(); [ "$2" != full ] && leave=(--leave-out "$2")
  PYTHONPATH=apps/axonseg timeout "${LIMIT_S:-450}" .venv/bin/python -m lib.trainers.cli "$1" --data-dir "$data" \
    --model-dir "$model_dir" --device cuda --threads 1 --epochs "${EPOCHS:-30}" --iterations "${ITERATIONS:-100}" \
    --resume "${leave[@]}" > "$out/$1-$2.log" 2>&1 &
done
wait
tail -n 3 "$out"/*.log
