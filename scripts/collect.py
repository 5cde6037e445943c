"""Collect scripted-expert demonstrations into a zarr dataset (the Diffusion Policy layout).

    python -m dplite.scripts.collect --task pusht --episodes 200 --out outputs/data/pusht.zarr
    python -m dplite.scripts.collect --task pusht --episodes 50 --out outputs/data/pusht_img.zarr --images
    python -m dplite.scripts.collect --task panda_lift --episodes 500 --action-noise 0.1
    python -m dplite.scripts.collect --env-id PointMaze_Medium-v3 --env-import gymnasium_robotics \
        --env-kwargs '{"continuing_task": false}' \
        --expert examples.pointmaze_expert:make_expert --episodes 300 --out outputs/data/maze.zarr

The expert protocol. ``--expert MODULE:CALLABLE`` (default: the task's expert) names a factory
that is called once with the environment and returns an object with

    reset(seed: int) -> None          called right after env.reset(seed=seed): draw the
                                      episode's mode from a generator seeded by `seed`
    __call__(obs: dict) -> action     obs flattened as the dataset stores it (envs.tasks:
                                      a Box is "state", a dict gives one key per leaf)
    mode: str                         optional: the episode's strategy, recorded per episode

Seeds run upward from ``--seed-start`` (default ``envs.DEMO_SEED_START``) and must stay below
``envs.EVAL_SEED_START``, so demonstrations never see an evaluation start. Each seed gives one
episode, reproducible from the seed alone. Failed episodes (no success reported in ``info``)
are skipped unless ``--keep-failed``. Running the command again on an existing dataset resumes
after the largest recorded seed until ``--episodes`` episodes are stored.

Timing convention (Chi et al. 2023): row t holds the observation at step t (before acting) and
the action taken at step t. Stored keys: ``action`` (float32) and every observation key the
environment emits (floats as float32; images stay uint8). With ``--action-noise`` the env
executes a perturbed action while the stored action stays the expert's (DART). The dataset's
attributes record the task (``env``: the TaskSpec as a dict), so ``scripts.train`` knows its
environment. Per-episode meta: seed, success (0/1), expert_mode (index into the dataset
attribute ``expert_modes``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import tyro
from gymnasium import spaces
from tqdm import tqdm

from dplite.data.replay_buffer import ReplayBuffer
from dplite.envs import DEMO_SEED_START, EVAL_SEED_START
from dplite.envs.options import EnvArgs, EnvOptions
from dplite.envs.tasks import (
    DEFAULT_TASK,
    TaskSpec,
    flatten_obs,
    get_task,
    is_success,
    load_callable,
    make_env,
    output_name,
)

log = logging.getLogger(__name__)

_NOISE_STREAM = 0xD4A7


@dataclass
class Config:
    env: EnvArgs = field(default_factory=EnvOptions)
    """--task NAME (default pusht) or --env-id ID with its options."""
    episodes: int = 200
    """Number of episodes the dataset should hold when done (resume counts stored ones)."""
    out: Path | None = None
    """Zarr dataset (directory store; default outputs/data/<task>.zarr); an existing one is
    resumed."""
    expert: str | None = None
    """Expert factory MODULE:CALLABLE (default: the task's own expert)."""
    images: bool = False
    """Also record the task's camera keys (e.g. PushT's 96 x 96 top-down img)."""
    keep_failed: bool = False
    """Store episodes that did not reach success too (meta/success = 0)."""
    seed_start: int = DEMO_SEED_START
    """First seed of a new dataset; seeds must stay below envs.EVAL_SEED_START."""
    action_noise: float = 0.0
    """DART-style noise (Laskey et al. 2017), std in action units (PushT: pixels): the env
    executes the expert's action plus N(0, std^2) per dimension (clipped to the action space)
    while the dataset stores the expert's own action, so the demonstrations also show how to
    recover from small deviations. 0 = the action taken."""
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
        if self.action_noise < 0.0:
            raise ValueError(f"Config.action_noise={self.action_noise}, expected >= 0")


def run_episode(
    env: gym.Env, expert: Any, seed: int, spec: TaskSpec, action_noise: float = 0.0
) -> tuple[dict[str, np.ndarray], bool]:
    """One expert episode from ``seed``: ({key: (L, ...)} rows, success).

    With ``action_noise`` > 0 the env executes the stored action plus Gaussian noise drawn
    from a generator seeded by ``seed`` (so the episode stays reproducible).
    """
    noise_rng = np.random.default_rng([seed, _NOISE_STREAM])
    obs = flatten_obs(env.reset(seed=seed)[0])
    expert.reset(seed)
    box = env.action_space
    rows: dict[str, list[np.ndarray]] = {"action": []}
    success = False
    while True:
        action = np.asarray(expert(obs), dtype=np.float32)
        if action.shape != box.shape or not np.isfinite(action).all():
            raise ValueError(
                f"expert returned action {action!r} of shape {action.shape} at seed {seed}; "
                f"the env {spec.env_id!r} takes finite actions of shape {box.shape}"
            )
        rows["action"].append(action)
        for k, v in obs.items():
            rows.setdefault(k, []).append(v.astype(np.float32) if v.dtype.kind == "f" else v)
        executed = action
        if action_noise > 0:
            noise = noise_rng.normal(0.0, action_noise, size=action.shape).astype(np.float32)
            executed = action + noise
            if isinstance(box, spaces.Box):
                executed = np.clip(executed, box.low, box.high).astype(np.float32)
        obs, _, terminated, truncated, info = env.step(executed)
        obs = flatten_obs(obs)
        success = success or is_success(info, spec.success_key)
        if terminated or truncated:
            break
    return {k: np.stack(v) for k, v in rows.items()}, success


def _open_or_create(cfg: Config, spec: TaskSpec, expert: str) -> tuple[ReplayBuffer, int]:
    """The dataset to append to and the next seed to try."""
    if not cfg.out.exists():
        rb = ReplayBuffer.create(cfg.out)
        rb.attrs.update(
            {
                "task": spec.name,
                "env": spec.to_dict(),
                "images": cfg.images,
                "expert": expert,
                "expert_modes": [],
                "max_episode_steps": spec.max_episode_steps,
                "action_noise": cfg.action_noise,
                "seed_start": cfg.seed_start,
                "next_seed": cfg.seed_start,
            }
        )
        return rb, cfg.seed_start
    rb = ReplayBuffer.open(cfg.out, mode="a")
    attrs = dict(rb.attrs)
    recorded = attrs.get("env", {}).get("env_id"), attrs.get("task")
    if recorded != (spec.env_id, spec.name):
        raise ValueError(
            f"{cfg.out}: holds task {recorded[1]!r} (env {recorded[0]!r}), not {spec.name!r} "
            f"(env {spec.env_id!r}); resume with the same environment or write a new dataset"
        )
    if bool(attrs.get("images", cfg.images)) != cfg.images:
        raise ValueError(
            f"{cfg.out}: images={attrs.get('images')} in the dataset but --images={cfg.images}; "
            "resume with the same setting or write a new dataset"
        )
    next_seed = int(attrs.get("next_seed", cfg.seed_start))
    if rb.n_episodes > 0:
        next_seed = max(next_seed, int(rb.get_meta("seed").max()) + 1)
    return rb, next_seed


def main(cfg: Config) -> dict[str, Any]:
    """Fill ``cfg.out`` up to ``cfg.episodes`` episodes; returns a summary dict."""
    spec = cfg.env.resolve(base=get_task(DEFAULT_TASK))
    if cfg.out is None:
        cfg.out = Path("outputs/data") / f"{output_name(spec)}.zarr"
    expert_ref = cfg.expert or spec.expert
    if expert_ref is None:
        raise ValueError(
            f"task {spec.name!r} has no scripted expert; pass --expert MODULE:CALLABLE"
        )
    factory = load_callable(expert_ref, "--expert")
    keys = list(spec.image_keys) if cfg.images else []
    if cfg.images and not keys:
        raise ValueError(f"--images: task {spec.name!r} has no camera keys (TaskSpec.image_keys)")
    rb, seed = _open_or_create(cfg, spec, expert_ref)
    stored_before = rb.n_episodes
    env = make_env(spec, obs_keys=keys)
    expert = factory(env)
    # an expert that names its modes up front (a MODES tuple) gets stable indices
    mode_names: list[str] = list(rb.attrs.get("expert_modes", [])) or list(
        getattr(expert, "MODES", [])
    )
    if mode_names:
        rb.attrs["expert_modes"] = mode_names
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
            episode, success = run_episode(env, expert, seed, spec, cfg.action_noise)
            tried += 1
            steps += len(episode["action"])
            mode = str(getattr(expert, "mode", "default"))
            modes[mode] += 1
            succeeded += int(success)
            if success or cfg.keep_failed:
                if mode not in mode_names:
                    mode_names.append(mode)
                    rb.attrs["expert_modes"] = mode_names
                meta = {
                    "seed": seed,
                    "success": int(success),
                    "expert_mode": mode_names.index(mode),
                }
                rb.add_episode(episode, episode_meta=meta)
                bar.update(1)
            seed += 1
            rb.attrs["next_seed"] = seed
            bar.set_postfix(success=f"{succeeded / tried:.2f}", seed=seed - 1)
    finally:
        bar.close()
        env.close()
    elapsed = time.perf_counter() - t0
    return {
        "episodes": rb.n_episodes,
        "added": rb.n_episodes - stored_before,
        "tried": tried,
        "success_rate": succeeded / tried if tried else float("nan"),
        "steps": steps,
        "steps_per_s": steps / elapsed if elapsed > 0 else float("nan"),
        "modes": dict(modes),
    }


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
