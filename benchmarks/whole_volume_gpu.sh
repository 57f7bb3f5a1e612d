#!/usr/bin/env bash
# The GPU figure of benchmarks/whole_volume.py as one short run for a lent accelerator (docs/whole-volumes.md):
# installs from the project's files, runs the overhead part on CUDA with bfloat16 autocast, copies the report
# to $OUT. Needs the TRAILMAP chunk: AXONSEG_SHARED_DATA=<folder with trailmap_example_chunk_unlabeled.h5>.
set -euo pipefail
cd "$(dirname "$0")/.."
make .venv/.installed CONSTRAINTS=requirements/constraints-cuda.txt >/dev/null
.venv/bin/python benchmarks/whole_volume.py --parts overhead --device cuda --batch 8 \
  --overhead-shape "${SHAPE_Z:-256}" "${SHAPE_Y:-1024}" "${SHAPE_X:-1024}" --scratch "${TMPDIR:-/tmp}/wv-gpu"
cp benchmarks/reports/whole_volume_gpu.* "${OUT:-.}/" 2>/dev/null || true
