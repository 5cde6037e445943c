"""Speed benchmarks: policy inference latency, training step time, data and env rates.

    python -m dplite.scripts.benchmark --json outputs/bench.json

Prints one table per section and writes every number (with the machine, versions, thread
count, date, UTC time and load average) as JSON. Numbers are measured here, every run; the
project's targets are printed beside them for comparison only. Run it on a quiet machine:
another busy process makes the numbers noise.
The "ddp" section (not in the default set) trains the quickstart UNet for a few hundred steps
on a synthetic dataset with 1 process and under torchrun with 2 and reports samples/s. The
"interop" section (not in the default set either; the "interop" extra) times the dataset
conversions, robomimic and LeRobot in and LeRobot out, on a synthetic 2-camera dataset.

The "inference" section times every cell (network, batch, sampler, k) as "plain" (the nn
layers alone), "eager" (the shipped fast layers) and the backends --backend names ("onnx":
ONNX Runtime, the "onnx" extra; "bf16": bfloat16 autocast), in turns, and prints each one's
ratio to plain; --networks, --batches and --samplers choose the cells. --rtc adds real-time
chunking's calls to the DDIM and DDPM cells, as ratios to eager.

Sections: "inference", "vision" and "train" in models.py; "data", "env" and "ddp" in
throughput.py; "interop" in interop.py.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from dplite.envs.options import run_command
from dplite.policy.checkpoint import atomic_write
from dplite.policy.onnx_denoiser import import_onnxruntime
from dplite.policy.timing import machine
from dplite.scripts.benchmark.interop import bench_interop
from dplite.scripts.benchmark.models import (
    BATCHES,
    NETWORKS,
    SAMPLERS,
    bench_inference,
    bench_train,
    bench_vision,
)
from dplite.scripts.benchmark.throughput import bench_data, bench_ddp, bench_env

SECTIONS = ("inference", "vision", "train", "data", "ddp", "env", "interop")


@dataclass
class Config:
    json: Path | None = None
    """Write all results here."""
    sections: tuple[str, ...] = ("inference", "vision", "train", "data", "env")
    """Which benchmarks to run (also "ddp": 1 vs N training processes; "interop": the dataset
    conversions)."""
    repeats: int = 7
    """Timed repetitions per inference case (the median is reported)."""
    train_steps: int = 5
    """Timed optimizer steps per training case."""
    threads: int | None = None
    """torch threads (default: torch's choice, one per core)."""
    device: str = "cpu"
    """Device for the inference and train sections ('cuda' on a GPU machine)."""
    backend: tuple[Literal["eager", "onnx", "bf16"], ...] = ("eager",)
    """Backends the inference section also times in every cell, next to plain and eager (the
    shipped fast layers): onnx (ONNX Runtime, the 'onnx' extra; CPU only), bf16 (bfloat16
    autocast, DiffusionPolicy.use_backend)."""
    networks: tuple[str, ...] = tuple(NETWORKS)
    """Inference section: the networks timed."""
    batches: tuple[int, ...] = BATCHES
    """Inference section: the batch sizes timed."""
    samplers: tuple[str, ...] = tuple(f"{s}:{k}" for s, k in SAMPLERS)
    """Inference section: the samplers timed, as NAME:K (consistency: the distilled form)."""
    rtc: bool = False
    """Inference section: also time real-time chunking's call (a prefix of 4 frozen and 4 soft
    actions, by guidance and by inpainting) in the DDIM and DDPM cells, as a ratio to eager."""
    ddp_procs: tuple[int, ...] = (1, 2)
    """Process counts for the "ddp" section (each gets cores / N threads)."""
    ddp_steps: int = 200
    """Optimizer steps per "ddp" run (the second half is timed)."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.sections) - set(SECTIONS))
        if unknown:
            raise ValueError(f"--sections: unknown {unknown}; choose from {list(SECTIONS)}")


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


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


def _samplers(specs: tuple[str, ...]) -> list[tuple[str, int]]:
    """--samplers NAME:K ... as (name, k) pairs; a malformed one is refused."""
    pairs = []
    for spec in specs:
        name, _, k = spec.partition(":")
        if name not in ("ddpm", "ddim", "consistency") or not k.isdigit() or int(k) < 1:
            raise ValueError(
                f"--samplers: {spec!r} is not NAME:K with NAME ddpm, ddim or consistency and K >= 1"
            )
        pairs.append((name, int(k)))
    return pairs


def main(cfg: Config) -> dict:
    unknown = sorted(set(cfg.networks) - set(NETWORKS))
    if unknown:
        raise ValueError(f"--networks: unknown {unknown}; choose from {list(NETWORKS)}")
    if not cfg.batches or min(cfg.batches) < 1:
        raise ValueError(f"--batches must be >= 1, got {list(cfg.batches)}")
    samplers = _samplers(cfg.samplers)
    if "onnx" in cfg.backend:  # refused before any section runs
        if torch.device(cfg.device).type != "cpu":
            raise ValueError(f"--backend onnx runs on the CPU, not --device {cfg.device}")
        import_onnxruntime()  # names the extra to install
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # machine() has the date and torch's thread count; the hour tells runs of one day apart,
    # and the load average whether other work shared the CPU
    results: dict = {
        "machine": {**machine(), "utc": _utc_now(), "load_average_1m": os.getloadavg()[0]}
    }
    if "onnx" in cfg.backend:
        results["machine"]["onnxruntime"] = import_onnxruntime().__version__
    print("machine:", ", ".join(f"{k}={v}" for k, v in results["machine"].items()))
    if "inference" in cfg.sections:
        results["inference"] = bench_inference(
            cfg.repeats, cfg.device, cfg.backend, cfg.networks, cfg.batches, samplers, cfg.rtc
        )
        _table(
            "predict_action latency (median ms, T=16, To=2, cond 40; MODE/plain: its ratio to "
            "plain in the same cell)",
            results["inference"],
        )
    if "vision" in cfg.sections:
        results["vision"] = bench_vision(cfg.repeats, cfg.train_steps, cfg.device)
        _table(
            "image policy, PushT image setting (96 px -> 84 crop + agent_pos)", results["vision"]
        )
    if "train" in cfg.sections:
        results["train"] = bench_train(cfg.train_steps, cfg.device)
        _table("training step (median ms, batch 256, AdamW)", results["train"])
    if "data" in cfg.sections:
        results["data"] = bench_data()
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
    if "interop" in cfg.sections:
        results["interop"] = bench_interop()
        _table(
            "dataset conversions: 200 episodes x 40 steps, two 84 px cameras (target: import "
            ">= 2,000 frames/s, export >= 500, peak <= 1 GiB)",
            results["interop"],
        )
    if cfg.json is not None:
        atomic_write(cfg.json, json.dumps(results, indent=2))
        print(f"\nwrote {cfg.json}")
    return results


def cli() -> None:
    run_command(main, Config, "dp-benchmark")


__all__ = ["Config", "cli", "main"]
