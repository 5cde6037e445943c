"""Batch-1 latency of a suite row: the median of ``calls`` calls (policy.timing.median_ms,
after WARMUP_CALLS untimed ones) on the first evaluation seed's reset observation, its history
that observation repeated To times. A learned policy is timed through predict_action with the
row's sampler; a baseline through one call of its policy function."""

from __future__ import annotations

import numpy as np
import torch

from dplite.envs.baselines import make_baseline
from dplite.envs.tasks import TaskSpec, flatten_obs, make_env, task_from_metadata
from dplite.policy.diffusion import DiffusionPolicy
from dplite.policy.timing import median_ms

WARMUP_CALLS = 2


def policy_latency_ms(
    policy: DiffusionPolicy,
    sampler: str | None,
    k: int | None,
    seed: int,
    calls: int,
    noise_seed: int = 0,
) -> float:
    pcfg, device = policy.cfg, policy.device
    env = make_env(task_from_metadata(policy.metadata), obs_keys=list(pcfg.obs_shapes))
    try:
        obs = flatten_obs(env.reset(seed=seed)[0])
    finally:
        env.close()
    batch = {
        key: torch.from_numpy(np.repeat(obs[key][None, None], pcfg.n_obs_steps, axis=1)).to(device)
        for key in pcfg.obs_shapes
    }  # {key: (1, To, ...)}
    gen = torch.Generator(device).manual_seed(noise_seed)
    was_training = policy.training
    policy.eval()
    try:  # median_ms synchronizes CUDA around each call: it times the work
        return median_ms(
            lambda: policy.predict_action(batch, sampler, k, generator=gen),
            calls,
            warmup=WARMUP_CALLS,
        )
    finally:
        policy.train(was_training)


def baseline_latency_ms(method: str, spec: TaskSpec, seed: int, calls: int) -> float:
    policy = make_baseline(method, spec)  # a fresh one: the evaluation's state stays apart
    env = make_env(spec)
    try:
        obs = flatten_obs(env.reset(seed=seed)[0])
        if hasattr(policy, "episode_started"):  # the expert is built on its episode's env
            policy.episode_started(seed, env)
        batch = {key: v[None, None] for key, v in obs.items()}  # (1, 1, ...)
        seeds = np.array([seed])
        return median_ms(lambda: policy(batch, seeds), calls, warmup=WARMUP_CALLS)
    finally:
        policy.close()
        env.close()


__all__ = ["WARMUP_CALLS", "baseline_latency_ms", "policy_latency_ms"]
