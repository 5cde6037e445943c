"""envs.metrics.anchor_metric: the paper's max / mean-of-last-K protocol on hand-made tables."""

import numpy as np
import pytest

from dplite.envs.metrics import PAPER_LAST_K, anchor_metric


def test_hand_made_table_gives_the_hand_derived_numbers():
    # Two training seeds, five checkpoints each (oldest first), K = 3.
    # seed 0: best 0.9; last three 0.9, 0.7, 0.8 -> mean 2.4 / 3 = 0.8
    # seed 1: best 1.0; last three 0.6, 1.0, 0.5 -> mean 2.1 / 3 = 0.7
    # over seeds: max (0.9 + 1.0) / 2 = 0.95, last-3 mean (0.8 + 0.7) / 2 = 0.75
    table = {
        0: [0.2, 0.5, 0.9, 0.7, 0.8],
        1: [0.1, 0.6, 0.6, 1.0, 0.5],
    }
    out = anchor_metric(table, last_k=3)
    assert out["per_seed_max"] == pytest.approx([0.9, 1.0])
    assert out["per_seed_last_k_mean"] == pytest.approx([0.8, 0.7])
    assert out["max"] == pytest.approx(0.95)
    assert out["last_k_mean"] == pytest.approx(0.75)
    assert out["seeds"] == [0, 1] and out["last_k"] == 3 and out["checkpoints"] == [5, 5]


def test_three_seeds_paper_k_unequal_run_lengths():
    # The paper's K = 10 with three seeds; seed "c" ran longer (12 checkpoints): only its
    # last 10 count for the mean, all 12 for the max.
    a = [0.5] * 9 + [1.0]  # max 1.0, last-10 mean (4.5 + 1.0) / 10 = 0.55
    b = [0.0, 0.2, 0.4, 0.6, 0.8, 0.8, 0.6, 0.4, 0.2, 0.0]  # max 0.8, mean 4.0 / 10 = 0.4
    c = [0.96, 0.2] + [0.3] * 10  # max 0.96 (an early checkpoint), last-10 mean 0.3
    out = anchor_metric({"a": a, "b": b, "c": c})
    assert PAPER_LAST_K == 10 and out["last_k"] == 10
    assert out["per_seed_max"] == pytest.approx([1.0, 0.8, 0.96])
    assert out["per_seed_last_k_mean"] == pytest.approx([0.55, 0.4, 0.3])
    assert out["max"] == pytest.approx((1.0 + 0.8 + 0.96) / 3)
    assert out["last_k_mean"] == pytest.approx((0.55 + 0.4 + 0.3) / 3)
    assert out["seeds"] == ["a", "b", "c"] and out["checkpoints"] == [10, 10, 12]


def test_properties_on_random_tables():
    rng = np.random.default_rng(0)
    for _ in range(20):
        table = rng.uniform(0, 1, size=(int(rng.integers(1, 5)), int(rng.integers(3, 15))))
        rows = [list(map(float, r)) for r in table]
        k = int(rng.integers(1, table.shape[1] + 1))
        out = anchor_metric(rows, last_k=k)
        assert out["max"] == pytest.approx(table.max(axis=1).mean())
        assert out["last_k_mean"] == pytest.approx(table[:, -k:].mean())
        assert out["max"] >= out["last_k_mean"] - 1e-12
        # K = 1 is the final checkpoint; K = all is the mean over the whole run
        assert anchor_metric(rows, last_k=1)["last_k_mean"] == pytest.approx(table[:, -1].mean())
        full = anchor_metric(rows, last_k=table.shape[1])["last_k_mean"]
        assert full == pytest.approx(table.mean())


@pytest.mark.parametrize(
    ("table", "last_k", "match"),
    [
        ({}, 10, "no training seeds"),
        ({0: [0.5] * 10, 3: [0.5] * 4}, 10, "seed 3 has 4 checkpoint scores"),
        ({0: [0.5, float("nan"), 0.5]}, 2, r"seed 0, checkpoint 1: score nan"),
        ({"s1": [0.5, "0.7"]}, 1, r"seed 's1', checkpoint 1"),
        ({0: 0.5}, 1, "seed 0: scores must be a sequence"),
        ([[0.5]], 0, "last_k=0"),
    ],
)
def test_bad_tables_are_refused_by_seed_and_checkpoint(table, last_k, match):
    with pytest.raises(ValueError, match=match):
        anchor_metric(table, last_k=last_k)
