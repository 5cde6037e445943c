"""gym-pusht (LeRobot's canonical PushT, pymunk) behind the project's PushT observation dict.

The field reports PushT on ``gym_pusht/PushT-v0`` (PyPI ``gym-pusht``; Chi et al. 2023, arXiv
2303.04137, and LeRobot's diffusion_pusht): a pymunk toy in a 512 x 512 px frame. This module
wraps that environment, unchanged in its physics, start distribution, reward and success, as
``GymPushT-v0`` with the observation dict of envs/pusht.py, so that the project's PushT expert,
datasets and policies run on it as they run on the MuJoCo port:

* frame: the same as envs/pusht.py, x right, y down, 512 x 512 px; block pose = the T's body
  frame (origin at the middle of the bar's top edge, stem along +y), which is what gym-pusht's
  ``block.position`` / ``block.angle`` are; goal pose (256, 256, pi/4).
* action (2,) float32: the pusher's target xy in pixels, passed to gym-pusht as it is (its PD
  loop, 10 Hz control, 10 physics steps of 10 ms).
* observation dict: ``agent_pos`` (2,) and ``state`` (5,) = [agent x, agent y, block x,
  block y, block angle] with the angle continuous (pymunk's, never wrapped; gym-pusht's own
  ``state`` observation wraps it into [0, 2 pi), a jump a policy must not see).
  ``keypoint`` mode adds ``keypoint`` (9, 2): gym-pusht's 8 keypoints (its
  ``environment_state``, the bar's corners then the stem's, the order of envs/geometry.py's
  ``T_KEYPOINTS``) and the body origin, as envs/pusht.py emits them. ``image`` mode adds
  ``keypoint`` and ``img`` (S, S, 3) uint8: gym-pusht's own rendering of its ``pixels``
  observation (S = ``image_size``, 96 as LeRobot's).
* reward = clip(coverage / 0.95, 0, 1), gym-pusht's (the Diffusion Policy paper's PushT
  score is the episode's maximum of it); ``info["coverage"]`` is the raw covered fraction,
  ``info["is_success"]`` is gym-pusht's (coverage > 0.95), which also terminates the episode;
  ``info["max_coverage"]`` the episode's best so far. The 300-step limit is gymnasium's
  TimeLimit (registered with the id).
* ``reset(options={"reset_to_state": s})`` puts the agent at s[:2] and the block's body frame
  exactly at s[2:5] (the semantics of envs/pusht.py). gym-pusht's own option of that name
  places the block at the given position *before* turning it about its centre of gravity
  (kept there for old data), which leaves the body frame elsewhere; the pose is converted
  here so that it lands where asked.

gym-pusht is an optional extra (``pip install -e ".[gym-pusht]"``): this module imports it
when an environment is made, so that the task registry and this id exist without it. No torch.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dplite.envs.pusht import observation_space

ENV_ID = "GymPushT-v0"
EXTRA_HINT = 'pip install -e ".[gym-pusht]"  (or: pip install "gym-pusht>=0.1.8,<0.2")'
MAX_EPISODE_STEPS = 300


class MissingExtraError(ImportError, ValueError):
    """gym-pusht is not installed (or does not import). An ImportError, and a ValueError too, so that the command
    lines report it in one line (like any refused input) instead of a traceback."""


def _load_gym_pusht() -> type:
    """gym-pusht's PushTEnv class, or a MissingExtraError that names the extra to install."""
    # pygame prints a banner on import unless told not to
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        from gym_pusht.envs.pusht import PushTEnv as _PymunkPushT
    except ImportError as e:
        raise MissingExtraError(
            f"the gym-pusht tasks ({ENV_ID}) need the optional dependency gym-pusht, which "
            f"could not be imported ({e}); install it with: {EXTRA_HINT}"
        ) from e
    return _PymunkPushT


