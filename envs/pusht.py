"""PushT in MuJoCo: push a T-shaped block to a fixed goal pose with a position-controlled disc.

A port of the Diffusion Policy benchmark (Chi et al. 2023, arXiv 2303.04137; the reference is a
pymunk toy at 512 x 512 pixels). The API speaks the reference's pixel frame everywhere:

* frame: x to the right, y down (image rows), origin at the top-left corner, 512 x 512 px;
  angles from +x towards +y (clockwise on screen), radians, continuous (the hinge's qpos,
  never wrapped).
* T block body frame (as the reference's ``add_tee``): origin at the middle of the bar's top
  edge, stem along +y; bar [-60, 60] x [0, 30], stem [-15, 15] x [30, 120] (see
  envs/geometry.py). Goal pose (256, 256, pi/4) is the pose of that frame.
* action (2,) float32 in [0, 512]: the pusher's target xy; PD servos track it (about 90 % of a
  step within one 0.1 s control step). 10 Hz control, 10 physics steps of 10 ms each.
* observation dict, every mode: ``agent_pos`` (2,) pusher xy; ``state`` (5,) =
  [agent x, agent y, block x, block y, block angle]. ``keypoint`` mode adds ``keypoint``
  (9, 2): the bar's 4 corners (-60,0), (60,0), (60,30), (-60,30), the stem's 4 corners
  (-15,30), (15,30), (15,120), (-15,120) and the body origin (0, 0), all in world pixels.
  ``image`` mode adds ``keypoint`` and ``img`` (S, S, 3) uint8, a top-down render
  (S = ``image_size``).
* reward = clip(coverage / 0.95, 0, 1); ``info["is_success"]`` when coverage >= 0.95, which
  also terminates the episode; truncation after ``max_episode_steps`` (None: never; made
  through ``gymnasium.make("PushT-v0", max_episode_steps=N)`` the TimeLimit wrapper is the one
  and only limit).

The MJCF (envs/assets/pusht.xml) works in metres with 1 px = 1 mm; conversion happens here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from dplite.envs.geometry import (
    GOAL_POSE,
    T_CENTROID,
    distance_to_t,
    rotation,
    t_coverage,
    t_keypoints,
)

logger = logging.getLogger(__name__)

ASSET = Path(__file__).parent / "assets" / "pusht.xml"
MM = 1e-3  # metres per reference pixel inside the MJCF
WORKSPACE = 512.0
AGENT_RADIUS = 15.0
WALL_LOW, WALL_HIGH = 6.0, 506.0  # inner faces of the walls (px)
SUCCESS_THRESHOLD = 0.95
CONTROL_DT = 0.1  # 10 Hz
# Generous but finite bounds: positions stay inside the walls ([6, 506] px), angles can wind.
_POS_LOW, _POS_HIGH = -256.0, 768.0
_ANGLE_BOUND = 1000.0
# Reset distribution (reference): agent uniform in [50, 450]^2, block in [100, 400]^2, angle in
# [-pi, pi]; starts that are nearly solved, touch the pusher or poke through a wall are redrawn.
_MAX_START_COVERAGE = 0.9
_MIN_START_CLEARANCE = 5.0  # px between the pusher's rim and the block at reset


def observation_space(obs_mode: str, image_size: int) -> spaces.Dict:
    """The PushT observation dict (also gym-pusht's, envs/gym_pusht.py): ``agent_pos`` and
    ``state`` always, ``keypoint`` (9, 2) in keypoint and image mode, ``img`` in image mode."""
    obs_spaces: dict[str, spaces.Space] = {
        "agent_pos": spaces.Box(_POS_LOW, _POS_HIGH, shape=(2,), dtype=np.float32),
        "state": spaces.Box(
            low=np.array([_POS_LOW] * 4 + [-_ANGLE_BOUND], dtype=np.float32),
            high=np.array([_POS_HIGH] * 4 + [_ANGLE_BOUND], dtype=np.float32),
            dtype=np.float32,
        ),
    }
    if obs_mode in ("keypoint", "image"):
        obs_spaces["keypoint"] = spaces.Box(_POS_LOW, _POS_HIGH, (9, 2), np.float32)
    if obs_mode == "image":
        obs_spaces["img"] = spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
    return spaces.Dict(obs_spaces)


class PushTEnv(gym.Env):
    """PushT on MuJoCo, in the reference's pixel frame (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        obs_mode: Literal["state", "keypoint", "image"] = "state",
        render_mode: Literal["rgb_array"] | None = None,
        max_episode_steps: int | None = 300,
        render_size: int = 96,
        image_size: int = 96,
        success_threshold: float = SUCCESS_THRESHOLD,
    ) -> None:
        if obs_mode not in ("state", "keypoint", "image"):
            raise ValueError(
                f"PushTEnv: obs_mode={obs_mode!r}, expected 'state', 'keypoint' or 'image'"
            )
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"PushTEnv: render_mode={render_mode!r}, expected 'rgb_array' or None")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"PushTEnv: max_episode_steps={max_episode_steps}, expected >= 1")
        for name, size in (("render_size", render_size), ("image_size", image_size)):
            if not 8 <= size <= 2048:
                raise ValueError(f"PushTEnv: {name}={size}, expected 8 <= size <= 2048")
        if not 0.0 < success_threshold <= 1.0:
            raise ValueError(f"PushTEnv: success_threshold={success_threshold}, expected in (0, 1]")
        self.obs_mode = obs_mode
        self.render_mode = render_mode
        self.max_episode_steps = max_episode_steps
        self.render_size = render_size
        self.image_size = image_size
        self.success_threshold = success_threshold

        self.model = mujoco.MjModel.from_xml_path(str(ASSET))
        self.data = mujoco.MjData(self.model)
        self.n_substeps = round(CONTROL_DT / self.model.opt.timestep)
        self._place_goal_geoms()
        big = max(render_size, image_size)
        self.model.vis.global_.offwidth = max(self.model.vis.global_.offwidth, big)
        self.model.vis.global_.offheight = max(self.model.vis.global_.offheight, big)
        self._renderers: dict[int, mujoco.Renderer] = {}
        self._scene_option = mujoco.MjvOption()

        self.action_space = spaces.Box(0.0, WORKSPACE, shape=(2,), dtype=np.float32)
        self.observation_space = observation_space(obs_mode, image_size)

        self._steps = 0
        self._max_coverage = 0.0

    # ----------------------------------------------------------------------------- model

    def _place_goal_geoms(self) -> None:
        """Move the visual goal T to GOAL_POSE (single source of truth: envs/geometry.py)."""
        bid = self.model.body("goal").id
        self.model.body_pos[bid, :2] = GOAL_POSE[:2] * MM
        self.model.body_quat[bid] = [np.cos(GOAL_POSE[2] / 2), 0.0, 0.0, np.sin(GOAL_POSE[2] / 2)]

    def _set_state(self, state: np.ndarray) -> None:
        """Teleport to [agent x, agent y, block x, block y, block angle] (pixels, radians)."""
        agent, pose = state[:2], state[2:5]
        centroid = pose[:2] + rotation(pose[2]) @ T_CENTROID
        self.data.qpos[:] = [
            agent[0] * MM,
            agent[1] * MM,
            centroid[0] * MM,
            centroid[1] * MM,
            pose[2],
        ]
        self.data.qvel[:] = 0.0
        self.data.ctrl[:] = agent * MM
        self.data.time = 0.0
        mujoco.mj_forward(self.model, self.data)

    def block_pose(self) -> np.ndarray:
        """(x, y, theta) of the T's reference body frame, pixels / radians, float64."""
        q = self.data.qpos
        theta = float(q[4])
        origin = np.array([q[2], q[3]]) / MM - rotation(theta) @ T_CENTROID
        return np.array([origin[0], origin[1], theta])

    def agent_pos(self) -> np.ndarray:
        """Pusher xy in pixels, float64."""
        return np.array([self.data.qpos[0], self.data.qpos[1]]) / MM

    def coverage(self) -> float:
        """Exact fraction of the goal T covered by the block."""
        return t_coverage(self.block_pose(), GOAL_POSE)

    # ----------------------------------------------------------------------------- gym API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Random start like the reference; ``options={"reset_to_state": (5,)}`` sets one."""
        super().reset(seed=seed)
        if options is not None and options.get("reset_to_state") is not None:
            state = np.asarray(options["reset_to_state"], dtype=np.float64)
            if state.shape != (5,) or not np.all(np.isfinite(state)):
                raise ValueError(
                    f"PushTEnv.reset: options['reset_to_state'] has shape {state.shape} "
                    "(or non-finite values), expected 5 finite numbers [ax, ay, bx, by, angle]"
                )
        else:
            state = self._sample_start()
        self._set_state(state)
        self._steps = 0
        cov = self.coverage()
        self._max_coverage = cov
        info = {"coverage": cov, "is_success": cov >= self.success_threshold, "max_coverage": cov}
        return self._obs(), info

    def _sample_start(self) -> np.ndarray:
        """Reference start distribution, re-sampling near-solved or overlapping starts."""
        rng = self.np_random
        for _ in range(1000):
            agent = rng.uniform(50.0, 450.0, size=2)
            block = rng.uniform(100.0, 400.0, size=2)
            angle = rng.uniform(-np.pi, np.pi)
            pose = np.array([block[0], block[1], angle])
            if t_coverage(pose, GOAL_POSE) > _MAX_START_COVERAGE:
                continue
            if distance_to_t(pose, agent) < AGENT_RADIUS + _MIN_START_CLEARANCE:
                continue
            corners = t_keypoints(pose)[:8]  # the T's extreme points
            if corners.min() < WALL_LOW + 1.0 or corners.max() > WALL_HIGH - 1.0:
                continue
            return np.concatenate([agent, pose])
        raise RuntimeError("PushTEnv: no valid start in 1000 draws")  # practically unreachable

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Track target ``action`` (pixels) for one 0.1 s control step."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (2,) or not np.all(np.isfinite(action)):
            raise ValueError(
                f"PushTEnv.step: action {action!r} has shape {action.shape}, "
                "expected 2 finite pixel coordinates"
            )
        self.data.ctrl[:] = np.clip(action, 0.0, WORKSPACE) * MM
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        self._steps += 1
        cov = self.coverage()
        self._max_coverage = max(self._max_coverage, cov)
        success = cov >= self.success_threshold
        reward = float(np.clip(cov / self.success_threshold, 0.0, 1.0))
        limit = self.max_episode_steps
        truncated = (not success) and limit is not None and self._steps >= limit
        info = {"coverage": cov, "is_success": success, "max_coverage": self._max_coverage}
        return self._obs(), reward, success, truncated, info

    def _obs(self) -> dict[str, np.ndarray]:
        agent = self.agent_pos()
        pose = self.block_pose()
        obs = {
            "agent_pos": agent.astype(np.float32),
            "state": np.concatenate([agent, pose]).astype(np.float32),
        }
        if self.obs_mode in ("keypoint", "image"):
            obs["keypoint"] = t_keypoints(pose).astype(np.float32)  # (9, 2)
        if self.obs_mode == "image":
            obs["img"] = self._render_frame(self.image_size)
        return obs

    def render(self) -> np.ndarray | None:
        """Top-down RGB frame (render_size, render_size, 3) uint8 when render_mode is set."""
        if self.render_mode is None:
            return None
        return self._render_frame(self.render_size)

    def _render_frame(self, size: int) -> np.ndarray:
        renderer = self._renderers.get(size)
        if renderer is None:
            renderer = mujoco.Renderer(self.model, size, size)
            # Flat top-down look and speed: no shadows, reflections or skybox.
            for flag in (
                mujoco.mjtRndFlag.mjRND_SHADOW,
                mujoco.mjtRndFlag.mjRND_REFLECTION,
                mujoco.mjtRndFlag.mjRND_SKYBOX,
            ):
                renderer.scene.flags[flag] = 0
            self._renderers[size] = renderer
        renderer.update_scene(self.data, camera="top", scene_option=self._scene_option)
        return renderer.render().copy()

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()
