#!/usr/bin/env bash
# The image version of quickstart.sh: PushT from a 96 x 96 top-down camera + the pusher's
# position. install -> collect 500 demonstrations with images -> train 50,000 steps (batch 64,
# bf16 autocast; about 100 min on a 2-core CPU) -> evaluate 50 held-out episodes (DDIM 10).
# Extra arguments go to scripts.train. Re-running resumes each stage.
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=${MUJOCO_GL:-egl}
PY=.venv/bin/python
start=$SECONDS
stamp() { printf '[%4ds] %s\n' $((SECONDS - start)) "$*"; }

stamp "install"
bash scripts/install.sh
stamp "collect demonstrations with images"
$PY -m dplite.scripts.collect --task pusht --images --episodes 500 --action-noise 3 \
    --out outputs/data/pusht_img.zarr --no-progress
stamp "train"
$PY -m dplite.scripts.train --dataset outputs/data/pusht_img.zarr --task pusht --obs-keys img agent_pos \
    --out outputs/runs/pusht_img --batch-size 64 --steps 50000 --amp --eval-every 5000 \
    --save-every 5000 --no-progress "$@"
stamp "evaluate (DDIM 10)"
$PY -m dplite.scripts.eval --checkpoint outputs/runs/pusht_img --episodes 50 \
    --json outputs/results_img_ddim10.json --no-progress
stamp "done: results in outputs/results_img_ddim10.json"
