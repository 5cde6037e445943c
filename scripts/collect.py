"""Collect scripted-expert demonstrations into a zarr dataset (the Diffusion Policy layout).

    python -m scripts.collect --task pusht --episodes 200 --out outputs/data/pusht.zarr
    python -m scripts.collect --task pusht --episodes 50 --out outputs/data/pusht_img.zarr --images

Seeds run upward from ``--seed-start`` (default ``envs.DEMO_SEED_START``) and must stay below
``envs.EVAL_SEED_START``, so demonstrations never see an evaluation start. Each seed gives one
episode: ``env.reset(seed=s)`` and an expert whose mode generator is seeded from s too, so an
episode is reproducible from its seed alone. Failed episodes are skipped unless
``--keep-failed``. Running the command again on an existing dataset resumes after the largest
recorded seed until ``--episodes`` episodes are stored.

Timing convention (Chi et al. 2023): row t holds the observation at step t (before acting) and
the action taken at step t. Stored keys, whatever the env's observation mode:
action (L, 2) float32, state (L, 5), keypoint (L, 9, 2), agent_pos (L, 2) [, img (L, 96, 96, 3)
uint8 with --images]. With ``--action-noise`` the env executes a perturbed action while the
stored action stays the expert's (DART). Per-episode meta: seed, success (0/1), expert_mode (index into the
dataset attribute ``expert_modes``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tyro
from tqdm import tqdm

from data.replay_buffer import ReplayBuffer
from envs import DEMO_SEED_START, EVAL_SEED_START
from envs.experts import PushTExpert
from envs.geometry import t_keypoints
from envs.pusht import PushTEnv

log = logging.getLogger(__name__)

# Stream tag mixed into the expert's seed so that its draws are independent of the env's
# np_random (which gymnasium seeds from the bare seed).
_EXPERT_STREAM = 0xE4BE27
_NOISE_STREAM = 0xD4A7


@dataclass
class Config:
    task: Literal["pusht"] = "pusht"
    """Task to demonstrate."""
    episodes: int = 200
    """Number of episodes the dataset should hold when done (resume counts stored ones)."""
    out: Path = Path("outputs/data/pusht.zarr")
    """Zarr dataset (directory store); an existing one is resumed."""
    images: bool = False
    """Also store 96 x 96 top-down images under data/img."""
    keep_failed: bool = False
    """Store episodes that did not reach success too (meta/success = 0)."""
    seed_start: int = DEMO_SEED_START
    """First seed of a new dataset; seeds must stay below envs.EVAL_SEED_START."""
    max_episode_steps: int = 300
    """Episode length limit (the benchmark's 300)."""
    action_noise: float = 0.0
    """DART-style noise (Laskey et al. 2017), std in pixels: the env executes the expert's
    action plus N(0, std^2) per axis while the dataset stores the expert's own action, so the
    demonstrations also show how to recover from small deviations. 0 = the action taken."""
    progress: bool = True
    """Show a tqdm bar (--no-progress for CI logs)."""

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"Config.episodes={self.episodes}, expected >= 1")
        if not DEMO_SEED_START <= self.seed_start < EVAL_SEED_START:
            raise ValueError(
                f"Config.seed_start={self.seed_start}: demonstration seeds must lie in "
                f"[{DEMO_SEED_START}, {EVAL_SEED_START}) (evaluation uses {EVAL_SEED_START}+)"
            )
        if not 0.0 <= self.action_noise <= 50.0:
            raise ValueError(f"Config.action_noise={self.action_noise}, expected 0 <= std <= 50 px")
        if self.max_episode_steps < 1:
            raise ValueError(f"Config.max_episode_steps={self.max_episode_steps}, expected >= 1")


def expert_rng(seed: int) -> np.random.Generator:
    """The expert's generator for a demonstration seed (independent of the env's)."""
    return np.random.default_rng([seed, _EXPERT_STREAM])


def run_episode(
    env: PushTEnv, expert: PushTExpert, seed: int, images: bool, action_noise: float = 0.0
) -> tuple[dict[str, np.ndarray], bool]:
    """One expert episode from ``seed``: ({key: (L, ...)} rows, success).

    With ``action_noise`` > 0 the env executes the stored action plus Gaussian noise drawn
    from a generator seeded by ``seed`` (so the episode stays reproducible).
    """
    noise_rng = np.random.default_rng([seed, _NOISE_STREAM])
    obs, info = env.reset(seed=seed)
    expert.reset(obs)
    rows: dict[str, list[np.ndarray]] = {"action": [], "state": [], "keypoint": [], "agent_pos": []}
    if images:
        rows["img"] = []
    success = False
    while True:
        action = expert.act(obs)
        rows["action"].append(action)
        rows["state"].append(obs["state"])
        rows["agent_pos"].append(obs["agent_pos"])
        # Keypoints from the env's float64 pose: identical to the keypoint-mode observation.
        kp = obs["keypoint"] if "keypoint" in obs else t_keypoints(env.block_pose())
        rows["keypoint"].append(np.asarray(kp, dtype=np.float32))
        if images:
            rows["img"].append(obs["img"])
        executed = action
        if action_noise > 0:
            executed = action + noise_rng.normal(0.0, action_noise, size=2).astype(np.float32)
        obs, _, terminated, truncated, info = env.step(executed)
        if terminated or truncated:
            success = bool(info["is_success"])
            break
    episode = {k: np.stack(v) for k, v in rows.items()}
    episode["action"] = episode["action"].astype(np.float32)  # (L, 2)
    return episode, success


