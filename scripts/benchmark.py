"""Speed benchmarks: policy inference latency, training step time, data and env rates.

    python -m dplite.scripts.benchmark --json outputs/bench.json

Prints one table per section and writes every number (with the machine, versions and date)
as JSON. Numbers are measured here, every run; the project's targets are printed beside them
for comparison only. Run it on a quiet machine: another busy process makes the numbers noise.
The "ddp" section (not in the default set) trains the quickstart UNet for a few hundred steps
on a synthetic dataset with 1 process and under torchrun with 2 and reports samples/s.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from dplite.policy.diffusion import DiffusionPolicy, PolicyConfig
from dplite.policy.fast_layers import fast_paths_disabled
from dplite.policy.timing import machine, median_ms

# the reference PushT low-dim setting: keypoints (9, 2) + agent position, To = 2 -> cond 40
OBS_SHAPES = {"keypoint": (9, 2), "agent_pos": (2,)}
SIZES = {"65.8M": (256, 512, 1024), "5.4M": (64, 128, 256)}
LATENCY_TARGET_MS = {
    ("65.8M", 1, "ddim", 10): 120.0,
    ("5.4M", 1, "ddim", 10): 15.0,
    ("65.8M", 1, "consistency", 1): 25.0,
    ("5.4M", 1, "consistency", 1): 10.0,
}


@dataclass
class Config:
    json: Path | None = None
    """Write all results here."""
    sections: tuple[str, ...] = ("inference", "vision", "train", "data", "env")
    """Which benchmarks to run (also "ddp": 1 vs N training processes)."""
    repeats: int = 7
    """Timed repetitions per inference case (the median is reported)."""
    train_steps: int = 5
    """Timed optimizer steps per training case."""
    threads: int | None = None
    """torch threads (default: torch's choice, one per core)."""
    device: str = "cpu"
    """Device for the inference and train sections ('cuda' on a GPU machine)."""
    ddp_procs: tuple[int, ...] = (1, 2)
    """Process counts for the "ddp" section (each gets cores / N threads)."""
    ddp_steps: int = 200
    """Optimizer steps per "ddp" run (the second half is timed)."""


def _policy(down_dims, distilled: bool = False) -> DiffusionPolicy:
    """A PushT-shaped policy; `distilled`: its consistency-distilled form (same network)."""
    grid = tuple(range(90, -1, -10))
    extra = dict(consistency_timesteps=grid, sampler="consistency", num_inference_steps=1)
    cfg = PolicyConfig(
        obs_shapes=OBS_SHAPES, action_dim=2, down_dims=down_dims, **(extra if distilled else {})
    )
    return DiffusionPolicy(cfg)


def bench_inference(repeats: int, device: str = "cpu") -> list[dict]:
    """predict_action latency: DDIM 10 and DDPM 100 of a trained policy, and 1 and 2 steps of
    its consistency-distilled form (the same network; weights do not change the cost).

    Modes: "eager" is predict_action as shipped (with the fast layers); "plain" the same call
    with every fast path off (policy.fast_layers.fast_paths_disabled: the nn layers alone, the
    baseline; batch 1, not DDPM); on CUDA, "graph" replays the loop as a CUDA graph
    (DiffusionPolicy.use_cuda_graphs), captured in the warm-up call."""
    modes = (
        ("plain", "eager", "graph") if torch.device(device).type == "cuda" else ("plain", "eager")
    )
    rows = []
    for name, dims in SIZES.items():
        policies = {
            "diffusion": _policy(dims).to(device).eval(),
            "distilled": _policy(dims, distilled=True).to(device).eval(),
        }
        for batch in (1, 50):
            obs = {k: torch.randn(batch, 2, *s, device=device) for k, s in OBS_SHAPES.items()}
            for sampler, k in (("ddim", 10), ("ddpm", 100), ("consistency", 1), ("consistency", 2)):
                policy = policies["distilled" if sampler == "consistency" else "diffusion"]
                reps = repeats if k <= 10 or batch == 1 else max(1, repeats // 3)

                def call(policy=policy, obs=obs, sampler=sampler, k=k):
                    return policy.predict_action(obs, sampler, k)

                for mode in modes:
                    if mode == "plain" and (batch > 1 or sampler == "ddpm"):
                        continue
                    policy.use_cuda_graphs(mode == "graph")
                    switch = fast_paths_disabled() if mode == "plain" else contextlib.nullcontext()
                    with switch:
                        ms = median_ms(call, reps, warmup=1)
                    policy.use_cuda_graphs(False)
                    rows.append(
                        {
                            "model": name,
                            "batch": batch,
                            "sampler": sampler,
                            "k": k,
                            "mode": mode,
                            "ms": ms,
                            "target_ms": LATENCY_TARGET_MS.get((name, batch, sampler, k)),
                        }
                    )
    return rows


def bench_vision(repeats: int, steps: int, device: str = "cpu") -> list[dict]:
    """Image policies in the PushT image setting (96 x 96 camera cropped to 84 + agent
    position, To = 2, the training default 1.2 M UNet): predict_action at batch 1 (DDIM 10)
    and training samples/s at batch 64, per camera backbone."""
    from dplite.policy.encoders import CameraConfig

    rows = []
    dev = torch.device(device)
    for backbone in ("small", "resnet18"):
        cfg = PolicyConfig(
            obs_shapes={"img": (96, 96, 3), "agent_pos": (2,)},
            cameras={"img": CameraConfig(backbone=backbone, crop_size=(84, 84))},
            action_dim=2,
            down_dims=(32, 64, 128),
            diffusion_step_embed_dim=64,
        )
        policy = DiffusionPolicy(cfg).to(dev)

        def obs(batch: int) -> dict:
            img = torch.randint(0, 256, (batch, 2, 96, 96, 3), dtype=torch.uint8, device=dev)
            return {"img": img, "agent_pos": torch.randn(batch, 2, 2, device=dev)}

        one = obs(1)
        policy.eval()
        latency = median_ms(lambda p=policy, o=one: p.predict_action(o, "ddim", 10), repeats)
        policy.train()
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
        batch = {"obs": obs(64), "action": torch.randn(64, 16, 2, device=dev)}

        def step(policy=policy, opt=opt, batch=batch):
            opt.zero_grad(set_to_none=True)
            policy.compute_loss(batch).backward()
            opt.step()

        step_ms = median_ms(step, steps, warmup=1)
        rows.append(
            {
                "backbone": backbone,
                "params_M": sum(p.numel() for p in policy.parameters()) / 1e6,
                "predict_ms_b1_ddim10": latency,
                "train_step_ms_b64": step_ms,
                "train_samples_per_s": 64 * 1000 / step_ms,
            }
        )
    return rows


def bench_train(steps: int, device: str = "cpu") -> list[dict]:
    rows = []
    batch_size = 256
    dev = torch.device(device)
    for name, dims in SIZES.items():
        for amp in (False, True):
            policy = _policy(dims).to(dev).train()
            opt = torch.optim.AdamW(policy.net.parameters(), lr=1e-4)
            batch = {
                "obs": {
                    k: torch.randn(batch_size, 2, *s, device=dev) for k, s in OBS_SHAPES.items()
                },
                "action": torch.randn(batch_size, 16, 2, device=dev),
            }

            def step(policy=policy, opt=opt, batch=batch, amp=amp):
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                    loss = policy.compute_loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            ms = median_ms(step, steps, warmup=2)
            rows.append(
                {
                    "model": name,
                    "batch": batch_size,
                    "precision": "bf16" if amp else "fp32",
                    "ms_per_step": ms,
                    "samples_per_s": batch_size / ms * 1000,
                }
            )
    return rows


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
    from dplite.scripts.bench_data import _write

    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synthetic.zarr"
        _write(data, n_episodes=100, mean_len=120, image=False, seed=0)
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


def _table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    cols = list(rows[0])
    fmt = [max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, fmt, strict=True)))
    for r in rows:
        print("  ".join(_fmt(r[c]).ljust(w) for c, w in zip(cols, fmt, strict=True)))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}" if v >= 10 else f"{v:.2f}"
    return str(v)


