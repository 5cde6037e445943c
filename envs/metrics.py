"""The Diffusion Policy paper's checkpoint protocol: max and mean of the last K, over seeds.

Chi et al. 2023 (arXiv 2303.04137, Tables 1-2) score a method on a task by training it with
several seeds (3), evaluating checkpoints along each run (every 50 epochs; each checkpoint's
score is its mean over 50 environment starts, success rate or PushT's max coverage), and
reporting two numbers: per seed the best checkpoint's score and the mean of the last K = 10
checkpoints' scores, each averaged over the seeds ("max / avg of last 10"). ``anchor_metric``
computes both from a table of scores, so the project's results can be set beside the paper's.

No torch, no environment: a pure function of the numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

PAPER_LAST_K = 10  # the paper's "average of the last 10 checkpoints"


def anchor_metric(
    scores: Mapping[Any, Sequence[float]] | Sequence[Sequence[float]],
    last_k: int = PAPER_LAST_K,
) -> dict[str, Any]:
    """The paper's two numbers from per-seed checkpoint scores.

    ``scores``: one sequence per training seed (a mapping seed -> scores, or a list in seed
    order), each that run's checkpoint scores in training order (oldest first). Every seed
    needs at least ``last_k`` scores.

    Returns ``{"max": mean over seeds of the seed's best score, "last_k_mean": mean over seeds
    of the mean of the seed's last ``last_k`` scores, "per_seed_max", "per_seed_last_k_mean"
    (lists in seed order), "seeds" (the mapping's keys or 0, 1, ...), "last_k",
    "checkpoints" (scores per seed)}``.
    """
    if isinstance(last_k, bool) or not isinstance(last_k, int) or last_k < 1:
        raise ValueError(f"anchor_metric: last_k={last_k!r}, expected an int >= 1")
    if isinstance(scores, Mapping):
        seeds, rows = list(scores.keys()), list(scores.values())
    else:
        rows = list(scores)
        seeds = list(range(len(rows)))
    if not rows:
        raise ValueError("anchor_metric: no training seeds (empty score table)")
    per_max, per_last = [], []
    counts = []
    for seed, row in zip(seeds, rows, strict=True):
        if isinstance(row, str | bytes) or not isinstance(row, Sequence):
            raise ValueError(
                f"anchor_metric: seed {seed!r}: scores must be a sequence of numbers, "
                f"got {type(row).__name__}"
            )
        values = []
        for i, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(
                    f"anchor_metric: seed {seed!r}, checkpoint {i}: score {v!r} is not a "
                    "finite number"
                )
            values.append(float(v))
        if len(values) < last_k:
            raise ValueError(
                f"anchor_metric: seed {seed!r} has {len(values)} checkpoint scores, fewer than "
                f"last_k={last_k}; evaluate more checkpoints or lower last_k"
            )
        per_max.append(max(values))
        tail = values[-last_k:]
        per_last.append(sum(tail) / last_k)
        counts.append(len(values))
    return {
        "max": sum(per_max) / len(per_max),
        "last_k_mean": sum(per_last) / len(per_last),
        "per_seed_max": per_max,
        "per_seed_last_k_mean": per_last,
        "seeds": seeds,
        "last_k": last_k,
        "checkpoints": counts,
    }


__all__ = ["PAPER_LAST_K", "anchor_metric"]
