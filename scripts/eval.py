"""Evaluate a saved diffusion policy in its environment on fixed held-out seeds.

    python -m scripts.eval --checkpoint outputs/runs/pusht --episodes 50 \
        --sampler ddim --inference-steps 10 --json outputs/results.json

--checkpoint takes a policy folder (config.json + model.safetensors) or a training run folder
(its best/ policy, else its latest checkpoint). The policy records how to make its environment
(task name, or gymnasium id + imports + kwargs + success key), so nothing else is needed; the
env options (--task, --env-id, --env-import, --env-kwargs, --success-key, --max-episode-steps)
override it. Seeds start at envs.EVAL_SEED_START, disjoint from the demonstration seeds.
Prints a table and writes the metrics as JSON (episodes that their environment cut short by an
error are listed under "errors", counted as failures). --noise-seeds N repeats the episodes with
N sampler-noise seeds and pools them, for rates finer than one 50-episode run resolves.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro
from tqdm import tqdm

import envs
from envs.rollout import rollout, summarize
from envs.tasks import TaskSpec, episode_limit, flat_obs_shapes, get_task, make_env
from envs.video import write_video
from policy.checkpoint import CheckpointError
from policy.diffusion import DiffusionPolicy
from scripts.env_options import EnvArgs, EnvOptions

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
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"--episodes must be >= 1, got {self.episodes}")
        if self.videos < 0:
            raise ValueError(f"--videos must be >= 0, got {self.videos}")
        if self.noise_seeds < 1:
            raise ValueError(f"--noise-seeds must be >= 1, got {self.noise_seeds}")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def find_policy_dir(path: Path) -> Path:
    """A policy folder itself, or the best / latest policy inside a training run folder."""
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path
    if (path / "best" / "config.json").is_file():
        return path / "best"
    latest = path / "checkpoints" / "latest.json"
    if latest.is_file():
        return path / "checkpoints" / json.loads(latest.read_text())["name"]
    raise CheckpointError(f"{path}: neither a policy folder nor a training run with a checkpoint")


def policy_task(policy: DiffusionPolicy) -> TaskSpec:
    """The environment a saved policy was trained for (its metadata; old ones name a task)."""
    meta = policy.metadata
    if "env" in meta:
        return TaskSpec.from_dict(meta["env"])
    return get_task(meta.get("task", "pusht"))


def check_env_fits(
    spec: TaskSpec, obs_shapes: dict, action_dim: int, what: str = "the policy"
) -> int | None:
    """Raise ValueError unless the env emits every key of `what` (a policy or a dataset) with
    its per-step shape, and takes actions of its size; returns the env's episode limit."""
    env = make_env(spec, obs_keys=obs_shapes)
    try:
        emitted = {k: shape for k, (shape, _) in flat_obs_shapes(env.observation_space).items()}
        action_shape = tuple(env.action_space.shape or ())
        limit = episode_limit(env)
    finally:
        env.close()
    missing = sorted(set(obs_shapes) - set(emitted))
    if missing:
        raise ValueError(
            f"{what} uses observation keys {sorted(obs_shapes)} but environment "
            f"{spec.env_id!r} (task {spec.name!r}) emits {sorted(emitted)}: missing {missing}"
        )
    for key, shape in obs_shapes.items():
        if tuple(emitted[key]) != tuple(shape):
            raise ValueError(
                f"observation {key!r}: {what} has per-step shape {tuple(shape)}, "
                f"environment {spec.env_id!r} emits {tuple(emitted[key])}"
            )
    if action_shape != (action_dim,):
        raise ValueError(
            f"{what} has actions of shape ({action_dim},) but environment "
            f"{spec.env_id!r} takes {action_shape}"
        )
    return limit


def episode_generator(noise_seed: int, episode_seed: int, device: torch.device) -> torch.Generator:
    """The sampler noise of one episode: a stream fixed by (noise seed, episode seed) only."""
    seed = int(np.random.SeedSequence([noise_seed, episode_seed]).generate_state(1, np.uint64)[0])
    return torch.Generator(device).manual_seed(seed)


