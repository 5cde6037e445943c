#!/usr/bin/env bash
# Success and boundary jerk against the inference delay d in {0, 1, 2, 4, 6, 8} for every
# execution mode (docs/latency.md), on one trained checkpoint, with dp-eval only:
#
#   bash docs/results/latency_sweep.sh CHECKPOINT [OUT_DIR] [EPISODES] [more dp-eval options]
#
# e.g. bash docs/results/latency_sweep.sh outputs/runs/pusht outputs/latency/pusht 50 --noise-seeds 2
# One JSON per (mode, d) in OUT_DIR (default outputs/latency/<checkpoint name>); a JSON that is
# already there is kept, so a killed sweep resumes. sync runs at d = 0 only: the world waits for
# every chunk, so d does not change it. At d = 0 only sync runs: every mode executes exactly
# its actions there (tests/test_latency.py checks it), and the plot starts each mode from it.
# Ends with the table and plot of latency_plot.py.
# DELAYS="0 4" or MODES="async rtc-guidance" narrow the sweep.
set -euo pipefail
ckpt=${1:?usage: latency_sweep.sh CHECKPOINT [OUT_DIR] [EPISODES] [more dp-eval options]}
out=${2:-outputs/latency/$(basename "$ckpt")}
episodes=${3:-50}
shift $(($# < 3 ? $# : 3))
python=${PYTHON:-python}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
for d in ${DELAYS:-0 1 2 4 6 8}; do
  for mode in ${MODES:-sync async ensemble rtc-guidance rtc-inpaint}; do
    # sync at d = 0 only, and only sync there
    [[ ($mode == sync && $d != 0) || ($mode != sync && $d == 0) ]] && continue
    case $mode in
      rtc-*) args=(--execution rtc --rtc-method "${mode#rtc-}") ;;
      *) args=(--execution "$mode") ;;
    esac
    json=$out/${mode}_d$d.json
    [[ -f $json ]] && continue
    echo "== $mode, d = $d"
    "$python" -m dplite.scripts.eval --checkpoint "$ckpt" --episodes "$episodes" --videos 0 \
      --no-progress --latency-steps "$d" "${args[@]}" --json "$json" "$@" | tail -n 4
  done
done
"$python" "$here/latency_plot.py" "$out" --out "$out/latency.png"
