"""evaluate_policy: roll any actor out on fixed seeds and return the results record.

An *actor* is what the batched rollout (envs/rollout.py) calls, plus what it needs to know to
call it: how many observation steps it reads (To), how many actions it executes per call (Ta),
which observation keys and shapes it needs (checked against the env before any episode), its
action size, and ``info`` (what acted, e.g. ``{"sampler": "ddim", "inference_steps": 10}``),
which goes into the record. A trained policy becomes one through policy/actor.py; the
baselines of envs/baselines.py are ones already. One implementation for every caller: training's
rollout checks, the eval command, distillation and the suite.

The record (a JSON-ready dict): success_rate, success_ci95, mean_max_reward, episodes, seeds,
successes, mean_steps, errors (episodes cut short by their env, counted as failures),
boundary_jerk and within_jerk (mean |delta action| across chunk boundaries / within chunks),
outcomes and success_by_outcome for tasks with an outcome_key (e.g. Panda stack's order),
plus the actor's info, n_action_steps, the chunk execution (execution, latency_steps,
blend_steps, ensemble_decay: envs/rollout.py), wall_time_s, task and env_id. No torch here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from dplite.envs.rollout import ChunkExecution, EpisodeResult, rollout, summarize
from dplite.envs.tasks import TaskSpec, check_env_fits, episode_limit, make_env


class Actor(Protocol):
    n_obs_steps: int
    """To: observation steps per call, oldest first."""
    n_action_steps: int
    """Ta: actions executed per call."""
    obs_shapes: Mapping[str, tuple[int, ...]] | None
    """Keys and per-step shapes it reads (None: whatever the env emits, unchecked)."""
    action_dim: int | None
    """Da (None: unchecked)."""
    info: Mapping[str, Any]
    """Copied into the record (e.g. sampler and inference steps)."""

    def __call__(self, obs: dict[str, np.ndarray], seeds: np.ndarray) -> np.ndarray:
        """obs {key: (B, To, ...)}, the episode seed of each row (B,) -> actions (B, >= Ta, Da).
        An actor with ``accepts_prefix = True`` also takes ``prefix=`` and ``prefix_weights=``
        (real-time chunking, envs/rollout.py)."""
        ...

    def close(self) -> None: ...


def evaluate_policy(
    actor: Actor,
    spec: TaskSpec,
    seeds: Sequence[int],
    n_videos: int = 0,
    progress: bool = False,
    execution: ChunkExecution | None = None,
    max_envs: int | None = None,
) -> tuple[dict, list[EpisodeResult]]:
    """Roll the actor out on each seed, all episodes batched; returns (record, per-episode
    results). The actor is closed at the end. The first ``n_videos`` episodes keep frames.
    ``execution``: the inference delay and execution mode (default: sync, no delay).
    ``max_envs``: at most this many environments at once (the seeds run in groups of that
    size, one after the other), for environments too big to hold one per episode, such as
    robosuite's with their offscreen renderers; the actor draws its noise per episode seed, so
    the results do not depend on the grouping."""
    execution = execution or ChunkExecution()
    if max_envs is not None and max_envs < 1:
        raise ValueError(f"max_envs must be >= 1 or None, got {max_envs}")
    seeds = list(seeds)
    group = max_envs or max(len(seeds), 1)
    try:
        if actor.obs_shapes is not None:
            what = f"the policy ({actor.info.get('sampler', 'actor')})"
            limit = check_env_fits(spec, actor.obs_shapes, actor.action_dim, what)
        else:
            probe = make_env(spec)
            limit = episode_limit(probe)
            probe.close()
        keys = list(actor.obs_shapes or ())
        t0 = time.perf_counter()
        with tqdm(
            total=len(seeds) * (limit or 1000), unit="step", disable=not progress, leave=False
        ) as bar:
            results = []
            for first in range(0, len(seeds), group):
                results += rollout(
                    actor,
                    lambda render: make_env(spec, obs_keys=keys, render=render),
                    seeds[first : first + group],
                    actor.n_obs_steps,
                    actor.n_action_steps,
                    n_videos=max(0, n_videos - first),
                    progress=bar.update,
                    success_key=spec.success_key,
                    execution=execution,
                    outcome_key=spec.outcome_key,
                )
    finally:
        actor.close()
    record = summarize(results)
    record.update(
        **actor.info,
        n_action_steps=actor.n_action_steps,
        **execution.record(),
        wall_time_s=time.perf_counter() - t0,
        task=spec.name,
        env_id=spec.env_id,
    )
    return record, results


def pool(runs: Sequence[tuple[dict, list[EpisodeResult]]]) -> dict:
    """One record for several runs of the same episodes (e.g. one per sampler-noise seed):
    rates over all episodes, run after run; each run's rate in success_by_run."""
    first = runs[0][0]
    return {
        **first,
        **summarize([r for _, results in runs for r in results]),
        "wall_time_s": sum(record["wall_time_s"] for record, _ in runs),
        "success_by_run": [record["success_rate"] for record, _ in runs],
    }


__all__ = ["Actor", "evaluate_policy", "pool"]
