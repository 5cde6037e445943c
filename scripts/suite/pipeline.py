"""The suite's stages, per task: data, train, evaluate, sweep, anchor; each leaderboard and sweep
evaluation also times the policy's latency. Each stage is a settings.Stage: its output, its settings, a check whether the
output is complete, and the work.

* data: the task's expert through envs.collect (ExpertEpisodes) into a ReplayBuffer, resuming a
  short dataset after its last seed, as scripts.collect does.
* train: ``python -m dplite.scripts.train`` in a subprocess (scripts do not import each other;
  training is a whole command with its own resume, which it keeps). Complete when the run's
  latest checkpoint reached the steps in its config.json.
* evaluate / sweep: in this process, envs.evaluate.evaluate_policy on a PolicyActor (learned)
  or an envs.baselines baseline, plus the batch-1 latency (latency.py). The diffusion methods
  run under the suite's chunk execution (--execution, --latency-steps), the others sync.
* anchor (--anchor-last-k K): as evaluate, on each of the last K step checkpoints a run keeps
  (checkpoints/step_NNNNNNN, known in advance: TrainLoop saves at multiples of --save-every
  and at the end), without latency.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from dplite.data.replay_buffer import ReplayBuffer
from dplite.envs import DEMO_SEED_START, EVAL_SEED_START
from dplite.envs.baselines import evaluate_baseline
from dplite.envs.collect import ExpertEpisodes, dataset_attrs, resume_seed
from dplite.envs.evaluate import evaluate_policy
from dplite.envs.rollout import ChunkExecution
from dplite.envs.tasks import (
    TaskSpec,
    get_task,
    import_modules,
    output_name,
    task_from_metadata,
)
from dplite.policy.actor import PolicyActor
from dplite.policy.checkpoint import atomic_write, find_policy_dir
from dplite.policy.device import resolve_device
from dplite.policy.diffusion import DiffusionPolicy
from dplite.policy.samplers import PrefixMode
from dplite.scripts.suite.latency import baseline_latency_ms, policy_latency_ms
from dplite.scripts.suite.report import training_time
from dplite.scripts.suite.settings import Stage

if TYPE_CHECKING:
    from dplite.scripts.suite import Config

log = logging.getLogger(__name__)

LEARNED = ("diffusion", "diffusion_transformer", "mse")
DIFFUSION = ("diffusion", "diffusion_transformer")
"""Sampled with DDIM --inference-steps, under the suite's chunk execution."""
# the dp-train flags that make each learned method (besides --seed and the suite's own)
METHOD_FLAGS: dict[str, dict[str, Any]] = {
    "diffusion": {"objective": "diffusion"},
    "diffusion_transformer": {"objective": "diffusion", "backbone": "transformer"},
    "mse": {"objective": "mse"},
}
TRAIN_ACTION_STEPS = 2  # dp-train's default --n-action-steps (a test holds them equal)
DEFAULT_ACTION_NOISE = {"PushT-v0": 3.0, "GymPushT-v0": 3.0}  # px, as the quickstart; else 0
NOISE_SEED = 0  # the sampler noise of every evaluation (scripts.eval --seed)
TRAIN_MODULE = "dplite.scripts.train"
# --quick: dp-train flags of a tiny run (a test runs the whole suite in seconds)
QUICK_TRAIN: dict[str, Any] = {
    "down-dims": [16, 32, 64],
    "diffusion-step-embed-dim": 16,
    "batch-size": 8,
    "steps": 2,
    "warmup-steps": 1,
    "log-every": 1,
    "save-every": 1,
    "eval-every": 1,
    "eval-episodes": 1,
}
UNET_FLAGS = ("down-dims", "diffusion-step-embed-dim")
# --quick: a tiny transformer in place of QUICK_TRAIN's UNet widths
QUICK_TRANSFORMER: dict[str, Any] = {"n-layer": 1, "n-head": 2, "n-emb": 16}


