"""Window throughput of the data path (DESIGN target: >= 50,000 low-dim windows/s).

`benchmark_sampler` writes a synthetic PushT-shaped dataset (action (2,), state (5,),
keypoint (9, 2); episodes of ~120 steps) into a temporary directory, opens it the way
training does (WindowDataset, in memory) and times `sample_batch`, which is `get_batch` on
random window indices: one vectorised fancy index per key. A second, smaller dataset with
96 x 96 x 3 uint8 frames measures image windows (full T frames and the To frames that
obs_steps_only fetches). scripts/benchmark.py imports it; it also runs alone:

    python -m dplite.scripts.bench_data
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from dplite.data.dataset import WindowDataset
from dplite.data.replay_buffer import ReplayBuffer


def _write(path: Path, n_episodes: int, mean_len: int, image: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rb = ReplayBuffer.create(path)
    for e in range(n_episodes):
        length = int(rng.integers(int(mean_len * 0.75), int(mean_len * 1.25) + 1))
        ep = {
            "action": rng.uniform(0, 512, size=(length, 2)).astype(np.float32),
            "state": rng.uniform(0, 512, size=(length, 5)).astype(np.float32),
            "keypoint": rng.uniform(0, 512, size=(length, 9, 2)).astype(np.float32),
        }
        if image:
            ep["img"] = rng.integers(0, 256, size=(length, 96, 96, 3), dtype=np.uint8)
        rb.add_episode(ep, {"seed": e})


def _rate(ds: WindowDataset, batch_size: int, min_seconds: float, seed: int) -> float:
    """Windows per second of ds.sample_batch, timed over at least min_seconds."""
    rng = np.random.default_rng(seed)
    ds.sample_batch(batch_size, rng)  # warm-up
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds:
        ds.sample_batch(batch_size, rng)
        n += 1
    return n * batch_size / elapsed


def benchmark_sampler(
    n_episodes: int = 200,
    episode_len: int = 120,
    n_image_episodes: int = 20,
    batch_size: int = 256,
    horizon: int = 16,
    n_obs_steps: int = 2,
    n_action_steps: int = 8,
    min_seconds: float = 1.0,
    seed: int = 0,
) -> dict[str, float]:
    """Measure data-path throughput; returns a flat dict of numbers (rates in windows/s)."""
    kw = dict(horizon=horizon, n_obs_steps=n_obs_steps, n_action_steps=n_action_steps, seed=seed)
    out: dict[str, float] = {"batch_size": batch_size, "horizon": horizon}
    with tempfile.TemporaryDirectory() as tmp:
        low = Path(tmp) / "lowdim.zarr"
        t0 = time.perf_counter()
        _write(low, n_episodes, episode_len, image=False, seed=seed)
        out["lowdim_write_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds = WindowDataset(low, obs_keys=("state", "keypoint"), **kw)
        out["lowdim_open_s"] = time.perf_counter() - t0
        out["lowdim_episodes"] = n_episodes
        out["lowdim_windows"] = len(ds)
        out["lowdim_windows_per_s"] = _rate(ds, batch_size, min_seconds, seed)

        img = Path(tmp) / "image.zarr"
        _write(img, n_image_episodes, episode_len, image=True, seed=seed)
        t0 = time.perf_counter()
        ds_img = WindowDataset(img, obs_keys=("img", "state"), **kw)
        out["image_open_s"] = time.perf_counter() - t0
        out["image_episodes"] = n_image_episodes
        out["image_windows_per_s"] = _rate(ds_img, batch_size, min_seconds, seed)
        ds_img_to = WindowDataset(img, obs_keys=("img", "state"), obs_steps_only=True, **kw)
        out["image_obs_steps_only_windows_per_s"] = _rate(ds_img_to, batch_size, min_seconds, seed)
        ds_img_zarr = WindowDataset(img, obs_keys=("img", "state"), in_memory=False, **kw)
        out["image_from_zarr_windows_per_s"] = _rate(ds_img_zarr, batch_size, min_seconds / 2, seed)
    return out


if __name__ == "__main__":
    print(json.dumps(benchmark_sampler(), indent=2))
