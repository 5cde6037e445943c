"""A user's own environment, as the tests see it: registered by importing this module.

ToyReach-v0: a point on a plane moves by its action (a velocity, clipped to [-0.5, 0.5] per
axis) towards a goal; ``info["success"]`` (not ``is_success``) once within 0.2 of it. The
observation is a nested dict ``{"pos": (2,), "target": {"xy": (2,)}}`` (flattened keys
``pos`` and ``target_xy``); ToyReachBox-v0 is the same task with one Box ``[pos, goal]`` (key
``state``). ``fail_seed`` makes the env raise in the episode of that seed, ``nan_seed`` makes
it return NaN observations there: the failure modes evaluation must survive.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dplite.envs.tasks import TaskSpec


class ToyReach(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self, box_obs=False, render_mode=None, fail_seed=None, nan_seed=None, size=16, action_dim=2
    ):
        self.box_obs, self.render_mode, self.size = box_obs, render_mode, size
        self.fail_seed, self.nan_seed = fail_seed, nan_seed
        # action_dim > 2 adds ignored dimensions (a mismatch for the tests to catch)
        self.action_space = spaces.Box(-1.0, 1.0, (action_dim,), np.float32)
        if box_obs:
            self.observation_space = spaces.Box(-5.0, 5.0, (4,), np.float32)
        else:
            xy = spaces.Box(-5.0, 5.0, (2,), np.float32)
            self.observation_space = spaces.Dict({"pos": xy, "target": spaces.Dict({"xy": xy})})
        self.pos = self.goal = np.zeros(2, np.float32)
        self.seed_, self.t = None, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seed_, self.t = seed, 0
        # far enough apart that every episode is longer than a training window
        self.pos = self.np_random.uniform(-2, -1, 2).astype(np.float32)
        self.goal = self.np_random.uniform(1, 2, 2).astype(np.float32)
        return self._obs(), {"success": False}

    def step(self, action):
        self.t += 1
        if self.seed_ == self.fail_seed and self.t == 3:
            raise RuntimeError("simulated physics blow-up")
        step = np.clip(np.asarray(action, np.float32)[:2], -0.5, 0.5)
        self.pos = np.clip(self.pos + step, -5, 5).astype(np.float32)
        dist = float(np.linalg.norm(self.pos - self.goal))
        success = dist < 0.2
        return self._obs(), -dist, success, False, {"success": success}

    def _obs(self):
        pos = self.pos.copy()
        if self.seed_ == self.nan_seed and self.t >= 2:
            pos[:] = np.nan
        if self.box_obs:
            return np.concatenate([pos, self.goal])
        return {"pos": pos, "target": {"xy": self.goal.copy()}}

    def render(self):
        frame = np.zeros((self.size, self.size, 3), np.uint8)
        x, y = np.clip(((self.pos + 5) / 10 * (self.size - 1)).astype(int), 0, self.size - 1)
        frame[y, x] = 255
        return frame


class ToyReachExpert:
    """Heads straight for the goal; its speed (the mode) is drawn per seed."""

    def __init__(self, env=None):
        self.speed = 0.5
        self.mode = "unset"

    def reset(self, seed: int) -> None:
        self.speed = float(np.random.default_rng([seed, 7]).choice([0.1, 0.15]))
        self.mode = f"speed-{self.speed}"

    def __call__(self, obs):
        goal = obs["target_xy"] if "target_xy" in obs else obs["state"][2:]
        pos = obs["pos"] if "pos" in obs else obs["state"][:2]
        return np.clip(goal - pos, -self.speed, self.speed).astype(np.float32)


for _id, _kw in (("ToyReach-v0", {}), ("ToyReachBox-v0", {"box_obs": True})):
    if _id not in gym.registry:
        gym.register(_id, entry_point=ToyReach, max_episode_steps=60, kwargs=_kw)

# the same environment as a task (the suite and baseline tests register or pass it)
TOY_TASK = TaskSpec(
    name="toy_reach",
    env_id="ToyReach-v0",
    env_imports=("tests.toy_envs",),
    expert="tests.toy_envs:ToyReachExpert",
    video_size=None,
)