def parse_setting(setting: str) -> tuple[str, int]:
    """'ddim10' -> ('ddim', 10)."""
    m = re.fullmatch(r"(ddim|ddpm)(\d+)", setting)
    if m is None or int(m.group(2)) < 1:
        raise ValueError(f"--sweep entry {setting!r}: expected ddimK or ddpmK with K >= 1")
    return m.group(1), int(m.group(2))


def flag_args(flags: dict[str, Any]) -> list[str]:
    """{"steps": 2, "down-dims": [16, 32], "env-import": ["m"]} -> command-line words; list
    values of --env-import repeat the flag (an append option), others follow one flag."""
    words: list[str] = []
    for name, value in flags.items():
        if name == "env-import":
            for module in value:
                words += [f"--{name}", module]
        elif isinstance(value, (list, tuple)):
            words += [f"--{name}", *map(str, value)]
        else:
            words += [f"--{name}", str(value)]
    return words


def finished_step(run: Path) -> int:
    """The step of a run's latest checkpoint (-1: none yet)."""
    latest = run / "checkpoints" / "latest.json"
    return int(json.loads(latest.read_text())["step"]) if latest.is_file() else -1


def kept_checkpoint_steps(steps: int, every: int, keep: int) -> list[int]:
    """The steps of the checkpoints a finished run of `steps` steps, saving every `every` and
    keeping `keep`, has left (TrainLoop: at multiples of `every` and at the last step)."""
    saved = sorted({*range(every, steps + 1, every), steps})
    return saved[-keep:]


def run_complete(run: Path) -> bool:
    """The latest checkpoint reached the steps of the run's config.json (dp-train writes it
    at the start of every run and resume)."""
    config = run / "config.json"
    return config.is_file() and finished_step(run) >= json.loads(config.read_text())["steps"]


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

    def anchor(self, task: str, method: str, seed: int, step: int) -> Path:
        return self.root / "results" / task / f"{method}_anchor" / f"seed{seed}_step{step:07d}.json"

    @staticmethod
    def checkpoint(run: Path, step: int) -> Path:
        return run / "checkpoints" / f"step_{step:07d}"

    def plot(self, task: str, kind: str) -> Path:
        return self.root / "plots" / f"{task}_{kind}.png"


