"""Print the leading-vs-trailing table of docs/benchmarks.md from this folder's JSON records.

python docs/results/spacing_2026-12-02/table.py
"""

import json
from pathlib import Path

HERE = Path(__file__).parent


def cell(name: str) -> str:
    path = HERE / f"{name}.json"
    if not path.is_file():
        return "-"
    r = json.loads(path.read_text())
    return f"{r['success_rate']:.3f} / {r['mean_max_reward']:.3f}"


seeds = sorted({p.name.split("_")[0] for p in HERE.glob("s*_ddim*.json")})
print("| DDIM k | " + " | ".join(f"{s} leading | {s} trailing" for s in seeds) + " |")
print("|---|" + "---|---|" * len(seeds))
for k in (1, 2, 3, 5, 10):
    row = [cell(f"{s}_ddim{k}_{sp}") for s in seeds for sp in ("leading", "trailing")]
    print(f"| {k} | " + " | ".join(row) + " |")
