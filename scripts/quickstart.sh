#!/usr/bin/env bash
# From a fresh clone to a trained PushT diffusion policy with a success rate and a video:
# install -> collect expert demonstrations -> train -> evaluate 50 held-out episodes
# (the default DDIM 5, then DDIM 10 and DDPM 100 for comparison). Everything lands under outputs/. Re-running resumes each stage.
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=${MUJOCO_GL:-egl}
PY=.venv/bin/python
start=$SECONDS
stamp() { printf '[%4ds] %s\n' $((SECONDS - start)) "$*"; }

stamp "install"
bash scripts/install.sh

stamp "collect demonstrations"
$PY -m dplite.scripts.collect --task pusht --episodes 500 --action-noise 3 \
    --out outputs/data/pusht.zarr --no-progress
t_train=$SECONDS
stamp "train"
$PY -m dplite.scripts.train --dataset outputs/data/pusht.zarr --task pusht --out outputs/runs/pusht \
    --no-progress "$@"
t_train=$((SECONDS - t_train))
stamp "evaluate (the default: DDIM 5)"
$PY -m dplite.scripts.eval --checkpoint outputs/runs/pusht --episodes 50 \
    --json outputs/results_ddim5.json --no-progress
stamp "evaluate (DDIM 10)"
$PY -m dplite.scripts.eval --checkpoint outputs/runs/pusht --episodes 50 --sampler ddim \
    --inference-steps 10 --videos 0 --json outputs/results_ddim10.json --no-progress
stamp "evaluate (DDPM 100)"
$PY -m dplite.scripts.eval --checkpoint outputs/runs/pusht --episodes 50 --sampler ddpm \
    --inference-steps 100 --videos 0 --json outputs/results_ddpm100.json --no-progress
stamp "done: training took ${t_train}s; results in outputs/results_*.json"
