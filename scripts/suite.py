"""Benchmark suite: every method on every task, with the same data and the same held-out
seeds, into one leaderboard.

    python -m dplite.scripts.suite --tasks pusht --methods diffusion mse expert random \
        --train-seeds 0 1 --out outputs/suite
    python -m dplite.scripts.suite --out /tmp/suite --quick     # the whole pipeline, tiny, in seconds

Methods: ``diffusion`` (the diffusion policy), ``mse`` (the same UNet, data and conditioning
regressing the chunk: ``PolicyConfig.objective = "mse"``), ``expert`` (the task's scripted
expert) and ``random`` (uniform actions); the last two are envs.baselines. For each task:

1. data: DIR/data/<task>.zarr, written by scripts.collect with the task's expert (as the
   quickstart: 500 episodes, 3 px DART noise on PushT) when missing or short;
2. train: each learned method per training seed with scripts.train's defaults into
   DIR/runs/<task>/<method>/seed<k> (a finished run is skipped, an unfinished one resumes);
3. evaluate: every method on the same held-out seeds (envs.EVAL_SEED_START, +1, ...) into
   DIR/results/<task>/<method>/seed<k>.json (learned; their best/ policy, DDIM 10 for
   diffusion) or .../untrained.json (expert, random: To = Ta = 1);
4. sweep: the diffusion policy of each training seed at DDIM 1, 2, 5, 10, 20 and DDPM 100 on
   the same seeds: DIR/results/<task>/diffusion_sweep/seed<k>_<sampler><k>.json;
5. report: DIR/leaderboard.json (all rows), DIR/leaderboard.md (a table per task) and
   DIR/plots/<task>_training.png, <task>_inference_steps.png.

Every stage skips what it finds done, so re-running the command resumes (result files are
written atomically: one that exists is complete). What each row measures:

* success rate with its 95 % Wilson CI and the mean of per-episode maximum reward;
* eval time: wall time of the batched rollout of all its episodes (scripts.eval's);
* latency: median of --latency-calls predict_action calls at batch 1 (after 2 warm-up calls),
  with the row's sampler, on the task's first evaluation observation (for the baselines: one
  call of their policy function);
* training time: from the run's metrics.jsonl, the sum over log intervals of steps / it_s,
  i.e. optimizer steps, validation loss and checkpoint writes, without the rollout checks
  during training (those are ``train_rollout_eval_s``). It survives resumes, unlike a timer
  around the train call.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import tyro
from tqdm import tqdm

from dplite.data.replay_buffer import ReplayBuffer
from dplite.envs import EVAL_SEED_START
from dplite.envs.baselines import evaluate_baseline, make_baseline
from dplite.envs.evaluate import evaluate_policy
from dplite.envs.options import EnvOptions
from dplite.envs.rollout import wilson_interval
from dplite.envs.tasks import (
    TaskSpec,
    flatten_obs,
    get_task,
    import_modules,
    make_env,
    output_name,
    task_from_metadata,
)
from dplite.policy.actor import PolicyActor
from dplite.policy.checkpoint import find_policy_dir
from dplite.policy.device import resolve_device
from dplite.policy.diffusion import DiffusionPolicy
from dplite.policy.timing import cpu_model, median_ms
from dplite.scripts import collect, train
from dplite.scripts.plots import last_per_step, plot_inference_steps, plot_training, read_metrics

log = logging.getLogger(__name__)

Method = Literal["diffusion", "mse", "expert", "random"]
LEARNED = ("diffusion", "mse")
DEFAULT_ACTION_NOISE = {"PushT-v0": 3.0}  # px, as the quickstart; 0 for other environments
NOISE_SEED = 0  # the sampler noise of every evaluation (scripts.eval --seed)
WARMUP_CALLS = 2
# --quick: the whole pipeline on a toy scale (a test runs it in seconds)
QUICK = dict(demo_episodes=3, episodes=2, sweep=("ddim1", "ddim2"), latency_calls=3)
QUICK_TRAIN = dict(
    down_dims=(16, 32, 64),
    diffusion_step_embed_dim=16,
    batch_size=8,
    steps=2,
    warmup_steps=1,
    log_every=1,
    save_every=1,
    eval_every=1,
    eval_episodes=1,
)


@dataclass
class Config:
    tasks: tuple[str, ...] = ("pusht",)
    """Registered task names (envs.tasks.list_tasks())."""
    methods: tuple[Method, ...] = ("diffusion", "mse", "expert", "random")
    train_seeds: tuple[int, ...] = (0, 1)
    """Training seeds of the learned methods (one run each)."""
    out: Path = Path("outputs/suite")
    """Suite folder (data/, runs/, results/, plots/, leaderboard.*); an existing one resumes."""
    demo_episodes: int = 500
    """Demonstrations per task dataset."""
    action_noise: float | None = None
    """DART noise of the demonstrations (scripts.collect --action-noise); default 3 px for
    PushT, 0 for other environments."""
    episodes: int = 50
    """Evaluation episodes per row (seeds EVAL_SEED_START, +1, ...)."""
    inference_steps: int = 10
    """DDIM steps of the diffusion policy's leaderboard rows."""
    sweep: tuple[str, ...] = ("ddim1", "ddim2", "ddim5", "ddim10", "ddim20", "ddpm100")
    """Sampler settings of the inference-steps plot (SAMPLER + k); empty: no sweep."""
    train_steps: int | None = None
    """Training steps (default: scripts.train's)."""
    latency_calls: int = 20
    """Timed predict_action calls per latency (the median is reported)."""
    env_import: tuple[str, ...] = ()
    """Modules imported first (e.g. ones that register more tasks)."""
    device: str = "auto"
    """Training and evaluation device: 'auto' (cuda when available), 'cpu', 'cuda', ..."""
    quick: bool = False
    """Tiny everything (3 demos, 2 training steps, a tiny UNet, 2 episodes, 2 sweep
    settings): checks the pipeline, measures nothing."""
    progress: bool = True
    """Show progress bars (--no-progress for logs)."""

    def __post_init__(self) -> None:
        for name in ("demo_episodes", "episodes", "inference_steps", "latency_calls"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if not self.tasks or not self.methods:
            raise ValueError(f"--tasks {self.tasks} and --methods {self.methods} may not be empty")
        for name in ("tasks", "methods", "train_seeds"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"--{name.replace('_', '-')} {values} repeats an entry")
        if any(m in LEARNED for m in self.methods) and not self.train_seeds:
            raise ValueError(f"--methods {self.methods} has learned methods but no --train-seeds")
        for setting in self.sweep:
            parse_setting(setting)  # a bad one fails at parse time
        if self.train_steps is not None and self.train_steps < 1:
            raise ValueError(f"--train-steps must be >= 1, got {self.train_steps}")


def parse_setting(setting: str) -> tuple[str, int]:
    """'ddim10' -> ('ddim', 10)."""
    m = re.fullmatch(r"(ddim|ddpm)(\d+)", setting)
    if m is None or int(m.group(2)) < 1:
        raise ValueError(f"--sweep entry {setting!r}: expected ddimK or ddpmK with K >= 1")
    return m.group(1), int(m.group(2))


def effective(cfg: Config) -> Config:
    """The config the suite runs: --quick replaces sizes with tiny ones."""
    return dataclasses.replace(cfg, **QUICK) if cfg.quick else cfg


# ---------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    """Where everything of a suite folder lives."""

    root: Path

    def dataset(self, task: str) -> Path:
        return self.root / "data" / f"{task}.zarr"

    def run(self, task: str, method: str, seed: int) -> Path:
        return self.root / "runs" / task / method / f"seed{seed}"

    def result(self, task: str, method: str, seed: int | None) -> Path:
        name = "untrained" if seed is None else f"seed{seed}"
        return self.root / "results" / task / method / f"{name}.json"

    def sweep(self, task: str, seed: int, setting: str) -> Path:
        return self.root / "results" / task / "diffusion_sweep" / f"seed{seed}_{setting}.json"

    def plot(self, task: str, kind: str) -> Path:
        return self.root / "plots" / f"{task}_{kind}.png"


def write_json(path: Path, obj: Any) -> None:
    """Atomically: a result file that exists is a complete one (what resuming relies on)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


# ---------------------------------------------------------------------------------- stages


@dataclass
class Stage:
    name: str
    run: Callable[[], bool]
    """Does the stage's work and returns True, or returns False when it finds it done."""


class Suite:
    def __init__(self, cfg: Config):
        self.cfg = effective(cfg)
        self.layout = Layout(self.cfg.out)
        self.device = resolve_device(self.cfg.device)
        import_modules(self.cfg.env_import)
        self.specs = {name: get_task(name) for name in self.cfg.tasks}
        self.seeds = list(range(EVAL_SEED_START, EVAL_SEED_START + self.cfg.episodes))
        self.main_setting = f"ddim{self.cfg.inference_steps}"

    def learned(self) -> list[str]:
        return [m for m in self.cfg.methods if m in LEARNED]

    def baselines(self) -> list[str]:
        return [m for m in self.cfg.methods if m not in LEARNED]

    def stages(self) -> list[Stage]:
        """Everything to do, in order: data before training before evaluation."""
        cfg, stages = self.cfg, []
        for spec in self.specs.values():
            task = output_name(spec)
            if self.learned():
                stages.append(Stage(f"{task}: collect", partial(self.collect, spec)))
            for method in self.learned():
                for seed in cfg.train_seeds:
                    name = f"{task}/{method}/seed{seed}: train"
                    stages.append(Stage(name, partial(self.train, spec, method, seed)))
            for method in self.learned():
                for seed in cfg.train_seeds:
                    name = f"{task}/{method}/seed{seed}: evaluate"
                    stages.append(Stage(name, partial(self.evaluate_learned, spec, method, seed)))
            for method in self.baselines():
                name = f"{task}/{method}: evaluate"
                stages.append(Stage(name, partial(self.evaluate_baseline, spec, method)))
            if "diffusion" in cfg.methods:
                for seed in cfg.train_seeds:
                    for setting in cfg.sweep:
                        if setting == self.main_setting:
                            continue  # the leaderboard row is that evaluation
                        name = f"{task}/diffusion/seed{seed}: sweep {setting}"
                        stages.append(Stage(name, partial(self.sweep, spec, seed, setting)))
        return stages

    # ---------------------------------------------------------------- data and training
    def collect(self, spec: TaskSpec) -> bool:
        path = self.layout.dataset(output_name(spec))
        if path.exists() and ReplayBuffer.open(path).n_episodes >= self.cfg.demo_episodes:
            return False
        noise = self.cfg.action_noise
        if noise is None:
            noise = DEFAULT_ACTION_NOISE.get(spec.env_id, 0.0)
        collect.main(
            collect.Config(
                env=EnvOptions(task=spec.name),
                episodes=self.cfg.demo_episodes,
                out=path,
                action_noise=noise,
                progress=self.cfg.progress,
            )
        )
        return True

    def train_config(self, spec: TaskSpec, method: str, seed: int) -> train.Config:
        task = output_name(spec)
        kwargs: dict[str, Any] = dict(
            dataset=self.layout.dataset(task),
            out=self.layout.run(task, method, seed),
            objective=method,
            seed=seed,
            device=self.cfg.device,
            progress=self.cfg.progress,
        )
        if self.cfg.quick:
            kwargs.update(QUICK_TRAIN)
        if self.cfg.train_steps is not None:
            kwargs["steps"] = self.cfg.train_steps
        return train.Config(**kwargs)

    def train(self, spec: TaskSpec, method: str, seed: int) -> bool:
        tcfg = self.train_config(spec, method, seed)
        if finished_step(tcfg.out) >= tcfg.steps:
            return False
        train.main(tcfg)  # resumes from the run's latest checkpoint by itself
        return True

    # ---------------------------------------------------------------- evaluation
    def evaluate_learned(self, spec: TaskSpec, method: str, seed: int) -> bool:
        path = self.layout.result(output_name(spec), method, seed)
        return self._evaluate_learned(spec, method, seed, "ddim", self.cfg.inference_steps, path)

    def sweep(self, spec: TaskSpec, seed: int, setting: str) -> bool:
        sampler, k = parse_setting(setting)
        path = self.layout.sweep(output_name(spec), seed, setting)
        return self._evaluate_learned(spec, "diffusion", seed, sampler, k, path)

    def _evaluate_learned(
        self, spec: TaskSpec, method: str, seed: int, sampler: str, k: int, path: Path
    ) -> bool:
        if path.exists():
            return False
        run = self.layout.run(output_name(spec), method, seed)
        policy_dir = find_policy_dir(run)
        policy = DiffusionPolicy.from_pretrained(policy_dir, device=self.device)
        actor = PolicyActor(policy, sampler, k, noise_seed=NOISE_SEED)
        spec = task_from_metadata(policy.metadata)
        summary, _ = evaluate_policy(actor, spec, self.seeds, progress=self.cfg.progress)
        summary.update(
            method=method,
            train_seed=seed,
            checkpoint=str(policy_dir),
            train_step=policy.metadata.get("step"),
            device=str(self.device),
            eval_time_s=summary["wall_time_s"],
            latency_ms=self.policy_latency_ms(policy, sampler, k),
            latency_calls=self.cfg.latency_calls,
            **training_time(run),
        )
        write_json(path, summary)
        return True

    def evaluate_baseline(self, spec: TaskSpec, method: str) -> bool:
        path = self.layout.result(output_name(spec), method, None)
        if path.exists():
            return False
        summary, _ = evaluate_baseline(method, spec, self.seeds, progress=self.cfg.progress)
        summary.update(
            method=method,
            train_seed=None,
            device="cpu",
            eval_time_s=summary["wall_time_s"],
            latency_ms=self.baseline_latency_ms(spec, method),
            latency_calls=self.cfg.latency_calls,
            train_time_s=None,
        )
        write_json(path, summary)
        return True

    def first_observation(self, spec: TaskSpec, keys: list[str]) -> dict[str, np.ndarray]:
        """The observation the latency is timed on: the first evaluation seed's reset."""
        env = make_env(spec, obs_keys=keys)
        try:
            return flatten_obs(env.reset(seed=self.seeds[0])[0])
        finally:
            env.close()

    def policy_latency_ms(self, policy: DiffusionPolicy, sampler: str, k: int) -> float:
        pcfg = policy.cfg
        obs = self.first_observation(task_from_metadata(policy.metadata), list(pcfg.obs_shapes))
        batch = {
            key: torch.from_numpy(np.repeat(obs[key][None, None], pcfg.n_obs_steps, axis=1)).to(
                self.device
            )  # (1, To, ...)
            for key in pcfg.obs_shapes
        }
        gen = torch.Generator(self.device).manual_seed(NOISE_SEED)

        def call() -> None:
            policy.predict_action(batch, sampler, k, generator=gen)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # time the work, not its launch

        return median_ms(call, self.cfg.latency_calls, warmup=WARMUP_CALLS)

    def baseline_latency_ms(self, spec: TaskSpec, method: str) -> float:
        policy = make_baseline(method, spec)  # a fresh one: the evaluation's state stays apart
        obs = self.first_observation(spec, [])
        batch = {key: v[None, None] for key, v in obs.items()}  # (1, 1, ...)
        seeds = np.array([self.seeds[0]])
        try:
            return median_ms(
                lambda: policy(batch, seeds), self.cfg.latency_calls, warmup=WARMUP_CALLS
            )
        finally:
            policy.close()

    # ---------------------------------------------------------------- report
    def rows(self) -> list[dict]:
        """Every result of this configuration, in table order (task, method, seed)."""
        rows = []
        for spec in self.specs.values():
            task = output_name(spec)
            for method in self.cfg.methods:
                seeds = self.cfg.train_seeds if method in LEARNED else (None,)
                for seed in seeds:
                    path = self.layout.result(task, method, seed)
                    rows.append({**json.loads(path.read_text()), "result": str(path)})
        return rows

    def sweep_rows(self, spec: TaskSpec) -> list[dict]:
        task, rows = output_name(spec), []
        if "diffusion" not in self.cfg.methods:
            return rows
        for seed in self.cfg.train_seeds:
            for setting in self.cfg.sweep:
                path = (
                    self.layout.result(task, "diffusion", seed)
                    if setting == self.main_setting
                    else self.layout.sweep(task, seed, setting)
                )
                rows.append(json.loads(path.read_text()))
        return rows

    def plots(self) -> dict[str, dict[str, Path]]:
        """{task: {kind: png}} for the plots there is data for."""
        out: dict[str, dict[str, Path]] = {}
        for spec in self.specs.values():
            task, made = output_name(spec), {}
            metrics = {
                (m, k): read_metrics(self.layout.run(task, m, k) / "metrics.jsonl")
                for m in self.learned()
                for k in self.cfg.train_seeds
            }
            png = plot_training(metrics, self.layout.plot(task, "training"), f"{task}: training")
            if png is not None:
                made["training"] = png
            png = plot_inference_steps(
                self.sweep_rows(spec),
                self.layout.plot(task, "inference_steps"),
                f"{task}: diffusion policy, inference steps ({self.cfg.episodes} episodes)",
            )
            if png is not None:
                made["inference_steps"] = png
            out[task] = made
        return out

    def header(self) -> dict:
        cfg = self.cfg
        return {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(self.device),
            "torch": torch.__version__,
            "device": str(self.device),
            "episodes": cfg.episodes,
            "eval_seeds": [self.seeds[0], self.seeds[-1]],
            "train_seeds": list(cfg.train_seeds),
            "demo_episodes": cfg.demo_episodes,
            "samplers": {
                "diffusion": f"DDIM k={cfg.inference_steps}, noise seed {NOISE_SEED}",
                "mse": "one network evaluation",
                "expert": "the scripted expert, To = Ta = 1",
                "random": "uniform actions, To = Ta = 1",
            },
            "latency_calls": cfg.latency_calls,
            "quick": cfg.quick,
        }


def finished_step(run: Path) -> int:
    """The step of a run's latest checkpoint (-1: none yet)."""
    latest = run / "checkpoints" / "latest.json"
    return int(json.loads(latest.read_text())["step"]) if latest.is_file() else -1


def training_time(run: Path) -> dict:
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
    """CPU model (/proc/cpuinfo) and core count, and the GPU when one is used."""
    text = f"{cpu_model()}, {os.cpu_count()} CPUs"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


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
            }
        )
    return means


