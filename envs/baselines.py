"""Non-learned baselines as rollout policies: the task's scripted expert, and uniform random.

Both are actors of ``envs.evaluate`` (``actor(obs {key: (B, To, ...)}, seeds (B,)) -> actions
(B, >= Ta, Da)`` plus To, Ta and info), so ``evaluate_policy`` runs them exactly as it runs a
learned policy, on the same seeds, and their numbers are comparable with the diffusion
policy's.

* ``ExpertPolicy``: one expert per episode, built by the task's expert factory (the protocol of
  envs.collect) on that episode's env and ``reset(seed)`` right after the rollout reset the
  env (the rollout's ``episode_started`` hook), then asked for one action per step from the
  newest observation. Run it with To = 1, Ta = 1: the expert is a feedback controller, like in
  scripts.collect, where it writes the demonstrations (without their DART noise here).
* ``RandomPolicy``: actions drawn uniformly from the env's Box action space, from a generator
  seeded by the episode's seed, so an episode's result depends on its seed only.

No torch here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dplite.envs.evaluate import evaluate_policy
from dplite.envs.rollout import EpisodeResult
from dplite.envs.tasks import TaskSpec, load_callable, make_env

Baseline = Literal["expert", "random"]
BASELINES: tuple[str, ...] = ("expert", "random")
_RANDOM_STREAM = 0x5EED  # mixed into the episode seed: draws independent of the env's own


class ExpertPolicy:
    """The task's scripted expert as a rollout actor: one expert per episode, built on that
    episode's env (as scripts.collect builds it) right after the env's reset."""

    n_obs_steps = n_action_steps = 1
    obs_shapes = action_dim = None
    info = {"sampler": "expert", "inference_steps": None}

    def __init__(self, factory: Callable[[gym.Env], Any]) -> None:
        self.factory = factory
        self.experts: dict[int, Any] = {}

    @classmethod
    def for_task(cls, spec: TaskSpec, expert: str | None = None) -> ExpertPolicy:
        """The expert ``expert`` (MODULE:CALLABLE, default the task's own) for ``spec``."""
        ref = expert or spec.expert
        if ref is None:
            raise ValueError(
                f"task {spec.name!r} has no scripted expert (TaskSpec.expert); the 'expert' "
                "baseline needs one"
            )
        return cls(load_callable(ref, "expert"))

    def episode_started(self, seed: int, env: gym.Env) -> None:
        """Called by the rollout right after ``env.reset(seed=seed)``."""
        expert = self.experts[seed] = self.factory(env)
        expert.reset(seed)

    def __call__(self, obs: dict[str, np.ndarray], seeds: np.ndarray) -> np.ndarray:
        actions = []
        for row, seed in enumerate(seeds):
            newest = {k: v[row, -1] for k, v in obs.items()}  # one step, as collect feeds it
            actions.append(np.asarray(self.experts[int(seed)](newest), dtype=np.float32))
        return np.stack(actions)[:, None]  # (B, 1, Da)

    def close(self) -> None:
        self.experts.clear()


class RandomPolicy:
    """Uniform actions from a Box action space, one generator per episode seed."""

    n_obs_steps = 1
    obs_shapes = action_dim = None
    info = {"sampler": "random", "inference_steps": None}

    def __init__(self, action_space: spaces.Space, n_action_steps: int = 1) -> None:
        if not isinstance(action_space, spaces.Box) or not (
            np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()
        ):
            raise ValueError(
                f"the random baseline needs a bounded Box action space, got {action_space}"
            )
        self.low = action_space.low.astype(np.float64)
        self.high = action_space.high.astype(np.float64)
        self.dtype = action_space.dtype
        self.n_action_steps = n_action_steps
        self.rngs: dict[int, np.random.Generator] = {}

    @classmethod
    def for_task(cls, spec: TaskSpec, n_action_steps: int = 1) -> RandomPolicy:
        env = make_env(spec)
        try:
            return cls(env.action_space, n_action_steps)
        finally:
            env.close()

    def __call__(self, obs: dict[str, np.ndarray], seeds: np.ndarray) -> np.ndarray:
        shape = (self.n_action_steps, *self.low.shape)
        rows = [
            self.rngs.setdefault(int(s), np.random.default_rng([int(s), _RANDOM_STREAM])).uniform(
                self.low, self.high, size=shape
            )  # (Ta, Da)
            for s in seeds
        ]
        return np.stack(rows).astype(self.dtype)  # (B, Ta, Da)

    def close(self) -> None:
        pass


def make_baseline(method: str, spec: TaskSpec) -> ExpertPolicy | RandomPolicy:
    """A fresh baseline policy (its per-episode state empty) for ``spec``."""
    if method == "expert":
        return ExpertPolicy.for_task(spec)
    if method == "random":
        return RandomPolicy.for_task(spec)
    raise ValueError(f"unknown baseline {method!r}; expected one of {BASELINES}")


def evaluate_baseline(
    method: str,
    spec: TaskSpec,
    seeds: Sequence[int],
    n_videos: int = 0,
    progress: bool = False,
) -> tuple[dict, list[EpisodeResult]]:
    """A fresh baseline through envs.evaluate.evaluate_policy (To = Ta = 1)."""
    return evaluate_policy(make_baseline(method, spec), spec, seeds, n_videos, progress)


__all__ = [
    "BASELINES",
    "ExpertPolicy",
    "RandomPolicy",
    "evaluate_baseline",
    "make_baseline",
]
