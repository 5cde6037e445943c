"""Evaluate a saved diffusion policy in its MuJoCo task on fixed held-out seeds.

    python -m scripts.eval --checkpoint outputs/runs/pusht --episodes 50 \
        --sampler ddim --inference-steps 10 --json outputs/results.json

--checkpoint takes a policy folder (config.json + model.safetensors) or a training run folder
(its best/ policy, else its latest checkpoint). Seeds start at envs.EVAL_SEED_START, disjoint
from the demonstration seeds. Prints a table and writes the metrics as JSON.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import tyro
from tqdm import tqdm

import envs
from envs.rollout import rollout, summarize
from envs.video import write_video
from policy.checkpoint import CheckpointError
from policy.diffusion import DiffusionPolicy

log = logging.getLogger(__name__)

# task name -> gymnasium id and the episode length its time limit enforces
TASKS = {"pusht": {"env_id": "PushT-v0", "max_steps": 300, "fps": 10, "video_size": 256}}


@dataclass
class Config:
    checkpoint: Path
    """Policy folder (config.json + model.safetensors) or a training run folder."""
    episodes: int = 50
    """Number of evaluation episodes (one seed each)."""
    sampler: Literal["ddpm", "ddim"] = "ddim"
    inference_steps: int | None = None
    """Denoising steps k (default: K for ddpm, 10 for ddim)."""
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
    """Seed of the sampler's noise."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"--episodes must be >= 1, got {self.episodes}")
        if self.videos < 0:
            raise ValueError(f"--videos must be >= 0, got {self.videos}")


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


def obs_mode_for(obs_keys) -> str:
    keys = set(obs_keys)
    return "image" if "img" in keys else "keypoint" if "keypoint" in keys else "state"


def evaluate_policy(
    policy: DiffusionPolicy,
    task: str,
    seeds: list[int],
    sampler: str,
    inference_steps: int | None,
    n_videos: int = 0,
    noise_seed: int = 0,
    progress: bool = False,
    n_action_steps: int | None = None,
):
    """Roll the policy out on each seed (batched); returns (summary dict, per-episode results)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {sorted(TASKS)}")
    pcfg = policy.cfg
    n_action_steps = n_action_steps or pcfg.n_action_steps
    if not 1 <= n_action_steps <= pcfg.horizon - pcfg.n_obs_steps + 1:
        raise ValueError(
            f"n_action_steps={n_action_steps} must be in [1, T - To + 1 = "
            f"{pcfg.horizon - pcfg.n_obs_steps + 1}]"
        )
    spec = TASKS[task]
    mode = obs_mode_for(policy.cfg.obs_shapes)
    generator = torch.Generator(policy.device).manual_seed(noise_seed)
    keys = list(policy.cfg.obs_shapes)

    def policy_fn(obs: dict[str, np.ndarray]) -> np.ndarray:
        batch = {k: torch.from_numpy(obs[k]).to(policy.device) for k in keys}
        out = policy.predict_action(batch, sampler, inference_steps, generator=generator)
        # every action from the newest observation on; the rollout executes n_action_steps
        return out["action_pred"][:, pcfg.n_obs_steps - 1 :].float().cpu().numpy()

    def make_env(render: bool) -> gym.Env:
        if not render:
            return gym.make(spec["env_id"], obs_mode=mode)
        return gym.make(
            spec["env_id"], obs_mode=mode, render_mode="rgb_array", render_size=spec["video_size"]
        )

    bar = tqdm(total=len(seeds) * spec["max_steps"], unit="step", disable=not progress, leave=False)
    t0 = time.perf_counter()
    was_training = policy.training
    policy.eval()
    results = rollout(
        policy_fn,
        make_env,
        seeds,
        pcfg.n_obs_steps,
        n_action_steps,
        n_videos=n_videos,
        progress=bar.update,
    )
    policy.train(was_training)
    bar.close()
    summary = summarize(results)
    summary.update(
        sampler=sampler,
        inference_steps=policy.sampler_settings(sampler, inference_steps)[1],
        n_action_steps=n_action_steps,
        wall_time_s=time.perf_counter() - t0,
        task=task,
    )
    return summary, results


def main(cfg: Config) -> dict:
    device = resolve_device(cfg.device)
    policy_dir = find_policy_dir(cfg.checkpoint)
    policy = DiffusionPolicy.from_pretrained(policy_dir, device=device)
    task = policy.metadata.get("task", "pusht")
    seeds = list(range(cfg.seed_start, cfg.seed_start + cfg.episodes))
    summary, results = evaluate_policy(
        policy,
        task,
        seeds,
        cfg.sampler,
        cfg.inference_steps,
        n_videos=cfg.videos,
        noise_seed=cfg.seed,
        progress=cfg.progress,
        n_action_steps=cfg.n_action_steps,
    )
    summary.update(
        checkpoint=str(policy_dir), device=str(device), train_step=policy.metadata.get("step")
    )
    video_dir = cfg.video_dir or policy_dir / "videos"
    summary["videos"] = [
        str(write_video(video_dir / f"{task}_seed{r.seed}.mp4", r.frames, TASKS[task]["fps"]))
        for r in results
        if r.frames
    ]
    lo, hi = summary["success_ci95"]
    print(f"checkpoint     {policy_dir} (step {summary['train_step']})")
    print(f"sampler        {cfg.sampler} k={summary['inference_steps']} on {device}")
    print(f"episodes       {summary['episodes']} (seeds {seeds[0]}..{seeds[-1]})")
    print(f"success rate   {summary['success_rate']:.3f}  (95% CI {lo:.3f}-{hi:.3f})")
    print(f"mean max reward {summary['mean_max_reward']:.3f}")
    print(f"wall time      {summary['wall_time_s']:.1f} s")
    for v in summary["videos"]:
        print(f"video          {v}")
    if cfg.json is not None:
        cfg.json.parent.mkdir(parents=True, exist_ok=True)
        cfg.json.write_text(json.dumps(summary, indent=2))
        print(f"results        {cfg.json}")
    return summary


def cli() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(tyro.cli(Config))


if __name__ == "__main__":
    cli()
