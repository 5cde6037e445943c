"""Benchmark suite: every method on every task, with the same data and the same held-out
seeds, into one leaderboard.

    python -m dplite.scripts.suite --tasks pusht --methods diffusion mse expert random \
        --train-seeds 0 1 --out outputs/suite
    python -m dplite.scripts.suite --out /tmp/suite --quick     # the whole pipeline, tiny, in seconds

Methods: ``diffusion`` (the diffusion policy), ``mse`` (the same UNet, data and conditioning
regressing the chunk: ``PolicyConfig.objective = "mse"``), ``expert`` (the task's scripted
expert) and ``random`` (uniform actions); the last two are envs.baselines. For each task
(pipeline.py):

1. data: DIR/data/<task>.zarr, the task's expert through envs.collect as scripts.collect would
   write it (as the quickstart: 500 episodes, 3 px DART noise on PushT);
2. train: each learned method per training seed, ``dp-train`` with its defaults in a
   subprocess, into DIR/runs/<task>/<method>/seed<k> (an unfinished run resumes);
3. evaluate: every method on the same held-out seeds (envs.EVAL_SEED_START, +1, ...) into
   DIR/results/<task>/<method>/seed<k>.json (learned; their best/ policy, DDIM 10 for
   diffusion) or .../untrained.json (expert, random: To = Ta = 1);
4. sweep: the diffusion policy of each training seed at DDIM 1, 2, 3, 5, 10, 20 and DDPM 100
   (with the policy's own timestep spacing) on the same seeds: DIR/results/<task>/diffusion_sweep/seed<k>_<sampler><k>.json;
5. report (report.py, plots.py): DIR/leaderboard.json (all rows), DIR/leaderboard.md (a table
   per task) and DIR/plots/<task>_training.png, <task>_inference_steps.png.

Re-running the command resumes: every stage skips what it finds complete (result files are
written atomically: one that exists is complete). Each stage records the settings it ran with
beside its output (<output>.settings.json, settings.py); a resumed stage whose recorded
settings differ from this command's is refused, before any work, with the fields that differ,
rather than its old results reused. What each row measures:

* success rate with its 95 % Wilson CI and the mean of per-episode maximum reward;
* eval time: wall time of the batched rollout of all its episodes (scripts.eval's);
* latency: median of --latency-calls predict_action calls at batch 1 (after 2 warm-up calls),
  with the row's sampler, on the task's first evaluation observation (for the baselines: one
  call of their policy function);
* training time: from the run's metrics.jsonl (report.training_time): optimizer steps,
  validation loss and checkpoint writes, without the rollout checks during training.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from dplite.envs.options import run_command
from dplite.scripts.suite import settings
from dplite.scripts.suite.pipeline import LEARNED, NOISE_SEED, Suite, parse_setting
from dplite.scripts.suite.report import write_leaderboard

log = logging.getLogger(__name__)

Method = Literal["diffusion", "mse", "expert", "random"]
# --quick: the whole pipeline on a toy scale (a test runs it in seconds); its training flags
# are pipeline.QUICK_TRAIN
QUICK = dict(demo_episodes=3, episodes=2, sweep=("ddim1", "ddim2"), latency_calls=3)


@dataclass
class Config:
    tasks: tuple[str, ...] = ("pusht",)
    """Registered task names (envs.tasks.list_tasks())."""
    methods: tuple[Method, ...] = ("diffusion", "mse", "expert", "random")
    train_seeds: tuple[int, ...] = (0, 1)
    """Training seeds of the learned methods (one run each)."""
    out: Path = Path("outputs/suite")
    """Suite folder (data/, runs/, results/, plots/, leaderboard.*); an existing one resumes
    (refused where its recorded settings differ from these)."""
    demo_episodes: int = 500
    """Demonstrations per task dataset."""
    action_noise: float | None = None
    """DART noise of the demonstrations (scripts.collect --action-noise); default 3 px for
    PushT, 0 for other environments."""
    episodes: int = 50
    """Evaluation episodes per row (seeds EVAL_SEED_START, +1, ...)."""
    inference_steps: int = 5
    """DDIM steps of the diffusion policy's leaderboard rows."""
    sweep: tuple[str, ...] = ("ddim1", "ddim2", "ddim3", "ddim5", "ddim10", "ddim20", "ddpm100")
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
        if self.action_noise is not None and self.action_noise < 0:
            raise ValueError(f"--action-noise must be >= 0, got {self.action_noise}")


def effective(cfg: Config) -> Config:
    """The config the suite runs: --quick replaces sizes with tiny ones."""
    return dataclasses.replace(cfg, **QUICK) if cfg.quick else cfg


def main(cfg: Config) -> dict[str, Any]:
    """Run (or resume) the suite; returns {"rows", "means", "ran", "skipped", "leaderboard",
    "plots"} (ran / skipped: the stage names that did work / found it done). A stage whose
    recorded settings differ is refused (settings.SettingsMismatch) before any stage runs."""
    suite = Suite(effective(cfg))
    stages = suite.stages()
    settings.check(stages, suite.cfg.out)
    ran, skipped = [], []
    bar = tqdm(stages, desc="suite", unit="stage", disable=not suite.cfg.progress)
    for stage in bar:
        bar.set_postfix_str(stage.name)
        if stage.done():
            settings.adopt(stage)  # records the settings of an output from an older suite
            skipped.append(stage.name)
            log.info("%s: found done, skipped", stage.name)
            continue
        t0 = time.perf_counter()
        settings.write_record(stage)  # before the work: a partial output has its record
        stage.run()
        ran.append(stage.name)
        log.info("%s: done in %.1f s", stage.name, time.perf_counter() - t0)
    bar.close()
    return {**write_leaderboard(suite, NOISE_SEED), "ran": ran, "skipped": skipped}


def cli() -> None:
    result = run_command(main, Config, "dp-suite")
    print(result["leaderboard"].read_text())


__all__ = ["Config", "cli", "main"]
