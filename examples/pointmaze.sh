#!/usr/bin/env bash
# Bring your own environment, end to end: gymnasium-robotics' PointMaze_Medium-v3 (not part of
# this package) with the BFS expert in examples/pointmaze_expert.py, through the public
# commands only: collect -> train -> evaluate 50 held-out seeds. gymnasium-robotics is a core
# dependency (scripts/install.sh installs it). Outputs under outputs/; re-running resumes each
# stage. The result is in docs/your-environment.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=${MUJOCO_GL:-egl}
PY=.venv/bin/python
start=$SECONDS
stamp() { printf '[%4ds] %s\n' $((SECONDS - start)) "$*"; }

stamp "collect demonstrations"
$PY -m dplite.scripts.collect --env-id PointMaze_Medium-v3 --env-import gymnasium_robotics \
    --env-kwargs '{"continuing_task": false}' --expert examples.pointmaze_expert:make_expert \
    --episodes 300 --out outputs/data/pointmaze.zarr --no-progress
t_train=$SECONDS
stamp "train"
# the environment comes from the dataset; observation keys: all of them; absolute actions.
# Ta = 4 and pad_after = 3: the settings docs/results/pointmaze_ddim10.json was measured with
$PY -m dplite.scripts.train --dataset outputs/data/pointmaze.zarr --out outputs/runs/pointmaze \
    --steps 4000 --eval-every 2000 --n-action-steps 4 --pad-after 3 --no-progress "$@"
t_train=$((SECONDS - t_train))
stamp "evaluate (DDIM 10)"
# only the checkpoint: it records the env id, its import and kwargs
$PY -m dplite.scripts.eval --checkpoint outputs/runs/pointmaze --episodes 50 --sampler ddim \
    --inference-steps 10 --json outputs/results_pointmaze.json --no-progress
stamp "done: training took ${t_train}s; results in outputs/results_pointmaze.json"
