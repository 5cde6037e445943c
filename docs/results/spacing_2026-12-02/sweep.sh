#!/usr/bin/env bash
# Leading vs trailing DDIM timesteps on the same PushT policies (issue: few-step sampling that
# starts from noise). For each policy: DDIM 1 / 2 / 3 / 5 / 10 with both spacings and DDPM 100
# (k = K visits every timestep, so it has no spacing), 50 held-out seeds x noise seeds 0-4.
#   bash docs/results/spacing_2026-12-02/sweep.sh NAME POLICY_DIR [OUT_DIR]    (DDPM=0: no DDPM)
set -euo pipefail
name=$1 policy=$2 out=${3:-docs/results/spacing_2026-12-02}
run() { .venv/bin/dp-eval --checkpoint "$policy" --episodes 50 --noise-seeds 5 --videos 0 \
        --no-progress "$@" | grep -E "success rate|mean max|wall time"; }
for k in 1 2 3 5 10; do
    for spacing in leading trailing; do
        echo "== $name DDIM $k $spacing"
        run --sampler ddim --inference-steps $k --timestep-spacing $spacing \
            --json "$out/${name}_ddim${k}_${spacing}.json"
    done
done
if [ "${DDPM:-1}" = 1 ]; then
    echo "== $name DDPM 100"
    run --sampler ddpm --inference-steps 100 --json "$out/${name}_ddpm100.json"
fi
