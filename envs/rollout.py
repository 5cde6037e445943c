"""Batched receding-horizon evaluation of any policy callable over many seeded episodes.

All episodes run at once: each step of the loop stacks the To-step observation history of
every unfinished episode, makes ONE policy call for all of them, then executes the returned Ta
actions in each env (Chi et al. 2023, receding-horizon control). An episode that ends (success
or time limit) drops out of later batches. No torch here: the policy is a callable on numpy
arrays, so the same loop evaluates a diffusion policy, an expert or a random baseline.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

log = logging.getLogger(__name__)

# obs {key: (B, To, ...)} -> actions (B, Ta, Da)
PolicyFn = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    max_reward: float
    final_reward: float
    steps: int
    frames: list[np.ndarray] = field(default_factory=list, repr=False)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval for a success rate (well behaved at 0 and 1, unlike Wald)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z**2 / n
    center = (p + z**2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def summarize(results: Sequence[EpisodeResult]) -> dict:
    """Success rate with its 95 % CI and the mean of per-episode maximum reward."""
    n, wins = len(results), sum(r.success for r in results)
    lo, hi = wilson_interval(wins, n)
    return {
        "success_rate": wins / n if n else 0.0,
        "success_ci95": [lo, hi],
        "mean_max_reward": float(np.mean([r.max_reward for r in results])) if n else 0.0,
        "episodes": n,
        "seeds": [r.seed for r in results],
        "mean_steps": float(np.mean([r.steps for r in results])) if n else 0.0,
    }


def rollout(
    policy: PolicyFn,
    make_env: Callable[[bool], gym.Env],
    seeds: Sequence[int],
    n_obs_steps: int,
    n_action_steps: int,
    n_videos: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[EpisodeResult]:
    """Run one episode per seed, all batched together; return per-episode results in seed order.

    make_env(render) builds one env (render=True for the first n_videos episodes, whose frames
    are kept in EpisodeResult.frames). progress(n) is called with the number of env steps taken.
    """
    if n_obs_steps < 1 or n_action_steps < 1:
        raise ValueError(
            f"n_obs_steps and n_action_steps must be >= 1, got {n_obs_steps}, {n_action_steps}"
        )
    envs = [make_env(i < n_videos) for i in range(len(seeds))]
    results = [EpisodeResult(int(s), False, 0.0, 0.0, 0) for s in seeds]
    history: list[deque] = []
    for env, seed, res in zip(envs, seeds, results, strict=True):
        obs, _ = env.reset(seed=int(seed))
        # before the first step there is no past: repeat the first observation To times
        history.append(deque([obs] * n_obs_steps, maxlen=n_obs_steps))
        if env.render_mode == "rgb_array":
            res.frames.append(env.render())
    active = list(range(len(envs)))
    t_policy = 0.0
    while active:
        batch = {
            key: np.stack([np.stack([o[key] for o in history[i]]) for i in active])  # (B, To, ...)
            for key in history[active[0]][0]
        }
        t0 = time.perf_counter()
        actions = np.asarray(policy(batch))  # (B, Ta, Da)
        t_policy += time.perf_counter() - t0
        if (
            actions.ndim != 3
            or actions.shape[0] != len(active)
            or actions.shape[1] < n_action_steps
        ):
            raise ValueError(
                f"policy returned actions of shape {actions.shape}; expected ({len(active)}, >= {n_action_steps}, Da)"
            )
        still_active, steps_taken = [], 0
        for row, i in enumerate(active):
            env, res, done = envs[i], results[i], False
            for a in actions[row, :n_action_steps]:
                obs, reward, terminated, truncated, info = env.step(a)
                history[i].append(obs)
                res.steps += 1
                steps_taken += 1
                res.max_reward = max(res.max_reward, float(reward))
                res.final_reward = float(reward)
                res.success = res.success or bool(info.get("is_success", False))
                if env.render_mode == "rgb_array":
                    res.frames.append(env.render())
                if terminated or truncated:
                    done = True
                    break
            if not done:
                still_active.append(i)
        active = still_active
        if progress is not None:
            progress(steps_taken)
    for env in envs:
        env.close()
    log.debug("rollout: %.2f s in policy calls", t_policy)
    return results
