"""The "interop" section of dp-benchmark: frames/s, CPU time and peak memory of the dataset
conversions (data/robomimic.py, data/lerobot.py) on a synthetic camera dataset.

The dataset is a robomimic hdf5 file of ``n_episodes`` episodes of ``length`` steps with two
``size`` px cameras (agentview and eye-in-hand, uint8 HWC) and robomimic's low-dim keys. Its
frames are runs of consecutive frames rendered by PandaLift-v0's two cameras, so that zarr's
compressor and the video codec see a rendered scene (random or synthetic images compress far
worse and would time the codec instead of the conversion). "frames" counts steps, each with
one image per camera. The three conversions run one after another, each in a fresh Python
process, so that each one's peak memory is its own:

    import robomimic  (hdf5 -> zarr)
    export lerobot    (that zarr -> LeRobotDataset v3.0, AV1 video)
    import lerobot    (that LeRobotDataset -> zarr, decoding the video)

Wall and CPU seconds cover the conversion call alone (not the interpreter's start or imports);
CPU seconds are the process's user + system time over all its threads; peak memory is the
process's maximum resident set. Needs the "interop" extra.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CAMERAS = ("agentview_image", "robot0_eye_in_hand_image")
FRAME_POOL = 120  # rendered steps the episodes' frames are cut from


def rendered_frames(n: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """{camera: (n, size, size, 3) uint8}: PandaLift-v0's front and wrist cameras over n steps
    of random actions, centre-cropped to size px (at most 96): frames that compress like a
    rendered scene does (zarr's codec and the video encoder both depend on it)."""
    import gymnasium as gym

    from dplite import envs  # noqa: F401  (registers PandaLift-v0)

    env = gym.make("PandaLift-v0", obs_mode="image")
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    frames: dict[str, list[np.ndarray]] = {"front_img": [], "wrist_img": []}
    for _ in range(n):
        for k, v in frames.items():
            v.append(obs[k])
        obs, *_ = env.step(env.action_space.sample())
    env.close()
    out = {}
    for cam, v in zip(CAMERAS, frames.values(), strict=True):
        full = np.stack(v)  # (n, 96, 96, 3)
        top = (full.shape[1] - size) // 2
        out[cam] = np.ascontiguousarray(full[:, top : top + size, top : top + size])
    return out


def write_robomimic(path: Path, n_episodes: int, length: int, size: int, seed: int = 0) -> int:
    """The synthetic robomimic file of the module docstring; returns its number of frames."""
    import h5py

    rng = np.random.default_rng(seed)
    n_pool = max(FRAME_POOL, length)  # every episode's run fits in the pool
    pool = rendered_frames(n_pool, size, seed)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Synthetic", "type": 1, "env_kwargs": {}})
        for e in range(n_episodes):
            demo = data.create_group(f"demo_{e}")
            demo.attrs["num_samples"] = length
            demo["actions"] = rng.uniform(-1, 1, (length, 7))
            obs = demo.create_group("obs")
            start = int(rng.integers(0, n_pool - length + 1))  # a run of consecutive frames
            for cam in CAMERAS:
                obs[cam] = pool[cam][start : start + length]
            obs["robot0_eef_pos"] = rng.normal(size=(length, 3))
            obs["robot0_eef_quat"] = rng.normal(size=(length, 4))
            obs["robot0_gripper_qpos"] = rng.normal(size=(length, 2))
            obs["object"] = rng.normal(size=(length, 10))
        data.attrs["total"] = n_episodes * length
    return n_episodes * length


def _child(command: str, src: str, out: str) -> None:
    """Run one conversion and print its wall / CPU seconds and peak memory as JSON."""
    from dplite.data.lerobot import export_lerobot, import_lerobot
    from dplite.data.robomimic import import_robomimic

    run = {
        "import robomimic": lambda: import_robomimic(src, out),
        "export lerobot": lambda: export_lerobot(src, out, fps=20),
        "import lerobot": lambda: import_lerobot(src, out),
    }[command]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    run()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    # VmHWM: this program's peak resident memory (ru_maxrss would include the parent's, from
    # before the exec)
    status = Path("/proc/self/status").read_text().splitlines()
    peak_kb = next((int(x.split()[1]) for x in status if x.startswith("VmHWM:")), None)
    if peak_kb is None:  # not Linux; macOS counts ru_maxrss in bytes
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    peak_mb = peak_kb / 1024
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_mb": peak_mb}))


def _measure(command: str, src: Path, out: Path) -> dict:
    code = "import sys; from dplite.scripts.benchmark.interop import _child; _child(*sys.argv[1:])"
    proc = subprocess.run(
        [sys.executable, "-c", code, command, str(src), str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_interop(n_episodes: int = 200, length: int = 40, size: int = 84) -> list[dict]:
    """One row per conversion (see the module docstring)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frames = write_robomimic(tmp / "demo.hdf5", n_episodes, length, size)
        steps = [
            ("import robomimic", tmp / "demo.hdf5", tmp / "imported.zarr"),
            ("export lerobot", tmp / "imported.zarr", tmp / "lerobot"),
            ("import lerobot", tmp / "lerobot", tmp / "reimported.zarr"),
        ]
        for command, src, out in steps:
            m = _measure(command, src, out)
            rows.append(
                {
                    "conversion": command,
                    "frames": frames,
                    "frames/s": frames / m["wall_s"],
                    "CPU s": m["cpu_s"],
                    "frames per CPU s": frames / m["cpu_s"],
                    "peak MB": m["peak_mb"],
                }
            )
    return rows


__all__ = ["bench_interop", "rendered_frames", "write_robomimic"]
