"""Throughput benchmarks of dp-benchmark: the data path ("data": windows/s of WindowDataset
on a synthetic dataset), the environments ("env": steps/s with random actions) and training
with 1 vs N processes ("ddp").

The synthetic dataset is PushT-shaped (action (2,), state (5,), keypoint (9, 2); episodes of
~120 steps, optionally with 96 x 96 x 3 uint8 frames). ``bench_data`` opens it the way
training does (WindowDataset, in memory) and times ``sample_batch``, which is ``get_batch`` on
random window indices: one vectorised fancy index per key (DESIGN target: >= 50,000 low-dim
windows/s); image windows are timed with full T frames, with the To frames that
obs_steps_only fetches, and read from zarr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dplite.data.dataset import WindowDataset
from dplite.data.replay_buffer import ReplayBuffer


def write_synthetic(path: Path, n_episodes: int, mean_len: int, image: bool, seed: int) -> None:
    """A PushT-shaped dataset of random numbers (see the module docstring)."""
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


def bench_data(
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
        write_synthetic(low, n_episodes, episode_len, image=False, seed=seed)
        out["lowdim_write_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds = WindowDataset(low, obs_keys=("state", "keypoint"), **kw)
        out["lowdim_open_s"] = time.perf_counter() - t0
        out["lowdim_episodes"] = n_episodes
        out["lowdim_windows"] = len(ds)
        out["lowdim_windows_per_s"] = _rate(ds, batch_size, min_seconds, seed)

        img = Path(tmp) / "image.zarr"
        write_synthetic(img, n_image_episodes, episode_len, image=True, seed=seed)
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


def bench_env(steps: int = 2000) -> list[dict]:
    """Env steps/s with uniform random actions, per environment and observation mode."""
    import gymnasium as gym

    from dplite import envs  # noqa: F401  (registers PushT-v0 and the Panda ids)

    rows = []
    for env_id, modes in (
        ("PushT-v0", ("state", "keypoint", "image")),
        ("PandaLift-v0", ("state", "image")),
        ("PandaStack-v0", ("state", "image")),
    ):
        for mode in modes:
            env = gym.make(env_id, obs_mode=mode)
            env.reset(seed=0)
            space = env.action_space
            rng = np.random.default_rng(0)
            n = steps if mode != "image" else steps // 4
            t0 = time.perf_counter()
            for _ in range(n):
                action = rng.uniform(space.low, space.high).astype(np.float32)
                _, _, term, trunc, _ = env.step(action)
                if term or trunc:
                    env.reset()
            rows.append(
                {"env": env_id, "obs_mode": mode, "steps_per_s": n / (time.perf_counter() - t0)}
            )
            env.close()
    return rows


def bench_ddp(procs: tuple[int, ...], steps: int, batch: int = 256) -> list[dict]:
    """dplite.scripts.train end to end (data, loss, backward, all-reduce, AdamW, EMA) with N
    processes on a synthetic PushT-shaped dataset; it/s from the run's second log interval."""
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synthetic.zarr"
        write_synthetic(data, n_episodes=100, mean_len=120, image=False, seed=0)
        for n in procs:
            out = Path(tmp) / f"run{n}"
            args = ["-m", "dplite.scripts.train", "--dataset", str(data), "--out", str(out),
                    "--task", "pusht_state", "--obs-keys", "state", "--action-anchor", "none",
                    "--steps", str(steps), "--log-every", str(steps // 2), "--eval-every", "-1",
                    "--save-every", str(steps), "--val-ratio", "0", "--batch-size", str(batch),
                    "--device", "cpu", "--no-progress"]  # fmt: skip
            if n > 1:
                launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]
                args = [*launcher, *args]
            threads = max(1, cores // n)
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": ""}
            subprocess.run([sys.executable, *args], env=env, check=True, capture_output=True)
            logs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            it_s = logs[-1]["it_s"]
            rows.append(
                {"processes": n, "threads each": threads, "step ms": 1000 / it_s,
                 "samples/s": it_s * batch}
            )  # fmt: skip
    return rows


__all__ = ["bench_data", "bench_ddp", "bench_env", "write_synthetic"]
