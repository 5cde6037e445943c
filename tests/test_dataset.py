"""Tests for data/dataset.py (windows, batches, stats, v2 == v3) and scripts/dataset.py (CLI)."""

import subprocess
import sys

import numcodecs
import numpy as np
import pytest
import torch
import zarr

from dplite.data.dataset import WindowDataset
from dplite.data.replay_buffer import ReplayBuffer

LENGTHS = [12, 9, 15, 11, 7, 13, 10, 14, 8, 12]


def _episodes(seed=0, lengths=LENGTHS):
    """PushT-like episodes; state[:, 0] holds the episode id so windows can be traced."""
    rng = np.random.default_rng(seed)
    eps = []
    for e, length in enumerate(lengths):
        state = rng.normal(size=(length, 5)).astype(np.float32)
        state[:, 0] = e
        eps.append(
            {
                "action": rng.normal(size=(length, 2)).astype(np.float32),
                "state": state,
                "keypoint": rng.normal(size=(length, 9, 2)).astype(np.float32),
                "img": rng.integers(0, 255, size=(length, 8, 8, 3), dtype=np.uint8),
            }
        )
    return eps


def _write_v3(path, eps):
    rb = ReplayBuffer.create(path)
    for ep in eps:
        rb.add_episode(ep)
    return path


