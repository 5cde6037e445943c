#!/usr/bin/env bash
# The GPU check: a few minutes on a CUDA machine. Benchmarks inference latency and training
# throughput on the GPU, then collects 100 PushT demonstrations, trains 2000 steps with bf16
# autocast and evaluates 50 held-out episodes on the GPU. Results under outputs/gpu/ (and
# $OUT/gpu when OUT is set, e.g. by a remote runner). Install first with a CUDA torch:
#     TORCH_SPEC="torch==2.13.0" bash scripts/install.sh   (with your CUDA index configured)
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=${MUJOCO_GL:-egl}
PY=${PY:-.venv/bin/python}
DIR=outputs/gpu
mkdir -p "$DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$DIR/gpu.txt"
$PY -c 'import torch; assert torch.cuda.is_available(), "no CUDA device visible to torch"'
$PY -m scripts.benchmark --sections inference train --device cuda --json "$DIR/bench.json"
$PY -m scripts.collect --task pusht --episodes 100 --action-noise 3 --out "$DIR/pusht.zarr" \
    --no-progress
$PY -m scripts.train --dataset "$DIR/pusht.zarr" --out "$DIR/run" --steps 2000 \
    --eval-every 1000 --amp --device cuda --no-progress
$PY -m scripts.eval --checkpoint "$DIR/run" --episodes 50 --device cuda --videos 0 \
    --json "$DIR/eval.json" --no-progress
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT/gpu" && cp "$DIR"/*.json "$DIR/gpu.txt" "$OUT/gpu/"; fi
