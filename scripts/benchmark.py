"""Speed benchmarks: policy inference latency, training step time, data and env rates.

    python -m scripts.benchmark --json outputs/bench.json

Prints one table per section and writes every number (with the machine, versions and date)
as JSON. Numbers are measured here, every run; DESIGN.md's targets are printed beside them
for comparison only. Run it on a quiet machine: another busy process makes the numbers noise.
"""

from __future__ import annotations

import datetime
import json
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from policy.diffusion import DiffusionPolicy, PolicyConfig

# the reference PushT low-dim setting: keypoints (9, 2) + agent position, To = 2 -> cond 40
OBS_SHAPES = {"keypoint": (9, 2), "agent_pos": (2,)}
SIZES = {"65.8M": (256, 512, 1024), "5.4M": (64, 128, 256)}
LATENCY_TARGET_MS = {("65.8M", 1, "ddim", 10): 120.0, ("5.4M", 1, "ddim", 10): 15.0}


@dataclass
class Config:
    json: Path | None = None
    """Write all results here."""
    sections: tuple[str, ...] = ("inference", "train", "data", "env")
    """Which benchmarks to run."""
    repeats: int = 7
    """Timed repetitions per inference case (the median is reported)."""
    train_steps: int = 5
    """Timed optimizer steps per training case."""
    threads: int | None = None
    """torch threads (default: torch's choice, one per core)."""


def _median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _policy(down_dims) -> DiffusionPolicy:
    cfg = PolicyConfig(obs_shapes=OBS_SHAPES, action_dim=2, down_dims=down_dims)
    return DiffusionPolicy(cfg)


def bench_inference(repeats: int) -> list[dict]:
    rows = []
    for name, dims in SIZES.items():
        policy = _policy(dims).eval()
        for batch in (1, 50):
            obs = {k: torch.randn(batch, 2, *s) for k, s in OBS_SHAPES.items()}
            for sampler, k in (("ddim", 10), ("ddpm", 100)):
                reps = repeats if k == 10 or batch == 1 else max(1, repeats // 3)

                def call(policy=policy, obs=obs, sampler=sampler, k=k):
                    return policy.predict_action(obs, sampler, k)

                ms = _median_ms(call, reps, warmup=1)
                rows.append(
                    {
                        "model": name,
                        "batch": batch,
                        "sampler": sampler,
                        "k": k,
                        "ms": ms,
                        "target_ms": LATENCY_TARGET_MS.get((name, batch, sampler, k)),
                    }
                )
    return rows


def bench_train(steps: int) -> list[dict]:
    rows = []
    batch_size = 256
    for name, dims in SIZES.items():
        for amp in (False, True):
            policy = _policy(dims).train()
            opt = torch.optim.AdamW(policy.net.parameters(), lr=1e-4)
            batch = {
                "obs": {k: torch.randn(batch_size, 2, *s) for k, s in OBS_SHAPES.items()},
                "action": torch.randn(batch_size, 16, 2),
            }

            def step(policy=policy, opt=opt, batch=batch, amp=amp):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                    loss = policy.compute_loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            ms = _median_ms(step, steps, warmup=2)
            rows.append(
                {
                    "model": name,
                    "batch": batch_size,
                    "precision": "bf16" if amp else "fp32",
                    "ms_per_step": ms,
                }
            )
    return rows


def bench_env(steps: int = 2000) -> list[dict]:
    import gymnasium as gym

    import envs  # noqa: F401  (registers PushT-v0)

    rows = []
    for mode in ("state", "keypoint", "image"):
        env = gym.make("PushT-v0", obs_mode=mode)
        env.reset(seed=0)
        rng = np.random.default_rng(0)
        n = steps if mode != "image" else steps // 4
        t0 = time.perf_counter()
        for _ in range(n):
            _, _, term, trunc, _ = env.step(rng.uniform(0, 512, 2).astype(np.float32))
            if term or trunc:
                env.reset()
        rows.append({"obs_mode": mode, "steps_per_s": n / (time.perf_counter() - t0)})
        env.close()
    return rows


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.is_available(),
        "date": datetime.date.today().isoformat(),
    }


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
        results["inference"] = bench_inference(cfg.repeats)
        _table("predict_action latency (median ms, T=16, To=2, cond 40)", results["inference"])
    if "train" in cfg.sections:
        results["train"] = bench_train(cfg.train_steps)
        _table("training step (median ms, batch 256, AdamW)", results["train"])
    if "data" in cfg.sections:
        from scripts.bench_data import benchmark_sampler

        results["data"] = benchmark_sampler()
        _table(
            "data windows/s (target >= 50,000 low-dim)",
            [{"what": k, "value": v} for k, v in results["data"].items()],
        )
    if "env" in cfg.sections:
        results["env"] = bench_env()
        _table("PushT env steps/s (random actions)", results["env"])
    if cfg.json is not None:
        cfg.json.parent.mkdir(parents=True, exist_ok=True)
        cfg.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {cfg.json}")
    return results


def cli() -> None:
    main(tyro.cli(Config))


if __name__ == "__main__":
    cli()