def _write_dp_v2(path, eps):
    """The Diffusion Policy reference layout, written by zarr's v2 format with numcodecs Blosc."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    data = root.require_group("data")
    blosc = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
    for k in eps[0]:
        v = np.concatenate([ep[k] for ep in eps])
        chunk = 1 if k == "img" else len(v)
        arr = data.create_array(
            k, shape=v.shape, chunks=(chunk, *v.shape[1:]), dtype=v.dtype, compressors=blosc
        )
        arr[:] = v
    ends = np.cumsum([len(ep["action"]) for ep in eps]).astype(np.int64)
    root.require_group("meta").create_array("episode_ends", shape=ends.shape, dtype="int64")[:] = (
        ends
    )
    return path


KW = dict(horizon=8, n_obs_steps=2, n_action_steps=4, val_ratio=0.2, seed=1, pad_after=3)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("stores")
    eps = _episodes()
    return eps, _write_v3(d / "v3.zarr", eps), _write_dp_v2(d / "v2.zarr", eps)


def test_v2_dp_layout_trains_the_same_as_v3(stores):
    _, v3, v2 = stores
    assert (v2 / ".zgroup").exists() and (v3 / "zarr.json").exists()
    keys = ("state", "keypoint", "img")
    a = WindowDataset(v3, obs_keys=keys, **KW)
    b = WindowDataset(v2, obs_keys=keys, **KW)
    c = WindowDataset(v2, obs_keys=keys, in_memory=False, **KW)
    assert len(a) == len(b) == len(c) > 0
    sa, sb = a.stats(), b.stats()
    for k in sa:
        np.testing.assert_array_equal(sa[k]["min"], sb[k]["min"])
        np.testing.assert_array_equal(sa[k]["max"], sb[k]["max"])
    ra, rb_, rc = (np.random.default_rng(5) for _ in range(3))
    for _ in range(3):
        ba, bb, bc = a.sample_batch(16, ra), b.sample_batch(16, rb_), c.sample_batch(16, rc)
        for other in (bb, bc):
            assert torch.equal(ba["action"], other["action"])
            for k in keys:
                assert torch.equal(ba["obs"][k], other["obs"][k])


def test_items_types_shapes_and_padding(stores):
    eps, v3, _ = stores
    ds = WindowDataset(
        v3,
        obs_keys=("state", "img"),
        val_ratio=0.0,
        **{k: v for k, v in KW.items() if k != "val_ratio"},
    )
    item = ds[0]
    assert item["action"].dtype == torch.float32 and item["action"].shape == (8, 2)
    assert item["obs"]["state"].dtype == torch.float32 and item["obs"]["state"].shape == (8, 5)
    assert item["obs"]["img"].dtype == torch.uint8 and item["obs"]["img"].shape == (8, 8, 8, 3)
    # First window of episode 0: pad_before = To - 1 = 1 repeats frame 0, then frames 0..6.
    expected = eps[0]["state"][[0, 0, 1, 2, 3, 4, 5, 6]]
    np.testing.assert_array_equal(item["obs"]["state"].numpy(), expected)
    # Last window of episode 0 (L=12): starts at L - T + pad_after = 7, rows 7..11 then 11 x3.
    n0 = 12 - 8 + 1 + 3 + 1  # windows of episode 0: starts -1 .. 7
    last = ds[n0 - 1]
    np.testing.assert_array_equal(
        last["action"].numpy(), eps[0]["action"][[7, 8, 9, 10, 11, 11, 11, 11]]
    )
    assert ds[n0]["obs"]["state"][0, 0].item() == 1.0  # the next window is episode 1's first


def test_get_batch_matches_getitem_and_obs_steps_only(stores):
    _, v3, _ = stores
    ds = WindowDataset(v3, obs_keys=("state", "keypoint"), **KW)
    short = WindowDataset(v3, obs_keys=("state", "keypoint"), obs_steps_only=True, **KW)
    idx = np.arange(len(ds))
    batch, batch_short = ds.get_batch(idx), short.get_batch(idx)
    assert batch["obs"]["keypoint"].shape == (len(ds), 8, 9, 2)
    assert batch_short["obs"]["keypoint"].shape == (len(ds), 2, 9, 2)
    for i in (0, 5, len(ds) - 1):
        item = ds[i]
        assert torch.equal(batch["action"][i], item["action"])
        for k in ("state", "keypoint"):
            assert torch.equal(batch["obs"][k][i], item["obs"][k])
            assert torch.equal(batch_short["obs"][k][i], item["obs"][k][:2])
            assert torch.equal(short[i]["obs"][k], item["obs"][k][:2])
    assert torch.equal(batch_short["action"], batch["action"])


def test_split_stats_and_validation_dataset(stores):
    eps, v3, _ = stores
    ds = WindowDataset(v3, obs_keys=("state", "img"), **KW)
    val = ds.get_validation_dataset()
    train_eps = set(
        ds.get_batch(np.arange(len(ds)))["obs"]["state"][:, :, 0].int().unique().tolist()
    )
    val_eps = set(
        val.get_batch(np.arange(len(val)))["obs"]["state"][:, :, 0].int().unique().tolist()
    )
    assert train_eps == set(np.flatnonzero(ds.train_mask).tolist())
    assert val_eps == set(np.flatnonzero(ds.val_mask).tolist()) and len(val_eps) == 2
    assert not train_eps & val_eps
    # Stats: plain min/max over the rows of the training episodes.
    stats = ds.stats()
    for k in ("action", "state", "img"):
        rows = np.concatenate([eps[e][k] for e in sorted(train_eps)])
        np.testing.assert_array_equal(stats[k]["min"], rows.min(axis=0).astype(np.float32))
        np.testing.assert_array_equal(stats[k]["max"], rows.max(axis=0).astype(np.float32))
    assert stats["img"]["min"].shape == (8, 8, 3)
    capped = WindowDataset(v3, obs_keys=("state",), max_train_episodes=3, **KW)
    assert capped.train_mask.sum() == 3 and not (capped.train_mask & ds.val_mask).any()


def test_dataset_argument_errors(stores):
    _, v3, _ = stores
    with pytest.raises(ValueError, match="Ta <= T - To \\+ 1"):
        WindowDataset(v3, horizon=8, n_obs_steps=2, n_action_steps=8)
    with pytest.raises(ValueError, match="data/velocity"):
        WindowDataset(v3, obs_keys=("velocity",))


def _run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "dplite.scripts.dataset", *args], capture_output=True, text=True
    )


def test_cli_validate_and_info(stores, tmp_path):
    _, v3, v2 = stores
    ok = _run_cli("validate", str(v2))
    assert ok.returncode == 0, ok.stderr
    info = _run_cli("info", str(v3))
    assert info.returncode == 0
    assert "episodes    10" in info.stdout and f"steps       {sum(LENGTHS)}" in info.stdout
    assert "min 7 | median 11.5 | max 15" in info.stdout
    bad = tmp_path / "bad.zarr"
    root = zarr.open_group(str(bad), mode="w")
    root.require_group("data").create_array("action", shape=(5, 2), dtype="float32")[:] = np.nan
    root.require_group("meta").create_array("episode_ends", shape=(1,), dtype="int64")[:] = [5]
    res = _run_cli("validate", str(bad))
    assert res.returncode == 1
    assert "data/action" in res.stderr and "NaN" in res.stderr
