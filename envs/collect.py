"""Scripted-expert demonstrations as numpy episodes (no zarr, no torch): the collection loop
that scripts.collect and the suite write into a dataset.

    with ExpertEpisodes(spec, action_noise=3.0) as source:
        for episode in source.episodes(start_seed):    # one per seed, upward
            if episode.success:
                dataset.add_episode(episode.data, episode_meta=episode.meta)

The expert protocol. The expert reference (MODULE:CALLABLE, default the task's own) names a
factory that is called once with the environment and returns an object with

    reset(seed: int) -> None          called right after env.reset(seed=seed): draw the
                                      episode's mode from a generator seeded by `seed`
    __call__(obs: dict) -> action     obs flattened as the dataset stores it (envs.tasks:
                                      a Box is "state", a dict gives one key per leaf)
    mode: str                         optional: the episode's strategy, recorded per episode
    MODES: tuple[str, ...]            optional: every mode up front (stable mode indices)

Each seed gives one episode, reproducible from the seed alone; seeds stay in
[DEMO_SEED_START, EVAL_SEED_START), so demonstrations never see an evaluation start. A failed
episode (no success reported in ``info``) is still yielded, with ``success`` False: the caller
keeps it or tries the next seed.

Timing convention (Chi et al. 2023): row t holds the observation at step t (before acting) and
the action taken at step t. Keys: ``action`` (float32) and every observation key the
environment emits (floats as float32; images stay uint8). With ``action_noise`` the env
executes a perturbed action while the stored action stays the expert's (DART, Laskey et al.
2017), the noise drawn from a generator seeded by the episode's seed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dplite.envs import DEMO_SEED_START, EVAL_SEED_START
from dplite.envs.tasks import TaskSpec, flatten_obs, is_success, load_callable, make_env

_NOISE_STREAM = 0xD4A7  # mixed into the episode seed: noise draws independent of the env's own


@dataclass
class Episode:
    seed: int
    data: dict[str, np.ndarray]
    """{key: (L, ...)}: "action" and every observation key."""
    success: bool
    mode: str
    """The expert's strategy in this episode ("default" when it names none)."""
    mode_index: int
    """Index of ``mode`` in the source's ``modes``."""

    @property
    def meta(self) -> dict[str, int]:
        """The per-episode meta a dataset stores: seed, success (0/1), expert_mode."""
        return {"seed": self.seed, "success": int(self.success), "expert_mode": self.mode_index}


def run_episode(
    env: gym.Env, expert: Any, seed: int, spec: TaskSpec, action_noise: float = 0.0
) -> tuple[dict[str, np.ndarray], bool]:
    """One expert episode from ``seed``: ({key: (L, ...)} rows, success)."""
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


class ExpertEpisodes:
    """A task's scripted expert in its environment, one episode per seed. A context manager:
    the environment lives from ``__enter__`` to ``__exit__``. A missing expert or camera is
    refused here, before any environment is made."""

    def __init__(
        self,
        spec: TaskSpec,
        expert: str | None = None,
        images: bool = False,
        action_noise: float = 0.0,
        modes: Sequence[str] = (),
    ) -> None:
        self.expert_ref = expert or spec.expert
        if self.expert_ref is None:
            raise ValueError(
                f"task {spec.name!r} has no scripted expert; pass --expert MODULE:CALLABLE"
            )
        if action_noise < 0:
            raise ValueError(f"action_noise={action_noise}, expected >= 0")
        self.factory = load_callable(self.expert_ref, "--expert")
        self.keys = list(spec.image_keys) if images else []
        if images and not self.keys:
            raise ValueError(
                f"--images: task {spec.name!r} has no camera keys (TaskSpec.image_keys)"
            )
        self.spec, self.action_noise = spec, action_noise
        self.modes: list[str] = list(modes)
        """Mode names in index order: ``modes``, else the expert's MODES; new ones appended."""
        self.env: gym.Env | None = None
        self.expert: Any = None

    def __enter__(self) -> ExpertEpisodes:
        self.env = make_env(self.spec, obs_keys=self.keys)
        self.expert = self.factory(self.env)
        if not self.modes:
            self.modes = list(getattr(self.expert, "MODES", []))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.env is not None:
            self.env.close()
        self.env = self.expert = None

    def episodes(self, start_seed: int) -> Iterator[Episode]:
        """Episodes of seeds start_seed, +1, ... until the caller stops; a ValueError where
        the next seed would reach the evaluation seeds."""
        if self.env is None:
            raise RuntimeError("ExpertEpisodes.episodes outside its `with` block")
        if start_seed < DEMO_SEED_START:
            raise ValueError(f"demonstration seed {start_seed} < DEMO_SEED_START")
        seed = start_seed
        while True:
            if seed >= EVAL_SEED_START:
                raise ValueError(
                    f"demonstration seed {seed} reaches the evaluation seeds "
                    f"({EVAL_SEED_START}+): no demonstration seeds left"
                )
            data, success = run_episode(self.env, self.expert, seed, self.spec, self.action_noise)
            mode = str(getattr(self.expert, "mode", "default"))
            if mode not in self.modes:
                self.modes.append(mode)
            yield Episode(seed, data, success, mode, self.modes.index(mode))
            seed += 1


def dataset_attrs(
    spec: TaskSpec, expert: str, images: bool, action_noise: float, seed_start: int
) -> dict[str, Any]:
    """What a new demonstration dataset records about its collection (its root attributes):
    the task (``env``: the TaskSpec as a dict, so training knows its environment), the expert
    and its modes, the DART noise and the seeds."""
    return {
        "task": spec.name,
        "env": spec.to_dict(),
        "images": images,
        "expert": expert,
        "expert_modes": [],
        "max_episode_steps": spec.max_episode_steps,
        "action_noise": action_noise,
        "seed_start": seed_start,
        "next_seed": seed_start,
    }


def resume_seed(attrs: Mapping[str, Any], stored_seeds: Sequence[int], default: int) -> int:
    """The next seed to try on a dataset: after its recorded ``next_seed`` (which counts
    failed, unstored episodes too) and after every stored episode's seed."""
    seed = int(attrs.get("next_seed", default))
    if len(stored_seeds):
        seed = max(seed, int(np.max(stored_seeds)) + 1)
    return seed


__all__ = ["Episode", "ExpertEpisodes", "dataset_attrs", "resume_seed", "run_episode"]
