"""Batched receding-horizon evaluation of any policy callable over many seeded episodes.

All episodes run at once: each step of the loop stacks the To-step observation history of
every unfinished episode, makes ONE policy call for all of them, then executes the returned Ta
actions in each env (Chi et al. 2023, receding-horizon control). An episode that ends (success
or time limit) drops out of later batches. No torch here: the policy is a callable on numpy
arrays, so the same loop evaluates a diffusion policy, an expert or a random baseline.

The policy also receives the seed of each batch row, so a stochastic policy can draw its noise
per episode: an episode's result then depends on its seed only, not on which other episodes
share the batch. A policy with an ``episode_started(seed, env)`` method is told each episode's
env right after its reset (a scripted expert builds itself on it). An environment that raises,
returns a non-finite observation, or reports ``info["failure"]`` (a physics blow-up, say) ends
that episode as failed with the reason in ``EpisodeResult.error``; the other episodes go on.
Frames are kept for the first ``n_videos`` episodes only, whatever the envs' render modes.
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

from dplite.envs.tasks import DEFAULT_SUCCESS_KEY, flatten_obs, is_success, non_finite_keys

log = logging.getLogger(__name__)

# (obs {key: (B, To, ...)}, seeds (B,)) -> actions (B, >= Ta, Da)
PolicyFn = Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]


class EnvFailure(RuntimeError):
    """The environment reported ``info["failure"]``: its episode ends as failed."""


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    max_reward: float
    final_reward: float
    steps: int
    error: str | None = None
    """Why the episode was cut short by its environment (it then counts as failed)."""
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
    """Success rate with its 95 % CI, the mean of per-episode maximum reward (over episodes
    that took a step; None if none did), env errors."""
    n, wins = len(results), sum(r.success for r in results)
    lo, hi = wilson_interval(wins, n)
    stepped = [r.max_reward for r in results if r.steps > 0]  # an env error at reset has none
    return {
        "success_rate": wins / n if n else 0.0,
        "success_ci95": [lo, hi],
        "mean_max_reward": float(np.mean(stepped)) if stepped else None,
        "episodes": n,
        "seeds": [r.seed for r in results],
        "successes": [r.success for r in results],
        "mean_steps": float(np.mean([r.steps for r in results])) if n else 0.0,
        "errors": [{"seed": r.seed, "error": r.error} for r in results if r.error],
    }


def rollout(
    policy: PolicyFn,
    make_env: Callable[[bool], gym.Env],
    seeds: Sequence[int],
    n_obs_steps: int,
    n_action_steps: int,
    n_videos: int = 0,
    progress: Callable[[int], None] | None = None,
    success_key: str = DEFAULT_SUCCESS_KEY,
) -> list[EpisodeResult]:
    """Run one episode per seed, all batched together; return per-episode results in seed order.

    make_env(render) builds one env (render=True for the first n_videos episodes, whose frames
    are kept in EpisodeResult.frames). Observations reach the policy flattened (envs.tasks:
    a Box is ``state``, a dict one key per leaf) and copied. Success is ``info[success_key]``
    (``info["success"]`` when the default key is absent). progress(n) is called with the
    number of env steps taken.
    """
    if n_obs_steps < 1 or n_action_steps < 1:
        raise ValueError(
            f"n_obs_steps and n_action_steps must be >= 1, got {n_obs_steps}, {n_action_steps}"
        )
    envs = [make_env(i < n_videos) for i in range(len(seeds))]
    # max_reward starts below any reward: environments with only negative rewards exist
    results = [EpisodeResult(int(s), False, -math.inf, 0.0, 0) for s in seeds]
    history: list[deque] = []
    active = []
    for i, (env, seed, res) in enumerate(zip(envs, seeds, results, strict=True)):
        try:
            obs = _checked(flatten_obs(env.reset(seed=int(seed))[0]))
        except Exception as e:  # noqa: BLE001 -- reported per episode, see _fail
            _fail(res, "reset", e)
            history.append(deque())
            continue
        # before the first step there is no past: repeat the first observation To times
        history.append(deque([obs] * n_obs_steps, maxlen=n_obs_steps))
        active.append(i)
        if hasattr(policy, "episode_started"):
            policy.episode_started(int(seed), env)
        if i < n_videos:
            res.frames.append(env.render())
    t_policy = 0.0
    while active:
        keys = history[active[0]][0].keys()
        batch = {
            key: np.stack([np.stack([o[key] for o in history[i]]) for i in active])  # (B, To, ...)
            for key in keys
        }
        t0 = time.perf_counter()
        actions = np.asarray(policy(batch, np.array([results[i].seed for i in active])))
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
                try:
                    obs, reward, terminated, truncated, info = env.step(a)
                    obs = _checked(flatten_obs(obs))
                    if not np.isfinite(reward):
                        raise FloatingPointError(f"non-finite reward {reward}")
                    if info.get("failure"):
                        raise EnvFailure(str(info["failure"]))
                except Exception as e:  # noqa: BLE001 -- reported per episode, see _fail
                    _fail(res, f"step {res.steps}", e)
                    done = True
                    break
                history[i].append(obs)
                res.steps += 1
                steps_taken += 1
                res.max_reward = max(res.max_reward, float(reward))
                res.final_reward = float(reward)
                res.success = res.success or is_success(info, success_key)
                if i < n_videos:
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


def _checked(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    bad = non_finite_keys(obs)
    if bad:
        raise FloatingPointError(f"non-finite observation in {bad}")
    return obs


def _fail(res: EpisodeResult, where: str, e: Exception) -> None:
    """An env failure ends its own episode only: failed, with the reason kept for the report."""
    res.success = False
    res.error = f"{where}: {type(e).__name__}: {e}"
    log.warning("episode seed %d failed at %s", res.seed, res.error)
