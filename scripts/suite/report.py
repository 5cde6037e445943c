"""The suite's report: the leaderboard (leaderboard.json with every row, leaderboard.md with a
table per task), the means over training seeds, the plots, and the training time of a run.

With --anchor-last-k K every learned row carries ``anchor``: the scores (success rate, mean max
reward) of the run's last K checkpoints in training order, and their max and mean
(envs.metrics.anchor_metric of that one seed); a mean row carries anchor_metric over its seeds,
the Diffusion Policy paper's "max / avg of last K". The table shows them as "max / mean".
Action jerk columns (boundary, within) appear for a task when any of its rows has them, and a
"successes by outcome" column (e.g. Panda stack's order) when any has success_by_outcome.

Training time is read from the run's metrics.jsonl: the sum over log intervals of
steps / it_s, i.e. optimizer steps, validation loss and checkpoint writes, without the rollout
checks during training (those are ``train_rollout_eval_s``). It survives resumes, unlike a
timer around the training command.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dplite.envs.metrics import anchor_metric
from dplite.envs.rollout import ChunkExecution, wilson_interval
from dplite.envs.tasks import output_name
from dplite.policy.checkpoint import atomic_write
from dplite.policy.timing import cpu_model
from dplite.scripts.suite.plots import (
    last_per_step,
    plot_inference_steps,
    plot_training,
    read_metrics,
)

if TYPE_CHECKING:
    from dplite.scripts.suite.pipeline import Suite

CAPTIONS = {
    "training": "success and loss vs training step",
    "inference_steps": "diffusion policy: success and latency vs inference steps",
}
ANCHOR_SCORES = ("success_rate", "mean_max_reward")  # the numbers the anchor metric reduces
JERKS = ("boundary_jerk", "within_jerk")


def training_time(run: Path) -> dict[str, Any]:
    """Training wall time of a run from its metrics.jsonl (see the module docstring)."""
    records = read_metrics(run / "metrics.jsonl")
    steps, rates = last_per_step(records, "it_s")
    total, prev = 0.0, 0
    for step, rate in zip(steps, rates, strict=True):
        total += (step - prev) / rate  # the interval's steps at its measured rate
        prev = step
    return {
        "train_time_s": total,
        "train_time_source": "metrics.jsonl: sum of steps / it_s per log interval",
        "train_steps": prev,
        "train_rollout_eval_s": sum(last_per_step(records, "eval_s")[1]),
    }


def machine(device: torch.device) -> str:
    """CPU model and core count, and the GPU when one is used."""
    text = f"{cpu_model()}, {os.cpu_count()} CPUs"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


# ---------------------------------------------------------------------------------- gather


def rows(suite: Suite) -> list[dict]:
    """Every result of this configuration, in table order (task, method, seed); learned rows
    carry their anchor metric when the suite computes one."""
    out = []
    for spec in suite.specs.values():
        task = output_name(spec)
        for method in suite.cfg.methods:
            seeds = suite.cfg.train_seeds if method in suite.learned() else (None,)
            for seed in seeds:
                path = suite.layout.result(task, method, seed)
                row = {**json.loads(path.read_text()), "result": str(path)}
                if seed is not None and suite.anchor_steps():
                    row["anchor"] = seed_anchor(suite, task, method, seed)
                out.append(row)
    return out


def seed_anchor(suite: Suite, task: str, method: str, seed: int) -> dict[str, Any]:
    """One run's anchor record: per score, its last K checkpoints' values and their max and
    mean (None where a checkpoint's result lacks the score)."""
    steps = suite.anchor_steps()
    paths = [suite.layout.anchor(task, method, seed, step) for step in steps]
    results = [json.loads(p.read_text()) for p in paths]
    record: dict[str, Any] = {
        "last_k": len(steps),
        "checkpoint_steps": steps,
        "results": [str(p) for p in paths],
    }
    for key in ANCHOR_SCORES:
        scores = [r.get(key) for r in results]
        if any(v is None for v in scores):
            record[key] = None
            continue
        metric = anchor_metric({seed: scores}, len(steps))
        record[key] = {"scores": scores, "max": metric["max"], "last_k_mean": metric["last_k_mean"]}
    return record


def mean_anchor(group: list[dict]) -> dict[str, Any] | None:
    """The paper's metric over a method's training seeds from their rows' anchor records."""
    if any(r.get("anchor") is None for r in group):
        return None
    k = group[0]["anchor"]["last_k"]
    out: dict[str, Any] = {"last_k": k}
    for key in ANCHOR_SCORES:
        per_seed = {r["train_seed"]: r["anchor"][key] for r in group}
        ok = all(v is not None for v in per_seed.values())
        out[key] = anchor_metric({s: v["scores"] for s, v in per_seed.items()}, k) if ok else None
    return out


def sweep_rows(suite: Suite, task: str) -> list[dict]:
    """The inference-steps sweep of the diffusion policy (its leaderboard row included)."""
    if "diffusion" not in suite.cfg.methods:
        return []
    lay, out = suite.layout, []
    for seed in suite.cfg.train_seeds:
        for setting in suite.cfg.sweep:
            main = setting == suite.main_setting
            path = lay.result(task, "diffusion", seed) if main else lay.sweep(task, seed, setting)
            out.append(json.loads(path.read_text()))
    return out


def plots(suite: Suite) -> dict[str, dict[str, Path]]:
    """{task: {kind: png}} for the plots there is data for."""
    out: dict[str, dict[str, Path]] = {}
    for spec in suite.specs.values():
        task, made = output_name(spec), {}
        metrics = {
            (m, k): read_metrics(suite.layout.run(task, m, k) / "metrics.jsonl")
            for m in suite.learned()
            for k in suite.cfg.train_seeds
        }
        png = plot_training(metrics, suite.layout.plot(task, "training"), f"{task}: training")
        if png is not None:
            made["training"] = png
        png = plot_inference_steps(
            sweep_rows(suite, task),
            suite.layout.plot(task, "inference_steps"),
            f"{task}: diffusion policy, inference steps ({suite.cfg.episodes} episodes)",
        )
        if png is not None:
            made["inference_steps"] = png
        out[task] = made
    return out


def samplers(suite: Suite, noise_seed: int) -> dict[str, str]:
    """What acts in each method's rows, for the methods of this suite."""
    cfg, ex = suite.cfg, suite.execution("diffusion")
    diffusion = f"DDIM k={cfg.inference_steps}, noise seed {noise_seed}"
    if ex != ChunkExecution():
        mode = f"rtc ({suite.rtc_method('diffusion')})" if ex.mode == "rtc" else ex.mode
        diffusion += f", {mode} execution, {ex.latency_steps}-step delay"
    text = {
        "diffusion": diffusion,
        "diffusion_transformer": f"{diffusion} (transformer denoiser)",
        "mse": "one network evaluation",
        "expert": "the scripted expert, To = Ta = 1",
        "random": "uniform actions, To = Ta = 1",
    }
    return {m: text[m] for m in cfg.methods}


def header(suite: Suite, noise_seed: int) -> dict[str, Any]:
    cfg = suite.cfg
    head = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(suite.device),
        "torch": torch.__version__,
        "device": str(suite.device),
        "episodes": cfg.episodes,
        "eval_seeds": [suite.seeds[0], suite.seeds[-1]],
        "train_seeds": list(cfg.train_seeds),
        "demo_episodes": cfg.demo_episodes,
        "samplers": samplers(suite, noise_seed),
        "latency_calls": cfg.latency_calls,
        "quick": cfg.quick,
    }
    ex = suite.execution("diffusion")
    if ex != ChunkExecution():
        head["execution"] = ex.record()  # of the diffusion methods' rows
        if ex.mode == "rtc":
            head["execution"]["rtc_method"] = suite.rtc_method("diffusion")
    if suite.anchor_steps() and suite.learned():
        head["anchor"] = {"last_k": cfg.anchor_last_k, "checkpoint_steps": suite.anchor_steps()}
    return head