def evaluate_policy(
    policy: DiffusionPolicy,
    spec: TaskSpec,
    seeds: list[int],
    sampler: str,
    inference_steps: int | None,
    n_videos: int = 0,
    noise_seed: int = 0,
    progress: bool = False,
    n_action_steps: int | None = None,
):
    """Roll the policy out on each seed (batched); returns (summary dict, per-episode results)."""
    pcfg = policy.cfg
    n_action_steps = n_action_steps or pcfg.n_action_steps
    if not 1 <= n_action_steps <= pcfg.horizon - pcfg.n_obs_steps + 1:
        raise ValueError(
            f"n_action_steps={n_action_steps} must be in [1, T - To + 1 = "
            f"{pcfg.horizon - pcfg.n_obs_steps + 1}]"
        )
    # what will run, e.g. ("mse", 1) for the regression baseline; a sampler that does not fit
    # the policy is refused here, before any rollout
    sampler_used, k_used = policy.sampler_settings(sampler, inference_steps)
    keys = list(pcfg.obs_shapes)
    max_steps = check_env_fits(spec, pcfg.obs_shapes, pcfg.action_dim) or 1000
    generators: dict[int, torch.Generator] = {}

    def policy_fn(obs: dict[str, np.ndarray], batch_seeds: np.ndarray) -> np.ndarray:
        batch = {k: torch.from_numpy(obs[k]).to(policy.device) for k in keys}
        gens = [
            generators.setdefault(int(s), episode_generator(noise_seed, int(s), policy.device))
            for s in batch_seeds
        ]
        out = policy.predict_action(batch, sampler, inference_steps, generator=gens)
        # every action from the newest observation on; the rollout executes n_action_steps
        return out["action_pred"][:, pcfg.n_obs_steps - 1 :].float().cpu().numpy()

    bar = tqdm(total=len(seeds) * max_steps, unit="step", disable=not progress, leave=False)
    t0 = time.perf_counter()
    was_training = policy.training
    policy.eval()
    results = rollout(
        policy_fn,
        lambda render: make_env(spec, obs_keys=keys, render=render),
        seeds,
        pcfg.n_obs_steps,
        n_action_steps,
        n_videos=n_videos,
        progress=bar.update,
        success_key=spec.success_key,
    )
    policy.train(was_training)
    bar.close()
    summary = summarize(results)
    summary.update(
        sampler=sampler_used,
        inference_steps=k_used,
        n_action_steps=n_action_steps,
        wall_time_s=time.perf_counter() - t0,
        task=spec.name,
        env_id=spec.env_id,
    )
    return summary, results


def main(cfg: Config) -> dict:
    device = resolve_device(cfg.device)
    policy_dir = find_policy_dir(cfg.checkpoint)
    policy = DiffusionPolicy.from_pretrained(policy_dir, device=device)
    if cfg.cuda_graphs:
        if device.type != "cuda":
            raise SystemExit(f"scripts.eval: --cuda-graphs needs a CUDA device, not {device}")
        policy.use_cuda_graphs()
    spec = cfg.env.resolve(base=policy_task(policy))
    seeds = list(range(cfg.seed_start, cfg.seed_start + cfg.episodes))
    noise_seeds = list(range(cfg.seed, cfg.seed + cfg.noise_seeds))
    runs = [
        evaluate_policy(
            policy,
            spec,
            seeds,
            cfg.sampler,
            cfg.inference_steps,
            n_videos=cfg.videos if noise_seed == cfg.seed else 0,
            noise_seed=noise_seed,
            progress=cfg.progress,
            n_action_steps=cfg.n_action_steps,
        )
        for noise_seed in noise_seeds
    ]
    results = runs[0][1]  # the first noise seed's episodes: the only ones with video frames
    summary = {  # pooled: every episode of every noise seed, noise seed by noise seed
        **runs[0][0],
        **summarize([r for _, run_results in runs for r in run_results]),
        "wall_time_s": sum(run["wall_time_s"] for run, _ in runs),
        "success_by_noise_seed": [run["success_rate"] for run, _ in runs],
    }
    summary["noise_seeds"] = noise_seeds
    summary.update(
        checkpoint=str(policy_dir),
        device=str(device),
        cuda_graphs=cfg.cuda_graphs,
        train_step=policy.metadata.get("step"),
    )
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
    graphs = " (CUDA graph)" if cfg.cuda_graphs else ""
    print(f"sampler        {summary['sampler']} k={summary['inference_steps']} on {device}{graphs}")
    pooled = f" x noise seeds {noise_seeds[0]}..{noise_seeds[-1]}" if len(runs) > 1 else ""
    print(f"episodes       {summary['episodes']} (seeds {seeds[0]}..{seeds[-1]}{pooled})")
    print(f"success rate   {summary['success_rate']:.3f}  (95% CI {lo:.3f}-{hi:.3f})")
    if len(runs) > 1:
        print("per noise seed " + " ".join(f"{x:.3f}" for x in summary["success_by_noise_seed"]))
    print(f"mean max reward {_fmt(summary['mean_max_reward'])}")
    print(f"wall time      {summary['wall_time_s']:.1f} s")
    for err in summary["errors"]:
        print(f"env error      seed {err['seed']}: {err['error']}")
    for v in summary["videos"]:
        print(f"video          {v}")
    if cfg.json is not None:
        cfg.json.parent.mkdir(parents=True, exist_ok=True)
        cfg.json.write_text(json.dumps(summary, indent=2))
        print(f"results        {cfg.json}")
    return summary


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def cli() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(tyro.cli(Config))


if __name__ == "__main__":
    cli()
