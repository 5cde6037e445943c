#!/usr/bin/env bash
# The GPU check, a few minutes on a CUDA machine:
#   1. the CUDA graph tests (tests/test_cuda_graphs.py: replay == eager, weight writes, re-capture)
#   2. the benchmark on the GPU: predict_action latency plain / eager / CUDA graph, and training
#      samples/s in fp32 and bf16
#   3. collect 100 PushT demonstrations, train 2000 steps with bf16 autocast on the GPU, evaluate
#      50 held-out episodes on the GPU, eagerly and with the CUDA graph.
# Results in outputs/gpu/ (copied to $OUT/gpu after the benchmark and at exit when OUT is set,
# e.g. by a remote runner). Install first with a CUDA torch:
#     TORCH_SPEC="torch==2.13.0" bash scripts/install.sh   (with your CUDA index configured)
# DEVICE=cpu STEPS=50 EPISODES=4 runs the same stages on a CPU (a dry run of the script itself,
# without CUDA graphs: 2.5 min on 2 cores). Exits 1 at the end if the graph tests failed.
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=${MUJOCO_GL:-egl}
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-2000}
EPISODES=${EPISODES:-50}
DIR=outputs/gpu
rm -rf "$DIR" && mkdir -p "$DIR"
save() { # the files of $DIR (not the dataset or run folders)
    if [ -n "${OUT:-}" ]; then
        mkdir -p "$OUT/gpu" && find "$DIR" -maxdepth 1 -type f -exec cp {} "$OUT/gpu/" \;
    fi
}
trap save EXIT

GRAPHS=""
TESTS_OK=1
if [[ "$DEVICE" == cuda* ]]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$DIR/gpu.txt"
    $PY -c 'import torch; assert torch.cuda.is_available(), "no CUDA device visible to torch"'
    GRAPHS=--cuda-graphs
fi
$PY -m pytest -p no:cacheprovider tests/test_cuda_graphs.py 2>&1 | tee "$DIR/tests.txt" || TESTS_OK=0
$PY -m dplite.scripts.benchmark --sections inference train --device "$DEVICE" --json "$DIR/bench.json"
save
$PY -m dplite.scripts.collect --task pusht --episodes 100 --action-noise 3 --out "$DIR/pusht.zarr" \
    --no-progress
$PY -m dplite.scripts.train --dataset "$DIR/pusht.zarr" --out "$DIR/run" --steps "$STEPS" \
    --eval-every $((STEPS / 2)) --amp --device "$DEVICE" --no-progress
cp "$DIR/run/metrics.jsonl" "$DIR/train_metrics.jsonl"
for mode in eager $GRAPHS; do
    flag=$([ "$mode" = eager ] || echo "$mode")
    $PY -m dplite.scripts.eval --checkpoint "$DIR/run" --episodes "$EPISODES" --device "$DEVICE" \
        --videos 0 --json "$DIR/eval_${mode#--}.json" --no-progress $flag
done
if [ "$TESTS_OK" = 0 ]; then echo "tests/test_cuda_graphs.py FAILED (see $DIR/tests.txt)"; exit 1; fi