# ---------------------------------------------------------------------------------- tables


def mean_rows(rows: list[dict]) -> list[dict]:
    """Per (task, learned method) with two or more training seeds: the mean of each number;
    the CI is Wilson's on all their episodes pooled."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["train_seed"] is not None:
            groups.setdefault((r["task"], r["method"]), []).append(r)
    means = []
    for (task, method), group in groups.items():
        if len(group) < 2:
            continue
        wins = sum(sum(r["successes"]) for r in group)
        n = sum(r["episodes"] for r in group)

        def mean(key: str, group: list[dict] = group) -> float | None:
            values = [r[key] for r in group if r.get(key) is not None]
            return float(np.mean(values)) if values else None

        means.append(
            {
                "task": task,
                "method": method,
                "train_seed": "mean",
                "train_seeds": [r["train_seed"] for r in group],
                "success_rate": mean("success_rate"),
                "success_ci95": list(wilson_interval(wins, n)),
                "mean_max_reward": mean("mean_max_reward"),
                "episodes": n,
                "train_time_s": mean("train_time_s"),
                "eval_time_s": mean("eval_time_s"),
                "latency_ms": mean("latency_ms"),
                **{key: mean(key) for key in JERKS},
            }
        )
        if any("success_by_outcome" in r for r in group):  # pooled counts, like the CI
            pooled = sum((Counter(r.get("success_by_outcome", {})) for r in group), Counter())
            means[-1]["success_by_outcome"] = dict(sorted(pooled.items()))
        anchor = mean_anchor(group)
        if anchor is not None:
            means[-1]["anchor"] = anchor
    return means


def _seconds(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f} s" if x < 1 else f"{x:.1f} s" if x < 100 else f"{x:.0f} s"


def _reward(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _max_mean(anchor: dict | None, key: str, digits: int) -> str:
    """An anchor score as "max / mean of last K", "-" where there is none."""
    score = None if anchor is None else anchor.get(key)
    if score is None:
        return "-"
    return f"{score['max']:.{digits}f} / {score['last_k_mean']:.{digits}f}"


def _jerk(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _outcomes(counts: dict[str, int] | None) -> str:
    return "-" if counts is None else ", ".join(f"{k} {v}" for k, v in counts.items()) or "0"


def _table_row(method: str, r: dict, anchor: bool, jerk: bool, outcome: bool) -> str:
    lo, hi = r["success_ci95"]
    seed = "-" if r["train_seed"] is None else r["train_seed"]
    success = f"{r['success_rate']:.2f} ({lo:.2f}-{hi:.2f})"
    if seed == "mean":
        seed, success = "**mean**", f"**{r['success_rate']:.2f}** ({lo:.2f}-{hi:.2f})"
    cells = [method, seed, success]
    if anchor:
        cells.append(_max_mean(r.get("anchor"), "success_rate", 2))
    cells.append(_reward(r["mean_max_reward"]))
    if anchor:
        cells.append(_max_mean(r.get("anchor"), "mean_max_reward", 3))
    if jerk:
        cells += [_jerk(r.get(key)) for key in JERKS]
    if outcome:
        cells.append(_outcomes(r.get("success_by_outcome")))
    latency = "-" if r.get("latency_ms") is None else f"{r['latency_ms']:.2f} ms"
    cells += [_seconds(r.get("train_time_s")), _seconds(r.get("eval_time_s")), latency]
    return "| " + " | ".join(map(str, cells)) + " |"


def _table_head(k: int | None, jerk: bool, outcome: bool) -> list[str]:
    names = ["method", "training seed", "success (95 % CI)"]
    if k:
        names.append(f"success, max / mean of last {k} ckpts")
    names.append("mean max reward")
    if k:
        names.append(f"mean max reward, max / mean of last {k}")
    if jerk:
        names += ["boundary jerk", "within jerk"]
    if outcome:
        names.append("successes by outcome")
    names += ["training time", "eval time", "latency"]
    return ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]


def markdown(header: dict, rows: list[dict], means: list[dict], plots: dict, root: Path) -> str:
    h = header
    lines = [
        "# Leaderboard" + (" (--quick: a pipeline check, not a measurement)" if h["quick"] else ""),
        "",
        f"{h['episodes']} evaluation episodes per row on held-out seeds "
        f"{h['eval_seeds'][0]}-{h['eval_seeds'][1]}, the same for every method; learned methods "
        f"trained on {h['demo_episodes']} expert demonstrations with training seeds "
        f"{', '.join(map(str, h['train_seeds']))}.",
        "Samplers: " + "; ".join(f"{m}: {s}" for m, s in h["samplers"].items()) + ".",
        f"Machine: {h['machine']}; device {h['device']}; torch {h['torch']}; {h['date']}.",
        "",
        "Success: rate with its 95 % Wilson CI (mean rows: the mean over training seeds, CI on "
        "the pooled episodes). Training time: optimizer steps, validation loss and checkpoint "
        "writes from metrics.jsonl (no rollout checks). Eval time: the batched rollout of all "
        f"episodes. Latency: median of {h['latency_calls']} calls at batch 1 (predict_action "
        "for learned methods).",
    ]
    k = h.get("anchor", {}).get("last_k")
    if k:
        steps = ", ".join(map(str, h["anchor"]["checkpoint_steps"]))
        lines.append(
            f"Max / mean of last {k}: the Diffusion Policy paper's checkpoint protocol; each "
            f"run's checkpoints at steps {steps} on the same episodes, their max and mean (mean "
            "rows: each averaged over the training seeds)."
        )
    if any(r.get(key) is not None for r in rows for key in JERKS):
        lines.append(
            "Jerk: mean |delta action| between consecutive executed actions across chunk "
            "boundaries (boundary) and inside chunks (within)."
        )
    for task in dict.fromkeys(r["task"] for r in rows):
        jerk = any(r.get(key) is not None for r in rows if r["task"] == task for key in JERKS)
        outcome = any("success_by_outcome" in r for r in rows if r["task"] == task)
        lines += ["", f"## {task}", "", *_table_head(k, jerk, outcome)]
        task_means = {m["method"]: m for m in means if m["task"] == task}
        for method in dict.fromkeys(r["method"] for r in rows if r["task"] == task):
            group = [r for r in rows if r["task"] == task and r["method"] == method]
            if method in task_means:
                group = [*group, task_means[method]]
            lines += [_table_row(method, r, bool(k), jerk, outcome) for r in group]
        for kind, png in plots.get(task, {}).items():
            rel = png.relative_to(root).as_posix()
            lines += ["", f"[{CAPTIONS[kind]}]({rel})", "", f"![{CAPTIONS[kind]}]({rel})"]
    return "\n".join(lines) + "\n"


def write_leaderboard(suite: Suite, noise_seed: int) -> dict[str, Any]:
    """Gather every result, draw the plots, write leaderboard.json and leaderboard.md;
    returns {"rows", "means", "plots", "leaderboard" (the .md path)}."""
    all_rows = rows(suite)
    means = mean_rows(all_rows)
    made = plots(suite)
    head = header(suite, noise_seed)
    root = suite.cfg.out
    board = {
        "header": head,
        "rows": all_rows,
        "means": means,
        "plots": {t: {k: str(p) for k, p in v.items()} for t, v in made.items()},
    }
    atomic_write(root / "leaderboard.json", json.dumps(board, indent=2))
    md = atomic_write(root / "leaderboard.md", markdown(head, all_rows, means, made, root))
    return {"rows": all_rows, "means": means, "plots": made, "leaderboard": md}


__all__ = [
    "markdown",
    "mean_anchor",
    "mean_rows",
    "seed_anchor",
    "training_time",
    "write_leaderboard",
]
