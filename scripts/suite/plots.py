"""The suite's figures (PNG, matplotlib, no display needed): training curves and the
inference-steps trade-off of the diffusion policy.

* ``plot_training``: per run, rollout success vs training step (the ``eval_success`` records of
  its metrics.jsonl) and training / validation loss vs step. The two objectives' losses are
  different quantities (noise MSE vs chunk MSE): compare curves within a method, not across.
* ``plot_inference_steps``: success rate (with its 95 % CI) and batch-1 latency against the
  number of network evaluations per action chunk, for DDIM k = 1 ... and DDPM k = K.

``read_metrics`` and ``last_per_step`` read a run's metrics.jsonl (the report's training time
uses them too).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from dplite.policy.checkpoint import atomic_file  # noqa: E402

# one colour family per method, a shade per training seed
METHOD_CMAPS = {"diffusion": "Blues", "diffusion_transformer": "Greens", "mse": "Oranges"}
SAMPLER_MARKERS = {"ddim": "o", "ddpm": "s"}


def read_metrics(path: Path) -> list[dict]:
    """The records of a run's metrics.jsonl (empty when the file is missing)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def last_per_step(records: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key`, sorted by step; a resumed run may log a step twice (the
    steps it redid after its last checkpoint): the later record wins."""
    by_step = {int(r["step"]): float(r[key]) for r in records if r.get(key) is not None}
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def _shade(method: str, i: int, n: int) -> tuple[float, ...]:
    cmap = plt.get_cmap(METHOD_CMAPS.get(method, "Greys"))
    return cmap(0.9 - 0.45 * i / max(1, n - 1))  # dark to medium: light shades are unreadable


def _plain_log_ticks(axis, values: Sequence[float] | None = None) -> None:
    """A log axis labelled 1, 2, 5, 100 rather than 10^0, 2 x 10^0, ..."""
    if values is not None:
        axis.set_major_locator(ticker.FixedLocator(sorted(set(values))))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def plot_training(
    metrics: Mapping[tuple[str, int], Sequence[dict]], out: Path, title: str
) -> Path | None:
    """Success and loss vs step from {(method, training seed): metrics.jsonl records}; None
    (and no file) when no run has logged anything yet."""
    if not any(metrics.values()):
        return None
    fig, (ax_s, ax_l) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for (method, seed), records in sorted(metrics.items()):
        seeds = sorted(k for m, k in metrics if m == method)
        color = _shade(method, seeds.index(seed), len(seeds))
        label = f"{method} seed {seed}"
        steps, success = last_per_step(records, "eval_success")
        if steps:
            ax_s.plot(steps, success, "o-", color=color, label=label)
        steps, loss = last_per_step(records, "loss")
        if steps:
            ax_l.plot(steps, loss, "-", color=color, label=f"{label} train")
        steps, val = last_per_step(records, "val_loss")
        if steps:
            ax_l.plot(steps, val, "--", color=color, label=f"{label} val")
    ax_s.set(xlabel="training step", ylabel="rollout success rate", ylim=(-0.03, 1.03))
    ax_s.set_title("success during training (EMA policy)")
    ax_l.set(xlabel="training step", ylabel="loss", yscale="log")
    _plain_log_ticks(ax_l.yaxis)
    ax_l.set_title("loss (diffusion: noise MSE; mse: chunk MSE)")
    for ax in (ax_s, ax_l):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out)


def plot_inference_steps(results: Sequence[dict], out: Path, title: str) -> Path | None:
    """Success and latency vs network evaluations per chunk, from sweep results (each with
    train_seed, sampler, inference_steps, success_rate, success_ci95, latency_ms)."""
    if not results:
        return None
    fig, (ax_s, ax_t) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    seeds = sorted({r["train_seed"] for r in results})
    for i, seed in enumerate(seeds):
        color = _shade("diffusion", i, len(seeds))
        for sampler, marker in SAMPLER_MARKERS.items():
            rows = sorted(
                (r for r in results if r["train_seed"] == seed and r["sampler"] == sampler),
                key=lambda r: r["inference_steps"],
            )
            if not rows:
                continue
            k = [r["inference_steps"] for r in rows]
            rate = [r["success_rate"] for r in rows]
            below = [p - r["success_ci95"][0] for p, r in zip(rate, rows, strict=True)]
            above = [r["success_ci95"][1] - p for p, r in zip(rate, rows, strict=True)]
            label = f"{sampler.upper()} seed {seed}"
            style = dict(color=color, marker=marker, label=label)
            ax_s.errorbar(k, rate, yerr=[below, above], capsize=3, **style)
            ax_t.plot(k, [r["latency_ms"] for r in rows], **style)
    ax_s.set(xlabel="network evaluations per chunk (k)", ylabel="success rate (95 % CI)")
    ax_s.set(xscale="log", ylim=(-0.03, 1.03))
    ax_t.set(xlabel="network evaluations per chunk (k)", ylabel="latency, batch 1 (ms)")
    ax_t.set(xscale="log", yscale="log")
    ks = [r["inference_steps"] for r in results]
    for ax in (ax_s, ax_t):
        _plain_log_ticks(ax.xaxis, ks)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _plain_log_ticks(ax_t.yaxis)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out)


def _save(fig: plt.Figure, out: Path) -> Path:
    try:
        with atomic_file(out) as tmp:  # never a half-written figure under the final name
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return out


__all__ = ["last_per_step", "plot_inference_steps", "plot_training", "read_metrics"]
