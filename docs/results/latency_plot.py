"""Success and boundary jerk against the inference delay, one line per execution mode.

    python docs/results/latency_plot.py outputs/latency/pusht --out docs/latency_pusht.png

Reads every dp-eval results JSON in the folder (as written by latency_sweep.sh), prints a
markdown table (mode, d, success with its 95 % CI, boundary and within-chunk jerk) and draws
two panels: success rate and boundary jerk (within-chunk jerk dotted) against d; sync, which d
does not change, is a dashed reference line. A mode without its own d = 0 run starts from
sync's: with no delay every mode executes exactly the same actions.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def label(r: dict) -> str:
    """The mode's name in the plot: rtc with its method."""
    return f"rtc-{r.get('rtc_method', 'guidance')}" if r["execution"] == "rtc" else r["execution"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="PNG (default: FOLDER/latency.png)")
    args = ap.parse_args()
    lines: dict[str, list[dict]] = defaultdict(list)
    for path in sorted(args.folder.glob("*.json")):
        r = json.loads(path.read_text())
        if "execution" in r:
            lines[label(r)].append(r)
    if not lines:
        raise SystemExit(f"{args.folder}: no dp-eval results with an execution field")
    print("| mode | d | success (95% CI) | boundary jerk | within jerk |")
    print("|---|---|---|---|---|")
    fig, (ax_s, ax_j) = plt.subplots(1, 2, figsize=(10, 4))
    no_delay = [r for r in lines.get("sync", []) if r["latency_steps"] == 0]
    for name, rows in sorted(lines.items()):
        if name != "sync" and no_delay and all(r["latency_steps"] != 0 for r in rows):
            rows.append(no_delay[0])  # printed in the table under sync only
        rows.sort(key=lambda r: r["latency_steps"])
        d = [r["latency_steps"] for r in rows]
        rate = [r["success_rate"] for r in rows]
        lo = [p - r["success_ci95"][0] for p, r in zip(rate, rows, strict=True)]
        hi = [r["success_ci95"][1] - p for p, r in zip(rate, rows, strict=True)]
        if name == "sync":  # d does not change it: a reference line across the plot
            ax_s.axhline(rate[0], color="gray", ls="--", label="sync (no delay)")
            ax_j.axhline(rows[0]["boundary_jerk"], color="gray", ls="--")
            ax_j.axhline(rows[0]["within_jerk"], color="gray", ls=":")
        else:
            ax_s.errorbar(d, rate, yerr=[lo, hi], marker="o", capsize=3, label=name)
            (line,) = ax_j.plot(d, [r["boundary_jerk"] for r in rows], marker="o", label=name)
            ax_j.plot(d, [r["within_jerk"] for r in rows], ls=":", color=line.get_color())
        for r in rows:
            if name != "sync" and r["execution"] == "sync":
                continue
            ci = r["success_ci95"]
            print(
                f"| {name} | {r['latency_steps']} | {r['success_rate']:.2f} "
                f"({ci[0]:.2f}-{ci[1]:.2f}) | {r['boundary_jerk']:.4f} | {r['within_jerk']:.4f} |"
            )
    first = next(iter(lines.values()))[0]
    episodes = first["episodes"]
    ax_s.set(xlabel="inference delay d (control steps)", ylabel="success rate", ylim=(0, 1.02))
    ax_s.set_title(
        f"{first.get('task', '')}: {episodes} episodes, {first['sampler']} k={first['inference_steps']}"
    )
    ax_j.set(xlabel="inference delay d (control steps)", ylabel="mean |delta action|")
    ax_j.set_title("boundary jerk (solid), within-chunk jerk (dotted)")
    ax_s.legend()
    fig.tight_layout()
    out = args.out or args.folder / "latency.png"
    fig.savefig(out, dpi=120)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