def _seconds(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f} s" if x < 1 else f"{x:.1f} s" if x < 100 else f"{x:.0f} s"


def _reward(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


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
    for task in dict.fromkeys(r["task"] for r in rows):
        lines += [
            "",
            f"## {task}",
            "",
            "| method | training seed | success (95 % CI) | mean max reward | training time "
            "| eval time | latency |",
            "|---|---|---|---|---|---|---|",
        ]
        task_means = {m["method"]: m for m in means if m["task"] == task}
        methods = list(dict.fromkeys(r["method"] for r in rows if r["task"] == task))
        for method in methods:
            group = [r for r in rows if r["task"] == task and r["method"] == method]
            if method in task_means:
                group = [*group, task_means[method]]
            for r in group:
                lo, hi = r["success_ci95"]
                seed = "-" if r["train_seed"] is None else r["train_seed"]
                success = f"{r['success_rate']:.2f} ({lo:.2f}-{hi:.2f})"
                if seed == "mean":
                    seed, success = "**mean**", f"**{r['success_rate']:.2f}** ({lo:.2f}-{hi:.2f})"
                latency = "-" if r.get("latency_ms") is None else f"{r['latency_ms']:.2f} ms"
                lines.append(
                    f"| {method} | {seed} | {success} | {_reward(r['mean_max_reward'])} | "
                    f"{_seconds(r.get('train_time_s'))} | {_seconds(r.get('eval_time_s'))} | "
                    f"{latency} |"
                )
        for kind, png in plots.get(task, {}).items():
            rel = png.relative_to(root).as_posix()
            caption = {
                "training": "success and loss vs training step",
                "inference_steps": "diffusion policy: success and latency vs inference steps",
            }[kind]
            lines += ["", f"[{caption}]({rel})", "", f"![{caption}]({rel})"]
    return "\n".join(lines) + "\n"


def main(cfg: Config) -> dict:
    """Run (or resume) the suite; returns {"rows", "means", "ran", "skipped", "leaderboard",
    "plots"} (ran / skipped: the stage names that did work / found it done)."""
    suite = Suite(cfg)
    ran, skipped = [], []
    stages = suite.stages()
    bar = tqdm(stages, desc="suite", unit="stage", disable=not suite.cfg.progress)
    for stage in bar:
        bar.set_postfix_str(stage.name)
        t0 = time.perf_counter()
        if stage.run():
            ran.append(stage.name)
            log.info("%s: done in %.1f s", stage.name, time.perf_counter() - t0)
        else:
            skipped.append(stage.name)
            log.info("%s: found done, skipped", stage.name)
    bar.close()
    rows = suite.rows()
    means = mean_rows(rows)
    plots = suite.plots()
    header = suite.header()
    root = suite.cfg.out
    write_json(
        root / "leaderboard.json",
        {
            "header": header,
            "rows": rows,
            "means": means,
            "plots": {t: {k: str(p) for k, p in v.items()} for t, v in plots.items()},
        },
    )
    md = root / "leaderboard.md"
    md.write_text(markdown(header, rows, means, plots, root))
    return {
        "rows": rows,
        "means": means,
        "ran": ran,
        "skipped": skipped,
        "leaderboard": md,
        "plots": plots,
    }


def cli() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = main(tyro.cli(Config))
    print(result["leaderboard"].read_text())


if __name__ == "__main__":
    cli()
