"""Benchmark suite: every method on every task, with the same data and the same held-out
seeds, into one leaderboard.

    python -m dplite.scripts.suite --tasks pusht --methods diffusion mse expert random \
        --train-seeds 0 1 --out outputs/suite
    python -m dplite.scripts.suite --out /tmp/suite --quick     # the whole pipeline, tiny, in seconds

Methods: ``diffusion`` (the diffusion policy, 1D temporal UNet), ``diffusion_transformer``
(the same diffusion policy with the time-series transformer denoiser: ``dp-train --backbone
transformer``), ``mse`` (the same UNet, data and conditioning regressing the chunk:
``PolicyConfig.objective = "mse"``), ``expert`` (the task's scripted expert) and ``random``
(uniform actions); the last two are envs.baselines. For each task (pipeline.py):

1. data: DIR/data/<task>.zarr, the task's expert through envs.collect as scripts.collect would
   write it (as the quickstart: 500 episodes, 3 px DART noise on PushT);
2. train: each learned method per training seed, ``dp-train`` with its defaults in a
   subprocess, into DIR/runs/<task>/<method>/seed<k> (an unfinished run resumes);
3. evaluate: every method on the same held-out seeds (envs.EVAL_SEED_START, +1, ...) into
   DIR/results/<task>/<method>/seed<k>.json (learned; their best/ policy, DDIM
   --inference-steps for the diffusion methods) or .../untrained.json (expert, random:
   To = Ta = 1);
4. sweep: the diffusion policy (UNet) of each training seed at DDIM 1, 2, 3, 5, 10, 20 and
   DDPM 100 (with the policy's own timestep spacing) on the same seeds:
   DIR/results/<task>/diffusion_sweep/seed<k>_<sampler><k>.json;
5. anchor (--anchor-last-k K > 0 only): the last K step checkpoints of each learned run
   (training then keeps K, saved every steps / K) on the same seeds with the row's sampler:
   DIR/results/<task>/<method>_anchor/seed<k>_step<NNNNNNN>.json, reduced by
   envs.metrics.anchor_metric to the Diffusion Policy paper's "max / mean of the last K";
6. report (report.py, plots.py): DIR/leaderboard.json (all rows), DIR/leaderboard.md (a table
   per task) and DIR/plots/<task>_training.png, <task>_inference_steps.png.

--execution and --latency-steps evaluate the diffusion methods' rows (leaderboard, sweep,
anchor) under an inference delay (envs/rollout.py ChunkExecution, as dp-eval's options of the
same names); mse and the baselines always run without one. Under rtc, --rtc-method chooses how
the committed prefix is kept; "conditioned" needs the diffusion methods trained with
--train-max-delay (dp-train's option of that name). The delay d may not exceed the
policy's Ta: --n-action-steps sets Ta for every learned method (dp-train's flag of that name;
its default 2 otherwise), so that delays beyond 2 steps can be measured.

Re-running the command resumes: every stage skips what it finds complete (result files are
written atomically: one that exists is complete). Each stage records the settings it ran with
beside its output (<output>.settings.json, settings.py); a resumed stage whose recorded
settings differ from this command's is refused, before any work, with the fields that differ,
rather than its old results reused. The options added later (--execution, --latency-steps,
--rtc-method, --train-max-delay, --anchor-last-k) enter a record only when they differ from
their defaults, so a folder of an older suite resumes unchanged. What each row measures:

* success rate with its 95 % Wilson CI and the mean of per-episode maximum reward;
* with --anchor-last-k: the max and the mean of the last K checkpoints' success rates and
  mean max rewards (per training seed; the mean row averages them over seeds, as the paper);
* boundary / within jerk: mean |delta action| across chunk boundaries / within chunks
  (envs.rollout.action_jerk), shown when the results have them;
* eval time: wall time of the batched rollout of all its episodes (scripts.eval's);
* latency: median of --latency-calls predict_action calls at batch 1 (after 2 warm-up calls),
  with the row's sampler (and, under rtc execution, its committed prefix), on the task's first
  evaluation observation (for the baselines: one call of their policy function);
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
from dplite.envs.rollout import ChunkExecution
from dplite.scripts.suite import settings
from dplite.scripts.suite.pipeline import (
    LEARNED,
    NOISE_SEED,
    QUICK_TRAIN,
    TRAIN_ACTION_STEPS,
    Suite,
    parse_setting,
)
from dplite.scripts.suite.report import write_leaderboard

log = logging.getLogger(__name__)

Method = Literal["diffusion", "diffusion_transformer", "mse", "expert", "random"]
# --quick: the whole pipeline on a toy scale (a test runs it in seconds); its training flags
# are pipeline.QUICK_TRAIN
QUICK = dict(demo_episodes=3, episodes=2, sweep=("ddim1", "ddim2"), latency_calls=3)


@dataclass
class Config:
    tasks: tuple[str, ...] = ("pusht",)
    """Registered task names (envs.tasks.list_tasks())."""
    methods: tuple[Method, ...] = ("diffusion", "mse", "expert", "random")
    """diffusion (the UNet), diffusion_transformer (the transformer denoiser), mse (the UNet
    regressing the chunk), expert, random."""
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
    execution: Literal["sync", "async", "ensemble", "rtc"] = "sync"
    """Chunk execution of the diffusion methods' evaluations under --latency-steps (dp-eval's
    --execution): sync (the world waits), async, ensemble (ACT's temporal ensembling) or rtc
    (real-time chunking, by --rtc-method). mse and the baselines always run sync."""
    latency_steps: int = 0
    """Inference delay d in control steps of the diffusion methods' evaluations (dp-eval's
    --latency-steps); at most the policy's Ta."""
    rtc_method: Literal["guidance", "inpaint", "conditioned"] = "guidance"
    """How --execution rtc keeps the committed prefix (dp-eval's --rtc-method): guidance,
    inpaint, or conditioned (the clean prefix in the network's input; needs
    --train-max-delay >= --latency-steps)."""
    train_max_delay: int = 0
    """N > 0: the diffusion methods train with committed prefixes of up to N actions (dp-train's
    --train-max-delay, training-time real-time chunking); mse trains without. 0: off."""
    n_action_steps: int | None = None
    """Ta of the learned methods (dp-train's --n-action-steps; None: its default,
    pipeline.TRAIN_ACTION_STEPS); must be >= --latency-steps."""
    anchor_last_k: int = 0
    """K > 0: also evaluate the last K step checkpoints of every learned run (training keeps
    K, saved every --train-steps / K) and report the Diffusion Policy paper's max / mean of the
    last K; 0: off. Needs --train-steps, a multiple of K (--quick: K at most its training
    steps)."""
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
        try:
            ChunkExecution(self.execution, self.latency_steps)
        except ValueError as e:
            raise ValueError(f"--execution / --latency-steps: {e}") from None
        if self.rtc_method != "guidance" and self.execution != "rtc":
            raise ValueError(f"--rtc-method {self.rtc_method} needs --execution rtc")
        if self.train_max_delay < 0:
            raise ValueError(f"--train-max-delay must be >= 0, got {self.train_max_delay}")
        if self.rtc_method == "conditioned" and self.train_max_delay < self.latency_steps:
            raise ValueError(
                f"--rtc-method conditioned at --latency-steps {self.latency_steps} needs "
                f"--train-max-delay >= {self.latency_steps} (got {self.train_max_delay}): the "
                f"policy must have been trained with prefixes that long"
            )
        if self.n_action_steps is not None and self.n_action_steps < 1:
            raise ValueError(f"--n-action-steps must be >= 1, got {self.n_action_steps}")
        ta = self.n_action_steps or TRAIN_ACTION_STEPS
        if self.latency_steps > ta:
            raise ValueError(
                f"--latency-steps {self.latency_steps} > Ta = {ta}: each chunk would be asked "
                f"for before the previous one arrived; train with --n-action-steps >= "
                f"{self.latency_steps}"
            )
        self._check_anchor()

    def _check_anchor(self) -> None:
        k = self.anchor_last_k
        if k < 0:
            raise ValueError(f"--anchor-last-k must be >= 0 (0: off), got {k}")
        if k == 0 or self.quick:
            return  # --quick trains QUICK_TRAIN's steps and caps K (effective)
        if not any(m in LEARNED for m in self.methods):
            raise ValueError(
                f"--anchor-last-k {k} evaluates checkpoints of learned methods, but --methods "
                f"{self.methods} has none"
            )
        if self.train_steps is None:
            raise ValueError(
                f"--anchor-last-k {k} needs --train-steps: checkpoints are saved every "
                "train-steps / K steps so that the last K are evenly spaced"
            )
        if self.train_steps % k:
            raise ValueError(
                f"--train-steps {self.train_steps} is not a multiple of --anchor-last-k {k}: "
                "the last K checkpoints would not be evenly spaced"
            )


def effective(cfg: Config) -> Config:
    """The config the suite runs: --quick replaces sizes with tiny ones (and caps
    --anchor-last-k at its training steps)."""
    if not cfg.quick:
        return cfg
    steps = cfg.train_steps or QUICK_TRAIN["steps"]
    return dataclasses.replace(cfg, **QUICK, anchor_last_k=min(cfg.anchor_last_k, steps))


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
