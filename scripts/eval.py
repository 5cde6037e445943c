"""Evaluate a saved diffusion policy in its environment on fixed held-out seeds.

    python -m dplite.scripts.eval --checkpoint outputs/runs/pusht --episodes 50 \
        --sampler ddim --inference-steps 10 --json outputs/results.json

--checkpoint takes a policy folder (config.json + model.safetensors) or a training run folder
(its best/ policy, else its latest checkpoint). The policy records how to make its environment
(task name, or gymnasium id + imports + kwargs + success key), so nothing else is needed; the
env options (--task, --env-id, --env-import, --env-kwargs, --success-key, --max-episode-steps)
override it. Seeds start at envs.EVAL_SEED_START, disjoint from the demonstration seeds.
Prints a table and writes the metrics as JSON (episodes that their environment cut short by an
error are listed under "errors", counted as failures). --noise-seeds N repeats the episodes with
N sampler-noise seeds and pools them, for rates finer than one 50-episode run resolves.
--max-envs N keeps at most N environments at once (the episodes run in groups; the results are
the same), for environments too large to make one per episode (robosuite's with cameras).
--backend onnx evaluates the denoiser with ONNX Runtime on the CPU (the "onnx" extra;
DiffusionPolicy.use_backend), the eager chunks to float rounding; --backend bf16 under
bfloat16 autocast (chunks within about 1 % of the action range of eager ones).

--latency-steps d with --execution sync | async | ensemble | rtc evaluates under an inference
delay: the chunk planned from the observation at step t acts from t + d, the previous chunk
running meanwhile (envs/rollout.py; docs/latency.md). The JSON records the settings and the
smoothness: boundary_jerk and within_jerk, the mean |delta action| across chunk boundaries and
within chunks. On a task solvable more than one way (Panda stack's two orders) the JSON also
holds each episode's outcome and the successes per outcome (success_by_outcome).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dplite import envs
from dplite.envs.evaluate import evaluate_policy, pool
from dplite.envs.options import EnvArgs, EnvOptions, run_command
from dplite.envs.rollout import ACT_DECAY, ChunkExecution
from dplite.envs.tasks import task_from_metadata
from dplite.envs.video import write_video
from dplite.policy.actor import PolicyActor
from dplite.policy.checkpoint import atomic_write, find_policy_dir
from dplite.policy.device import resolve_device
from dplite.policy.diffusion import DiffusionPolicy
from dplite.policy.samplers import RTC_MAX_GUIDANCE

log = logging.getLogger(__name__)


@dataclass
class Config:
    checkpoint: Path
    """Policy folder (config.json + model.safetensors) or a training run folder."""
    env: EnvArgs = field(default_factory=EnvOptions)
    episodes: int = 50
    """Number of evaluation episodes (one seed each)."""
    sampler: Literal["ddpm", "ddim", "consistency"] | None = None
    """Default: the policy's own (ddim for a trained policy, consistency for a distilled one);
    "consistency" is only for a policy written by scripts.distill."""
    inference_steps: int | None = None
    """Denoising steps k (default: the policy's own k for its own sampler, else K for ddpm and
    10 for ddim)."""
    timestep_spacing: Literal["leading", "trailing"] | None = None
    """Which timesteps a DDPM / DDIM sample with k < K visits (default: the policy's own;
    policies trained before the option existed use leading)."""
    seed_start: int = envs.EVAL_SEED_START
    """First evaluation seed; episodes use seed_start, seed_start + 1, ..."""
    n_action_steps: int | None = None
    """Actions executed per policy call, Ta (default: the checkpoint's); at most T - To + 1."""
    videos: int = 2
    """Record mp4 videos of the first N episodes."""
    video_dir: Path | None = None
    """Where videos go (default: <checkpoint>/videos)."""
    json: Path | None = None
    """Write the metrics here as JSON."""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ..."""
    seed: int = 0
    """Seed of the sampler's noise (each episode draws from its own stream of it)."""
    noise_seeds: int = 1
    """Run the episodes once for each sampler-noise seed --seed, --seed + 1, ... and pool them:
    the success rate is over all runs, each seed's is listed in success_by_noise_seed, and the
    per-episode lists (seeds, successes, errors) hold the runs one after another. Near a success
    rate of 0.9 one 50-episode run has a 95 % CI of about +-0.08; pooling narrows it, though the
    runs share the environment seeds."""
    cuda_graphs: bool = False
    """Replay the denoising loop as a CUDA graph (CUDA devices only; the eager chunks to float
    rounding)."""
    backend: Literal["eager", "onnx", "bf16"] = "eager"
    """What evaluates the denoiser: eager (PyTorch with the fast CPU layers), onnx (the
    network exported to ONNX and run by ONNX Runtime: the 'onnx' extra, CPU only; the eager
    chunks to float rounding) or bf16 (PyTorch under bfloat16 autocast: faster at large
    batches on CPUs with native bf16; chunks within about 1 % of the action range)."""
    progress: bool = True
    """Show a progress bar."""
    max_envs: int | None = None
    """At most this many environments at once (default: one per episode, all batched). The
    episodes run in groups of this size; set it where each environment is large, such as
    robosuite's with cameras (an offscreen renderer each). Results do not depend on it."""
    latency_steps: int = 0
    """Inference delay d in control steps: the chunk planned from the observation at step t
    acts from step t + d; until then the previous chunk keeps executing. At most Ta."""
    execution: Literal["sync", "async", "ensemble", "rtc"] = "sync"
    """How chunks follow each other under the delay: sync (the world waits; d has no effect),
    async (switch to each new chunk when it arrives), ensemble (ACT's weighted average of
    overlapping chunks), rtc (real-time chunking: each chunk sampled with the committed actions
    frozen and the overlap softly guided)."""
    blend_steps: int | None = None
    """ensemble / rtc: steps past the committed ones over which the previous chunk still
    counts (default: d; a large value gives the whole overlap)."""
    ensemble_decay: float = ACT_DECAY
    """ensemble: m of ACT's weights exp(-m i), i = 0 the oldest chunk."""
    rtc_method: Literal["guidance", "inpaint", "conditioned"] = "guidance"
    """rtc: how the prefix is enforced while sampling: guidance (the RTC paper's, one extra
    backward pass per step), inpainting (replacement, no extra cost) or conditioned (for a
    policy trained with --train-max-delay: the committed actions given clean, no extra cost)."""
    max_guidance: float = RTC_MAX_GUIDANCE
    """rtc guidance: the clip beta of the guidance weight."""

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"--episodes must be >= 1, got {self.episodes}")
        if self.videos < 0:
            raise ValueError(f"--videos must be >= 0, got {self.videos}")
        if self.max_envs is not None and self.max_envs < 1:
            raise ValueError(f"--max-envs must be >= 1, got {self.max_envs}")
        if self.noise_seeds < 1:
            raise ValueError(f"--noise-seeds must be >= 1, got {self.noise_seeds}")
        if not self.max_guidance > 0:
            raise ValueError(f"--max-guidance must be > 0, got {self.max_guidance}")
        self.chunk_execution  # noqa: B018 -- validates the execution options

    @property
    def chunk_execution(self) -> ChunkExecution:
        return ChunkExecution(
            self.execution, self.latency_steps, self.blend_steps, self.ensemble_decay
        )