class GymPushTEnv(gym.Env):
    """gym-pusht's PushT with the observation dict of envs/pusht.py (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        obs_mode: Literal["state", "keypoint", "image"] = "keypoint",
        render_mode: Literal["rgb_array"] | None = None,
        render_size: int = 256,
        image_size: int = 96,
    ) -> None:
        if obs_mode not in ("state", "keypoint", "image"):
            raise ValueError(
                f"GymPushTEnv: obs_mode={obs_mode!r}, expected 'state', 'keypoint' or 'image'"
            )
        if render_mode not in (None, "rgb_array"):
            raise ValueError(
                f"GymPushTEnv: render_mode={render_mode!r}, expected 'rgb_array' or None"
            )
        # gym-pusht marks the last target on its visualization with lines size / 96 px thick
        for name, size, low in (("render_size", render_size, 96), ("image_size", image_size, 8)):
            if not low <= size <= 2048:
                raise ValueError(f"GymPushTEnv: {name}={size}, expected {low} <= size <= 2048")
        self.obs_mode = obs_mode
        self.render_mode = render_mode
        # gym-pusht draws its pixel observations only in its rgb_array mode; a plain
        # observation type makes it draw nothing unless asked (render or image mode).
        self._env = _load_gym_pusht()(
            obs_type="pixels_agent_pos" if obs_mode == "image" else "state",
            render_mode="rgb_array",
            observation_width=image_size,
            observation_height=image_size,
            visualization_width=render_size,
            visualization_height=render_size,
        )
        self.success_threshold = float(self._env.success_threshold)

        self.action_space = spaces.Box(0.0, 512.0, shape=(2,), dtype=np.float32)
        self.observation_space = observation_space(obs_mode, image_size)
        self._max_coverage = 0.0

    # ----------------------------------------------------------------------------- state

    @property
    def goal_pose(self) -> np.ndarray:
        """gym-pusht's goal pose (x, y, theta) of the T's body frame, float64 (gym-pusht sets
        it up at reset)."""
        if not hasattr(self._env, "goal_pose"):
            raise RuntimeError("GymPushTEnv.goal_pose: call reset() first")
        return np.asarray(self._env.goal_pose, dtype=np.float64)

    def block_pose(self) -> np.ndarray:
        """(x, y, theta) of the T's body frame, pixels / radians (continuous), float64."""
        block = self._env.block
        return np.array([block.position.x, block.position.y, block.angle], dtype=np.float64)

    def agent_pos(self) -> np.ndarray:
        """Pusher xy in pixels, float64."""
        return np.array(self._env.agent.position, dtype=np.float64)

    def keypoints(self) -> np.ndarray:
        """(9, 2): gym-pusht's 8 keypoints of the T (its ``environment_state``) + the origin."""
        corners = self._env.get_keypoints(self._env._block_shapes)  # (8, 2), gym-pusht's own
        return np.concatenate([corners, self.block_pose()[None, :2]], axis=0)

    def coverage(self) -> float:
        """gym-pusht's coverage: area(block intersected with goal T) / area(T) (shapely)."""
        return float(self._env._get_coverage())

    def _legacy_state(self, state: np.ndarray) -> np.ndarray:
        """The ``reset_to_state`` gym-pusht needs to put the body frame exactly at state[2:5].

        gym-pusht sets the block's position at angle 0 and then turns it about its centre of
        gravity c (body frame), so the origin ends at ``p + c - R(theta) c``; solving for p.
        """
        c = np.array([0.0, 45.0])  # gym-pusht's add_tee: the mean of its two boxes' centroids
        theta = float(state[4])
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        out = np.array(state, dtype=np.float64)
        out[2:4] = state[2:4] - c + rot @ c
        return out

    # ----------------------------------------------------------------------------- gym API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """gym-pusht's random start (seeded); ``options={"reset_to_state": (5,)}`` sets one."""
        super().reset(seed=seed)
        inner_options = None
        if options is not None and options.get("reset_to_state") is not None:
            state = np.asarray(options["reset_to_state"], dtype=np.float64)
            if state.shape != (5,) or not np.all(np.isfinite(state)):
                raise ValueError(
                    f"GymPushTEnv.reset: options['reset_to_state'] has shape {state.shape} "
                    "(or non-finite values), expected 5 finite numbers [ax, ay, bx, by, angle]"
                )
            inner_options = {"reset_to_state": self._legacy_state(state)}
        inner_obs, _ = self._env.reset(seed=seed, options=inner_options)
        cov = self.coverage()
        self._max_coverage = cov
        info = {
            "coverage": cov,
            "is_success": cov > self.success_threshold,
            "max_coverage": cov,
        }
        return self._obs(inner_obs), info

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """One 0.1 s control step of gym-pusht towards the target ``action`` (pixels)."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (2,) or not np.all(np.isfinite(action)):
            raise ValueError(
                f"GymPushTEnv.step: action {action!r} has shape {action.shape}, "
                "expected 2 finite pixel coordinates"
            )
        inner_obs, reward, terminated, _, inner_info = self._env.step(action)
        cov = float(inner_info["coverage"])
        self._max_coverage = max(self._max_coverage, cov)
        info = {
            "coverage": cov,
            "is_success": bool(inner_info["is_success"]),
            "max_coverage": self._max_coverage,
        }
        return self._obs(inner_obs), float(reward), bool(terminated), False, info

    def _obs(self, inner_obs: Any) -> dict[str, np.ndarray]:
        agent = self.agent_pos()
        obs = {
            "agent_pos": agent.astype(np.float32),
            "state": np.concatenate([agent, self.block_pose()]).astype(np.float32),
        }
        if self.obs_mode in ("keypoint", "image"):
            obs["keypoint"] = self.keypoints().astype(np.float32)  # (9, 2)
        if self.obs_mode == "image":
            obs["img"] = np.ascontiguousarray(inner_obs["pixels"], dtype=np.uint8)  # (S, S, 3)
        return obs

    def render(self) -> np.ndarray | None:
        """gym-pusht's visualization (render_size, render_size, 3) uint8, with the last target
        marked, when render_mode is set."""
        if self.render_mode is None:
            return None
        return self._env.render()

    def close(self) -> None:
        self._env.close()


if ENV_ID not in gym.registry:
    gym.register(
        id=ENV_ID,
        entry_point="dplite.envs.gym_pusht:GymPushTEnv",
        max_episode_steps=MAX_EPISODE_STEPS,
    )

__all__ = ["ENV_ID", "EXTRA_HINT", "GymPushTEnv", "MissingExtraError"]
