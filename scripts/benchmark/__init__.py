"""Speed benchmarks: policy inference latency, training step time, data and env rates.

    python -m dplite.scripts.benchmark --json outputs/bench.json

Prints one table per section and writes every number (with the machine, versions and date)
as JSON. Numbers are measured here, every run; the project's targets are printed beside them
for comparison only. Run it on a quiet machine: another busy process makes the numbers noise.
The "ddp" section (not in the default set) trains the quickstart UNet for a few hundred steps
on a synthetic dataset with 1 process and under torchrun with 2 and reports samples/s.

Sections: "inference", "vision" and "train" in models.py; "data", "env" and "ddp" in
throughput.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from dplite.envs.options import run_command
from dplite.policy.checkpoint import atomic_write
from dplite.policy.timing import machine
from dplite.scripts.benchmark.models import bench_inference, bench_train, bench_vision
from dplite.scripts.benchmark.throughput import bench_data, bench_ddp, bench_env

SECTIONS = ("inference", "vision", "train", "data", "ddp", "env")


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

    def __post_init__(self) -> None:
        unknown = sorted(set(self.sections) - set(SECTIONS))
        if unknown:
            raise ValueError(f"--sections: unknown {unknown}; choose from {list(SECTIONS)}")


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
    if cfg.json is not None:
        atomic_write(cfg.json, json.dumps(results, indent=2))
        print(f"\nwrote {cfg.json}")
    return results


def cli() -> None:
    run_command(main, Config, "dp-benchmark")


__all__ = ["Config", "cli", "main"]