def main(cfg: Config) -> dict:
    device = resolve_device(cfg.device)
    policy_dir = find_policy_dir(cfg.checkpoint)
    policy = DiffusionPolicy.from_pretrained(policy_dir, device=device)
    if cfg.timestep_spacing is not None:
        policy.cfg = dataclasses.replace(policy.cfg, timestep_spacing=cfg.timestep_spacing)
    if cfg.cuda_graphs:
        if device.type != "cuda":  # a refused input, reported by run_command like the rest
            raise ValueError(f"--cuda-graphs needs a CUDA device, not {device}")
        policy.use_cuda_graphs()
    policy.use_backend(cfg.backend)  # refuses onnx without onnxruntime, or off the CPU
    if cfg.execution == "rtc" and cfg.rtc_method == "conditioned":  # refused before any env
        sampler = policy.sampler_settings(cfg.sampler, cfg.inference_steps)[0]
        policy.check_conditioned(sampler, cfg.latency_steps)
    spec = cfg.env.resolve(base=task_from_metadata(policy.metadata))
    seeds = list(range(cfg.seed_start, cfg.seed_start + cfg.episodes))
    noise_seeds = list(range(cfg.seed, cfg.seed + cfg.noise_seeds))
    runs = [
        evaluate_policy(
            PolicyActor(
                policy,
                cfg.sampler,
                cfg.inference_steps,
                noise_seed,
                cfg.n_action_steps,
                rtc_method=cfg.rtc_method,
                max_guidance=cfg.max_guidance,
            ),
            spec,
            seeds,
            n_videos=cfg.videos if noise_seed == cfg.seed else 0,
            progress=cfg.progress,
            execution=cfg.chunk_execution,
            max_envs=cfg.max_envs,
        )
        for noise_seed in noise_seeds
    ]
    results = runs[0][1]  # the first noise seed's episodes: the only ones with video frames
    summary = pool(runs)  # every episode of every noise seed, noise seed by noise seed
    summary["success_by_noise_seed"] = summary.pop("success_by_run")
    summary["noise_seeds"] = noise_seeds
    summary.update(
        checkpoint=str(policy_dir),
        device=str(device),
        cuda_graphs=cfg.cuda_graphs,
        backend=cfg.backend,
        timestep_spacing=policy.cfg.timestep_spacing,
        train_step=policy.metadata.get("step"),
    )
    if cfg.execution == "rtc":
        summary.update(rtc_method=cfg.rtc_method, max_guidance=cfg.max_guidance)
    video_dir = cfg.video_dir or policy_dir / "videos"
    name = spec.name.replace("/", "_")
    summary["videos"] = [
        str(write_video(video_dir / f"{name}_seed{r.seed}.mp4", r.frames, spec.control_hz))
        for r in results
        if r.frames
    ]
    lo, hi = summary["success_ci95"]
    print(f"checkpoint     {policy_dir} (step {summary['train_step']})")
    print(f"environment    {spec.env_id} (task {spec.name})")
    graphs = " (CUDA graph)" if cfg.cuda_graphs else f" ({cfg.backend})"
    print(f"sampler        {summary['sampler']} k={summary['inference_steps']} on {device}{graphs}")
    pooled = f" x noise seeds {noise_seeds[0]}..{noise_seeds[-1]}" if len(runs) > 1 else ""
    print(f"episodes       {summary['episodes']} (seeds {seeds[0]}..{seeds[-1]}{pooled})")
    print(f"success rate   {summary['success_rate']:.3f}  (95% CI {lo:.3f}-{hi:.3f})")
    if len(runs) > 1:
        print("per noise seed " + " ".join(f"{x:.3f}" for x in summary["success_by_noise_seed"]))
    print(f"mean max reward {_fmt(summary['mean_max_reward'])}")
    rtc = f" ({cfg.rtc_method})" if cfg.execution == "rtc" else ""
    print(f"execution      {cfg.execution}{rtc}, latency {cfg.latency_steps} steps")
    print(
        f"action jerk    boundary {_fmt(summary['boundary_jerk'])}  "
        f"within {_fmt(summary['within_jerk'])}"
    )
    if "success_by_outcome" in summary:
        counts = ", ".join(f"{k} {v}" for k, v in summary["success_by_outcome"].items())
        print(f"successes by   {spec.outcome_key}: {counts or 'none'}")
    print(f"wall time      {summary['wall_time_s']:.1f} s")
    for err in summary["errors"]:
        print(f"env error      seed {err['seed']}: {err['error']}")
    for v in summary["videos"]:
        print(f"video          {v}")
    if cfg.json is not None:
        atomic_write(cfg.json, json.dumps(summary, indent=2))
        print(f"results        {cfg.json}")
    return summary


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def cli() -> None:
    run_command(main, Config, "dp-eval")


if __name__ == "__main__":
    cli()