class Suite:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.layout = Layout(cfg.out)
        self.device = resolve_device(cfg.device)
        import_modules(cfg.env_import)
        self.specs = {name: get_task(name) for name in cfg.tasks}
        self.seeds = list(range(EVAL_SEED_START, EVAL_SEED_START + cfg.episodes))
        self.main_setting = f"ddim{cfg.inference_steps}"

    def learned(self) -> list[str]:
        return [m for m in self.cfg.methods if m in LEARNED]

    def baselines(self) -> list[str]:
        return [m for m in self.cfg.methods if m not in LEARNED]

    def row_sampler(self, method: str) -> tuple[str, int]:
        """(sampler, k) of a learned method's leaderboard row; mse: one network evaluation."""
        return ("ddim", self.cfg.inference_steps) if method in DIFFUSION else ("mse", 1)

    def train_steps(self) -> int | None:
        """The runs' training steps when the suite sets them (None: dp-train's default)."""
        if self.cfg.train_steps is not None:
            return self.cfg.train_steps
        return QUICK_TRAIN["steps"] if self.cfg.quick else None

    def anchor_flags(self) -> dict[str, Any]:
        """dp-train flags that keep the last --anchor-last-k checkpoints, evenly spaced."""
        k = self.cfg.anchor_last_k
        if not k:
            return {}
        steps = self.train_steps()
        assert steps is not None and steps >= k  # Config and effective() see to it
        return {"save-every": steps // k, "keep-checkpoints": k}

    def anchor_steps(self) -> list[int]:
        """The steps of the checkpoints the anchor metric evaluates (empty: off)."""
        flags = self.anchor_flags()
        if not flags:
            return []
        steps = self.train_steps()
        assert steps is not None
        return kept_checkpoint_steps(steps, flags["save-every"], flags["keep-checkpoints"])

    def execution(self, method: str) -> ChunkExecution:
        """The chunk execution of a method's evaluations: the suite's for the diffusion
        methods, sync without delay for the others."""
        if method in DIFFUSION:
            return ChunkExecution(self.cfg.execution, self.cfg.latency_steps)
        return ChunkExecution()

    def rtc_method(self, method: str) -> PrefixMode:
        """How a method's rtc chunks keep their committed prefix: the suite's for the diffusion
        methods (the others never run rtc)."""
        return self.cfg.rtc_method if method in DIFFUSION else "guidance"

    def execution_settings(self, method: str) -> dict[str, Any]:
        """The execution fields of an evaluation's settings: none at the default (sync, no
        delay, guidance), so the records of suites from before the options still match."""
        ex = self.execution(method)
        if ex == ChunkExecution():
            return {}
        fields = {"execution": ex.mode, "latency_steps": ex.latency_steps}
        if ex.mode == "rtc" and self.rtc_method(method) != "guidance":
            fields["rtc_method"] = self.rtc_method(method)
        return fields

    def stages(self) -> list[Stage]:
        """Everything to do, in order: data before training before evaluation."""
        cfg, lay, stages = self.cfg, self.layout, []
        for spec in self.specs.values():
            task, data = output_name(spec), self.data_settings(spec)
            if self.learned():
                stages.append(self.data_stage(spec, data))
            train = {
                (m, k): {"train_flags": self.train_flags(m, k), "data": data}
                for m in self.learned()
                for k in cfg.train_seeds
            }
            for (method, seed), settings in train.items():
                stages.append(self.train_stage(spec, method, seed, settings))
            for (method, seed), settings in train.items():
                path, name = lay.result(task, method, seed), f"{task}/{method}/seed{seed}: evaluate"
                sampler, k = self.row_sampler(method)
                stages.append(self.eval_stage(name, path, spec, method, seed, sampler, k, settings))
            for method in self.baselines():
                stages.append(self.baseline_stage(spec, method))
            for seed in cfg.train_seeds if "diffusion" in cfg.methods else ():
                for setting in cfg.sweep:
                    if setting == self.main_setting:
                        continue  # the leaderboard row is that evaluation
                    sampler, k = parse_setting(setting)
                    name = f"{task}/diffusion/seed{seed}: sweep {setting}"
                    path, settings = lay.sweep(task, seed, setting), train["diffusion", seed]
                    stages.append(
                        self.eval_stage(name, path, spec, "diffusion", seed, sampler, k, settings)
                    )
            for (method, seed), settings in train.items():
                sampler, k = self.row_sampler(method)
                for step in self.anchor_steps():
                    name = f"{task}/{method}/seed{seed}: anchor step {step}"
                    path = lay.anchor(task, method, seed, step)
                    stages.append(
                        self.eval_stage(
                            name, path, spec, method, seed, sampler, k, settings, step=step
                        )
                    )
        return stages

    # ---------------------------------------------------------------- data
    def data_settings(self, spec: TaskSpec) -> dict[str, Any]:
        noise = self.cfg.action_noise
        if noise is None:
            noise = DEFAULT_ACTION_NOISE.get(spec.env_id, 0.0)
        return {
            "env": spec.to_dict(),
            "episodes": self.cfg.demo_episodes,
            "action_noise": noise,
            "expert": spec.expert,
            "seed_start": DEMO_SEED_START,
            "failed_episodes": "skipped",
        }

    def data_stage(self, spec: TaskSpec, settings: dict[str, Any]) -> Stage:
        path = self.layout.dataset(output_name(spec))
        return Stage(
            f"{output_name(spec)}: collect",
            path,
            settings,
            done=lambda: (
                path.exists() and ReplayBuffer.open(path).n_episodes >= settings["episodes"]
            ),
            run=partial(self.collect, spec, path, settings),
        )

    def collect(self, spec: TaskSpec, path: Path, settings: dict[str, Any]) -> None:
        """Fill the dataset up to the episode count (as scripts.collect, without --images)."""
        noise, n = settings["action_noise"], settings["episodes"]
        source = ExpertEpisodes(spec, action_noise=noise)
        if path.exists():
            rb = ReplayBuffer.open(path, mode="a")
        else:
            rb = ReplayBuffer.create(path)
            rb.attrs.update(dataset_attrs(spec, source.expert_ref, False, noise, DEMO_SEED_START))
        seed = resume_seed(rb.attrs, rb.get_meta("seed") if rb.n_episodes else [], DEMO_SEED_START)
        source.modes = list(rb.attrs.get("expert_modes", []))
        bar = tqdm(total=n, initial=rb.n_episodes, unit="ep", desc="collect", leave=False,
                   disable=not self.cfg.progress)  # fmt: skip
        with source, bar:
            for ep in source.episodes(seed):
                if ep.success:
                    rb.add_episode(ep.data, episode_meta=ep.meta)
                    bar.update(1)
                rb.attrs.update({"expert_modes": source.modes, "next_seed": ep.seed + 1})
                if rb.n_episodes >= n:
                    break

    # ---------------------------------------------------------------- training
    def train_flags(self, method: str, seed: int) -> dict[str, Any]:
        """The dp-train flags a run's result depends on (not its paths, device or display)."""
        flags: dict[str, Any] = {**METHOD_FLAGS[method], "seed": seed}
        if self.cfg.quick:
            flags.update(QUICK_TRAIN)
            if flags.get("backbone") == "transformer":
                for name in UNET_FLAGS:
                    del flags[name]
                flags.update(QUICK_TRANSFORMER)
        if self.cfg.train_steps is not None:
            flags["steps"] = self.cfg.train_steps
        if self.cfg.n_action_steps is not None:  # only when set: older suites' records match
            flags["n-action-steps"] = self.cfg.n_action_steps
        if self.cfg.train_max_delay and method in DIFFUSION:  # mse: no denoising to condition
            flags["train-max-delay"] = self.cfg.train_max_delay
        flags.update(self.anchor_flags())
        if self.cfg.env_import:
            flags["env-import"] = list(self.cfg.env_import)
        return flags

    def train_stage(self, spec: TaskSpec, method: str, seed: int, settings: dict) -> Stage:
        task = output_name(spec)
        run = self.layout.run(task, method, seed)
        command = [
            sys.executable, "-m", TRAIN_MODULE,
            "--dataset", str(self.layout.dataset(task)), "--out", str(run),
            "--device", self.cfg.device, *flag_args(settings["train_flags"]),
            *([] if self.cfg.progress else ["--no-progress"]),
        ]  # fmt: skip
        return Stage(
            f"{task}/{method}/seed{seed}: train",
            run,
            settings,
            done=partial(run_complete, run),
            run=partial(self.train, command),
            info={"command": shlex.join(command)},
        )

    def train(self, command: list[str]) -> None:
        """dp-train in a subprocess; it resumes from the run's latest checkpoint by itself."""
        log.info("%s", shlex.join(command[1:]))
        status = subprocess.run(command).returncode
        if status != 0:
            raise RuntimeError(f"training failed (exit status {status}): {shlex.join(command)}")

    # ---------------------------------------------------------------- evaluation
    def eval_settings(self, method: str, sampler: str, k: int | None) -> dict[str, Any]:
        return {
            "method": method,
            "sampler": sampler,
            "inference_steps": k,
            "episodes": self.cfg.episodes,
            "seeds": f"{self.seeds[0]}..{self.seeds[-1]}",
            "noise_seed": NOISE_SEED,
            "latency_calls": self.cfg.latency_calls,
            **self.execution_settings(method),
        }

    def eval_stage(
        self,
        name: str,
        path: Path,
        spec: TaskSpec,
        method: str,
        seed: int,
        sampler: str,
        k: int,
        train: dict,
        step: int | None = None,
    ) -> Stage:
        """An evaluation of the run's best/ policy (timed), or with `step` of its step
        checkpoint (anchor metric, untimed)."""
        # and the run it evaluates: Ta is the policy's own, set by these training settings
        settings = {**self.eval_settings(method, sampler, k), "train": train}
        if step is not None:
            del settings["latency_calls"]
            settings["checkpoint_step"] = step
        run = self.layout.run(output_name(spec), method, seed)
        work = partial(self.evaluate_learned, run, method, seed, sampler, k, path, step)
        return Stage(name, path, settings, done=path.exists, run=work)

    def evaluate_learned(
        self,
        run: Path,
        method: str,
        seed: int,
        sampler: str,
        k: int,
        path: Path,
        step: int | None = None,
    ) -> None:
        sampler_arg = None if sampler == "mse" else sampler  # an mse policy's own
        if step is None:
            policy_dir = find_policy_dir(run)
        else:
            policy_dir = self.layout.checkpoint(run, step)
            if not (policy_dir / "config.json").is_file():
                raise FileNotFoundError(
                    f"{policy_dir}: no such checkpoint; the anchor metric evaluates the last "
                    f"{self.cfg.anchor_last_k} checkpoints a run keeps, which dp-train keeps "
                    f"only when the suite trained the run with --anchor-last-k "
                    f"{self.cfg.anchor_last_k}"
                )
        policy = DiffusionPolicy.from_pretrained(policy_dir, device=self.device)
        execution, rtc_method = self.execution(method), self.rtc_method(method)
        actor = PolicyActor(policy, sampler_arg, k, noise_seed=NOISE_SEED, rtc_method=rtc_method)
        spec = task_from_metadata(policy.metadata)
        summary, _ = evaluate_policy(
            actor, spec, self.seeds, progress=self.cfg.progress, execution=execution
        )
        summary.update(
            method=method,
            train_seed=seed,
            checkpoint=str(policy_dir),
            train_step=policy.metadata.get("step"),
            device=str(self.device),
            eval_time_s=summary["wall_time_s"],
        )
        if execution.mode == "rtc":
            summary["rtc_method"] = rtc_method
        if step is None:
            summary.update(
                latency_ms=policy_latency_ms(
                    policy,
                    sampler_arg,
                    k,
                    self.seeds[0],
                    self.cfg.latency_calls,
                    NOISE_SEED,
                    execution,
                    rtc_method,
                ),
                latency_calls=self.cfg.latency_calls,
                **training_time(run),
            )
        atomic_write(path, json.dumps(summary, indent=2))

    def baseline_stage(self, spec: TaskSpec, method: str) -> Stage:
        task = output_name(spec)
        path = self.layout.result(task, method, None)
        settings = {**self.eval_settings(method, method, None), "n_action_steps": 1}
        settings["env"] = spec.to_dict()
        work = partial(self.evaluate_baseline, spec, method, path)
        return Stage(f"{task}/{method}: evaluate", path, settings, done=path.exists, run=work)

    def evaluate_baseline(self, spec: TaskSpec, method: str, path: Path) -> None:
        summary, _ = evaluate_baseline(method, spec, self.seeds, progress=self.cfg.progress)
        summary.update(
            method=method,
            train_seed=None,
            device="cpu",
            eval_time_s=summary["wall_time_s"],
            latency_ms=baseline_latency_ms(method, spec, self.seeds[0], self.cfg.latency_calls),
            latency_calls=self.cfg.latency_calls,
            train_time_s=None,
        )
        atomic_write(path, json.dumps(summary, indent=2))


__all__ = [
    "DIFFUSION",
    "LEARNED",
    "Layout",
    "Suite",
    "finished_step",
    "kept_checkpoint_steps",
    "parse_setting",
    "run_complete",
]
