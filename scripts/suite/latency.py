"""Batch-1 latency of a suite row: the median of ``calls`` calls (policy.timing.median_ms,
after WARMUP_CALLS untimed ones) on the first evaluation seed's reset observation, its history
that observation repeated To times. A learned policy is timed through predict_action with the
row's sampler; a baseline through one call of its policy function.

Under rtc execution a chunk is sampled with a prefix (its committed first d actions and the next
soft-weighted ones; guidance costs one backward pass per denoising step), so its calls are
timed with the prefix the rollout would pass after the first chunk, kept by the row's rtc
method: the first untimed call's own chunk as the target, with
envs.rollout.rtc_prefix_weights."""

from __future__ import annotations

import numpy as np
import torch

from dplite.envs.baselines import make_baseline
from dplite.envs.rollout import ChunkExecution, rtc_prefix_weights
from dplite.envs.tasks import TaskSpec, flatten_obs, make_env, task_from_metadata
from dplite.policy.diffusion import DiffusionPolicy
from dplite.policy.samplers import PrefixMode
from dplite.policy.timing import median_ms

WARMUP_CALLS = 2


def policy_latency_ms(
    policy: DiffusionPolicy,
    sampler: str | None,
    k: int | None,
    seed: int,
    calls: int,
    noise_seed: int = 0,
    execution: ChunkExecution | None = None,
    rtc_method: PrefixMode = "guidance",
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
    try:
        execution = execution or ChunkExecution()
        kwargs = rtc_prefix(policy, batch, sampler, k, gen, execution, rtc_method)
        # median_ms synchronizes CUDA around each call: it times the work
        return median_ms(
            lambda: policy.predict_action(batch, sampler, k, generator=gen, **kwargs),
            calls,
            warmup=WARMUP_CALLS,
        )
    finally:
        policy.train(was_training)


def rtc_prefix(
    policy: DiffusionPolicy,
    batch: dict[str, torch.Tensor],
    sampler: str | None,
    k: int | None,
    gen: torch.Generator,
    execution: ChunkExecution,
    rtc_method: PrefixMode = "guidance",
) -> dict:
    """predict_action's prefix arguments of an rtc chunk after the first ({} otherwise), as
    PolicyActor passes them: To - 1 free rows, d frozen, then up to `blend` soft ones, kept by
    `rtc_method`."""
    pcfg, d = policy.cfg, execution.delay
    if execution.mode != "rtc":
        return {}
    skip = pcfg.n_obs_steps - 1
    left = pcfg.horizon - skip - (pcfg.n_action_steps + d)  # as the rollout: the plan beyond
    soft = max(0, min(execution.blend, left))
    if d + soft == 0:
        return {}
    with torch.no_grad():
        chunk = policy.predict_action(batch, sampler, k, generator=gen)["action_pred"]
    weights = np.concatenate([np.zeros(skip, np.float32), rtc_prefix_weights(d, soft)])
    return {
        "prefix": chunk[:, : skip + d + soft],  # (1, P, Da)
        "prefix_weights": weights,  # (P,)
        "prefix_mode": rtc_method,
    }


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


__all__ = ["WARMUP_CALLS", "baseline_latency_ms", "policy_latency_ms", "rtc_prefix"]