def _open_or_create(cfg: Config) -> tuple[ReplayBuffer, int]:
    """The dataset to append to and the next seed to try."""
    if not cfg.out.exists():
        rb = ReplayBuffer.create(cfg.out)
        rb.attrs.update(
            {
                "task": cfg.task,
                "images": cfg.images,
                "expert": "envs.experts.PushTExpert",
                "expert_modes": list(PushTExpert.MODES),
                "max_episode_steps": cfg.max_episode_steps,
                "action_noise": cfg.action_noise,
                "seed_start": cfg.seed_start,
                "next_seed": cfg.seed_start,
            }
        )
        return rb, cfg.seed_start
    rb = ReplayBuffer.open(cfg.out, mode="a")
    attrs = dict(rb.attrs)
    if attrs.get("task", cfg.task) != cfg.task:
        raise ValueError(f"{cfg.out}: holds task {attrs.get('task')!r}, not --task {cfg.task!r}")
    if bool(attrs.get("images", cfg.images)) != cfg.images:
        raise ValueError(
            f"{cfg.out}: images={attrs.get('images')} in the dataset but --images={cfg.images}; "
            "resume with the same setting or write a new dataset"
        )
    next_seed = int(attrs.get("next_seed", cfg.seed_start))
    if rb.n_episodes > 0:
        next_seed = max(next_seed, int(rb.get_meta("seed").max()) + 1)
    return rb, next_seed


def main(cfg: Config) -> dict[str, float | int | dict[str, int]]:
    """Fill ``cfg.out`` up to ``cfg.episodes`` episodes; returns a summary dict."""
    rb, seed = _open_or_create(cfg)
    stored_before = rb.n_episodes
    obs_mode = "image" if cfg.images else "keypoint"
    env = PushTEnv(obs_mode=obs_mode, max_episode_steps=cfg.max_episode_steps)
    modes: Counter[str] = Counter()
    tried = succeeded = steps = 0
    t0 = time.perf_counter()
    bar = tqdm(
        total=cfg.episodes, initial=min(stored_before, cfg.episodes), unit="ep",
        disable=not cfg.progress, desc="collect",
    )  # fmt: skip
    try:
        while rb.n_episodes < cfg.episodes:
            if seed >= EVAL_SEED_START:
                raise ValueError(
                    f"{cfg.out}: next demonstration seed {seed} reaches the evaluation seeds "
                    f"({EVAL_SEED_START}+); stored {rb.n_episodes} of {cfg.episodes} episodes"
                )
            expert = PushTExpert(expert_rng(seed))
            episode, success = run_episode(env, expert, seed, cfg.images, cfg.action_noise)
            tried += 1
            steps += len(episode["action"])
            modes[expert.mode] += 1
            succeeded += int(success)
            if success or cfg.keep_failed:
                meta = {"seed": seed, "success": int(success), "expert_mode": expert.mode_id}
                rb.add_episode(episode, episode_meta=meta)
                bar.update(1)
            seed += 1
            rb.attrs["next_seed"] = seed
            bar.set_postfix(success=f"{succeeded / tried:.2f}", seed=seed - 1)
    finally:
        bar.close()
        env.close()
    elapsed = time.perf_counter() - t0
    summary = {
        "episodes": rb.n_episodes,
        "added": rb.n_episodes - stored_before,
        "tried": tried,
        "success_rate": succeeded / tried if tried else float("nan"),
        "steps": steps,
        "steps_per_s": steps / elapsed if elapsed > 0 else float("nan"),
        "modes": dict(modes),
    }
    return summary


def cli() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = tyro.cli(Config)
    s = main(cfg)
    print(
        f"{cfg.out}: {s['episodes']} episodes (+{s['added']}) | tried {s['tried']} | "
        f"success {s['success_rate']:.3f} | {s['steps']} steps | {s['steps_per_s']:.0f} steps/s"
    )
    if s["modes"]:
        print("modes: " + ", ".join(f"{k} {v}" for k, v in sorted(s["modes"].items())))


if __name__ == "__main__":
    cli()