def main(cfg: Config) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    results: dict = {"machine": machine()}
    print("machine:", ", ".join(f"{k}={v}" for k, v in results["machine"].items()))
    if "inference" in cfg.sections:
        results["inference"] = bench_inference(cfg.repeats, cfg.device)
        _table("predict_action latency (median ms, T=16, To=2, cond 40)", results["inference"])
    if "vision" in cfg.sections:
        results["vision"] = bench_vision(cfg.repeats, cfg.train_steps, cfg.device)
        _table(
            "image policy, PushT image setting (96 px -> 84 crop + agent_pos)", results["vision"]
        )
    if "train" in cfg.sections:
        results["train"] = bench_train(cfg.train_steps, cfg.device)
        _table("training step (median ms, batch 256, AdamW)", results["train"])
    if "data" in cfg.sections:
        from dplite.scripts.bench_data import benchmark_sampler

        results["data"] = benchmark_sampler()
        _table(
            "data windows/s (target >= 50,000 low-dim)",
            [{"what": k, "value": v} for k, v in results["data"].items()],
        )
    if "ddp" in cfg.sections:
        results["ddp"] = bench_ddp(cfg.ddp_procs, cfg.ddp_steps)
        _table("training samples/s, 1.2 M UNet, global batch 256, 1 vs N processes", results["ddp"])
    if "env" in cfg.sections:
        results["env"] = bench_env()
        _table("env steps/s (random actions)", results["env"])
    if cfg.json is not None:
        cfg.json.parent.mkdir(parents=True, exist_ok=True)
        cfg.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {cfg.json}")
    return results


def cli() -> None:
    main(tyro.cli(Config))


if __name__ == "__main__":
    cli()
