"""Franka Panda lift and stack environments: Cartesian actions, IK inside the env.

Action (5 numbers in [-1, 1]): end-effector position delta (x, y, z; 1 = ``MAX_MOVE`` metres),
yaw delta (1 = ``MAX_TURN`` radians) and the gripper (-1 open ... +1 closed). Each control step
(``control_hz``, 10 Hz by default) turns "current grasp-site pose + delta, gripper pointing
down" into arm joint targets by damped least-squares IK (``envs.panda.ik``) and lets the
position actuators track them for ``1 / control_hz`` seconds of physics; so a policy acts in
Cartesian space, as in robomimic.

Observations (a dict): ``eef_pos`` (grasp site, metres, world frame with the robot base at the
origin and the table top at z = 0), ``eef_yaw`` (heading of the palm, radians), ``gripper``
(finger opening, metres), per cube ``<cube>_pos``, ``<cube>_quat`` (w >= 0) and
``eef_to_<cube>`` (cube position minus hand position, as robosuite's object state has it),
``eef_to_<cube>_yaw`` (cube yaw minus palm yaw, folded into [-pi/4, pi/4): 0 when the fingers
are square to the cube's faces; a cube looks the same every quarter turn and the gripper every
half turn), and with two cubes ``cube_a_to_cube_b`` (b minus a). ``obs_mode="image"``
adds ``front_img`` and ``wrist_img`` (``image_size`` square RGB uint8); the cube poses stay, so
experts can still demonstrate and datasets keep both (a policy picks its keys).

Reward: 1 on success (which ends the episode); before that a shaped progress in [0, 1)
(reach, grasp, then lift / place; see ``progress``); 0 after a physics failure. Bad actions
(wrong shape, NaN/inf) raise ValueError. Physics that blows up (a non-finite
state, MuJoCo's bad-acceleration warning, a cube launched out of the scene) ends the episode
as failed with ``info["failure"]`` saying why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from dplite.envs.panda.ik import solve_ik, yaw_down_rotation
from dplite.envs.panda.scene import (
    ARM_PREFIX,
    CUBE_HALF,
    FINGER_OPEN,
    FINGERTIP_DEPTH,
    GRASP_SITE,
    N_ARM_JOINTS,
    TABLE_TOP,
    Cube,
    build_spec,
)

MAX_MOVE = 0.05  # metres per control step at |action| = 1
MAX_TURN = 0.3  # radians per control step at |action| = 1
HOME_POS = np.array([0.45, 0.0, 0.25])  # grasp site at reset, gripper down, yaw 0
WORKSPACE_LOW = np.array([0.2, -0.4, TABLE_TOP + FINGERTIP_DEPTH - 0.005])
WORKSPACE_HIGH = np.array([0.8, 0.4, 0.5])
YAW_LIMIT = 2.4  # |yaw| the controller accepts (joint 7 spans +-2.9 rad around yaw 0)
SCENE_RADIUS = 1.5  # a cube farther than this from the base has been launched


def fold_quarter(yaw: float) -> float:
    """``yaw`` folded into [-pi/4, pi/4): a cube looks the same every quarter turn."""
    return float((yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4)


def quat_yaw(q: np.ndarray) -> float:
    """Heading (rotation about z) of a (w, x, y, z) quaternion."""
    w, x, y, z = q
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


def _quat_w_positive(q: np.ndarray) -> np.ndarray:
    return -q if q[0] < 0 else q


class PandaEnv(gym.Env):
    """Panda + table + cubes. Subclasses place the cubes and define success."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    CUBES: Sequence[Cube] = ()

    def __init__(
        self,
        obs_mode: str = "state",
        image_size: int = 96,
        render_mode: str | None = None,
        render_size: int = 256,
        control_hz: float = 10.0,
        timestep: float = 0.005,
        max_episode_steps: int | None = None,
    ):
        if obs_mode not in ("state", "image"):
            raise ValueError(
                f"{type(self).__name__}: obs_mode {obs_mode!r}, expected 'state' or 'image'"
            )
        if render_mode not in (None, "rgb_array"):
            raise ValueError(
                f"{type(self).__name__}: render_mode {render_mode!r}, expected None or 'rgb_array'"
            )
        self.obs_mode, self.image_size = obs_mode, int(image_size)
        self.render_mode, self.render_size = render_mode, int(render_size)
        self.max_episode_steps = max_episode_steps
        self.n_substeps = max(1, round(1.0 / (control_hz * timestep)))
        self.metadata = {**self.metadata, "render_fps": control_hz}

        self.model = build_spec(self.CUBES, timestep=timestep).compile()
        self.data = mujoco.MjData(self.model)
        self._scratch = mujoco.MjData(self.model)  # IK works here, never on the simulated state
        m = self.model
        arm = [m.joint(f"robot:{ARM_PREFIX}joint{i}") for i in range(1, N_ARM_JOINTS + 1)]
        self._arm_qpos = np.array([j.qposadr[0] for j in arm])
        self._arm_dof = np.array([j.dofadr[0] for j in arm])
        fingers = [m.joint(f"robot:{ARM_PREFIX}finger_joint{i}") for i in (1, 2)]
        self._finger_qpos = np.array([j.qposadr[0] for j in fingers])
        self._finger_geoms = {
            side: {
                g
                for g in range(m.ngeom)
                if m.geom_bodyid[g] == m.body(f"{ARM_PREFIX}{side}finger").id
            }
            for side in ("left", "right")
        }
        self._site = m.site(GRASP_SITE).id
        self._cube_qpos = {c.name: m.joint(f"{c.name}_joint").qposadr[0] for c in self.CUBES}
        self._cube_geom = {c.name: m.geom(f"{c.name}_geom").id for c in self.CUBES}
        self.home_qpos, _ = self._ik(
            np.array([0, -0.2, 0, -2.5, 0, 0.7, 0.0]), HOME_POS, 0.0, iters=200
        )
        self._renderers: dict[tuple[int, str], mujoco.Renderer] = {}
        self._scene_option = mujoco.MjvOption()

        self.action_space = spaces.Box(-1.0, 1.0, shape=(5,), dtype=np.float32)
        box = lambda n: spaces.Box(-np.inf, np.inf, shape=(n,), dtype=np.float32)  # noqa: E731
        obs = {"eef_pos": box(3), "eef_yaw": box(1), "gripper": box(1)}
        for cube in self.CUBES:
            obs[f"{cube.name}_pos"], obs[f"{cube.name}_quat"] = box(3), box(4)
            obs[f"eef_to_{cube.name}"], obs[f"eef_to_{cube.name}_yaw"] = box(3), box(1)
        if len(self.CUBES) == 2:
            obs[f"{self.CUBES[0].name}_to_{self.CUBES[1].name}"] = box(3)
        if obs_mode == "image":
            img = spaces.Box(0, 255, shape=(self.image_size, self.image_size, 3), dtype=np.uint8)
            obs["front_img"], obs["wrist_img"] = img, img
        self.observation_space = spaces.Dict(obs)
        self._steps = 0

    # ---------------------------------------------------------------------------- kinematics

    def _ik(self, q_start: np.ndarray, pos: np.ndarray, yaw: float, iters: int = 8):
        rest = getattr(self, "home_qpos", q_start)
        return solve_ik(
            self.model,
            self._scratch,
            self._site,
            self._arm_qpos,
            self._arm_dof,
            q_start,
            pos,
            yaw_down_rotation(yaw),
            rest,
            max_iters=iters,
        )

    def eef_pos(self) -> np.ndarray:
        return self.data.site_xpos[self._site].copy()

    def eef_yaw(self) -> float:
        rot = self.data.site_xmat[self._site].reshape(3, 3)
        return float(np.arctan2(rot[1, 0], rot[0, 0]))

    def gripper_width(self) -> float:
        return float(self.data.qpos[self._finger_qpos].sum())

    def cube_pos(self, name: str) -> np.ndarray:
        adr = self._cube_qpos[name]
        return self.data.qpos[adr : adr + 3].copy()

    def cube_quat(self, name: str) -> np.ndarray:
        adr = self._cube_qpos[name]
        return _quat_w_positive(self.data.qpos[adr + 3 : adr + 7].copy())

    def cube_yaw(self, name: str) -> float:
        return quat_yaw(self.cube_quat(name))

    def touching(self, geoms_a: set[int], geoms_b: set[int]) -> bool:
        for i in range(self.data.ncon):
            c = self.data.contact[i]
            if (c.geom1 in geoms_a and c.geom2 in geoms_b) or (
                c.geom2 in geoms_a and c.geom1 in geoms_b
            ):
                return True
        return False

    def grasped(self, name: str) -> bool:
        """Both fingers touch the cube (contacts, not height)."""
        cube = {self._cube_geom[name]}
        return self.touching(self._finger_geoms["left"], cube) and self.touching(
            self._finger_geoms["right"], cube
        )

    # -------------------------------------------------------------------------- gym api

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[self._arm_qpos] = self.home_qpos
        self.data.qpos[self._finger_qpos] = FINGER_OPEN
        self.data.ctrl[:N_ARM_JOINTS] = self.home_qpos
        self.data.ctrl[N_ARM_JOINTS:] = FINGER_OPEN
        for name, (xy, yaw) in self._sample_cubes().items():
            adr = self._cube_qpos[name]
            half = next(c.half for c in self.CUBES if c.name == name)
            self.data.qpos[adr : adr + 3] = [xy[0], xy[1], TABLE_TOP + half]
            self.data.qpos[adr + 3 : adr + 7] = [np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]
        mujoco.mj_forward(self.model, self.data)
        self._steps = 0
        self._start = {c.name: self.cube_pos(c.name) for c in self.CUBES}
        self._warnings = self._bad_warnings()
        return self._obs(), self._info(None, self.is_success())

    def _sample_cubes(self) -> dict[str, tuple[np.ndarray, float]]:
        """Non-overlapping cube positions (>= 10 cm apart) and yaws, from ``self.np_random``."""
        rng = self.np_random
        for _ in range(1000):
            xy = rng.uniform([0.35, -0.2], [0.6, 0.2], size=(len(self.CUBES), 2))
            gaps = [np.linalg.norm(a - b) for i, a in enumerate(xy) for b in xy[i + 1 :]]
            if not gaps or min(gaps) >= 0.1:
                yaws = rng.uniform(-np.pi, np.pi, size=len(self.CUBES))
                return {c.name: (xy[i], float(yaws[i])) for i, c in enumerate(self.CUBES)}
        raise RuntimeError(f"{type(self).__name__}: no cube layout in 1000 draws")

    def step(self, action: np.ndarray):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (5,) or not np.all(np.isfinite(action)):
            raise ValueError(
                f"{type(self).__name__}.step: action {action!r} has shape {action.shape}, expected "
                "5 finite numbers [dx, dy, dz, dyaw, gripper] in [-1, 1]"
            )
        action = np.clip(action, -1.0, 1.0)
        pos = np.clip(self.eef_pos() + action[:3] * MAX_MOVE, WORKSPACE_LOW, WORKSPACE_HIGH)
        yaw = float(np.clip(self.eef_yaw() + action[3] * MAX_TURN, -YAW_LIMIT, YAW_LIMIT))
        q_target, _ = self._ik(self.data.qpos[self._arm_qpos], pos, yaw)
        self.data.ctrl[:N_ARM_JOINTS] = q_target
        self.data.ctrl[N_ARM_JOINTS:] = FINGER_OPEN * (1.0 - action[4]) / 2.0
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        self._steps += 1

        failure = self._failure()
        success = failure is None and self.is_success()
        limit = self.max_episode_steps
        truncated = not success and failure is None and limit is not None and self._steps >= limit
        info = self._info(failure, success)
        reward = 0.0 if failure is not None else 1.0 if success else self.progress()
        return self._obs(), reward, success or failure is not None, truncated, info

    def _bad_warnings(self) -> int:
        return int(self.data.warning[mujoco.mjtWarning.mjWARN_BADQACC].number)

    def _failure(self) -> str | None:
        if not (np.all(np.isfinite(self.data.qpos)) and np.all(np.isfinite(self.data.qvel))):
            return "non-finite physics state"
        if self._bad_warnings() > self._warnings:
            return "physics diverged (MuJoCo bad-acceleration warning; the state was reset)"
        for cube in self.CUBES:
            p = self.cube_pos(cube.name)
            if np.linalg.norm(p[:2]) > SCENE_RADIUS or p[2] < TABLE_TOP - 0.5:
                return f"{cube.name} left the scene (at {np.round(p, 2).tolist()})"
        return None

    def is_success(self) -> bool:
        raise NotImplementedError

    def progress(self) -> float:
        """Shaped reward in [0, 1) before success (1 on success, 0 on a physics failure)."""
        raise NotImplementedError

    def _reach(self, name: str) -> float:
        """1 with the grasp site at the cube's centre, falling off over a few centimetres."""
        return float(1.0 - np.tanh(10.0 * np.linalg.norm(self.eef_pos() - self.cube_pos(name))))

    @staticmethod
    def _info(failure: str | None, success: bool) -> dict[str, Any]:
        info: dict[str, Any] = {"is_success": success}
        if failure is not None:
            info["failure"] = failure
        return info

    def _obs(self) -> dict[str, np.ndarray]:
        f32 = lambda x: np.asarray(x, dtype=np.float32).reshape(-1)  # noqa: E731
        obs = {
            "eef_pos": f32(self.eef_pos()),
            "eef_yaw": f32(self.eef_yaw()),
            "gripper": f32(self.gripper_width()),
        }
        for cube in self.CUBES:
            obs[f"{cube.name}_pos"] = f32(self.cube_pos(cube.name))
            obs[f"{cube.name}_quat"] = f32(self.cube_quat(cube.name))
            obs[f"eef_to_{cube.name}"] = obs[f"{cube.name}_pos"] - obs["eef_pos"]
            obs[f"eef_to_{cube.name}_yaw"] = f32(
                fold_quarter(self.cube_yaw(cube.name) - self.eef_yaw())
            )
        if len(self.CUBES) == 2:
            a, b = (c.name for c in self.CUBES)
            obs[f"{a}_to_{b}"] = obs[f"{b}_pos"] - obs[f"{a}_pos"]
        if self.obs_mode == "image":
            obs["front_img"] = self._render_frame(self.image_size, "front")
            obs["wrist_img"] = self._render_frame(self.image_size, "wrist")
        return obs

    # -------------------------------------------------------------------------- rendering

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            return None
        return self._render_frame(self.render_size, "front")

    def _render_frame(self, size: int, camera: str) -> np.ndarray:
        renderer = self._renderers.get((size, camera))
        if renderer is None:
            renderer = mujoco.Renderer(self.model, size, size)
            for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION):
                renderer.scene.flags[flag] = 0
            self._renderers[(size, camera)] = renderer
        renderer.update_scene(self.data, camera=camera, scene_option=self._scene_option)
        return renderer.render().copy()

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()


class PandaLiftEnv(PandaEnv):
    """Lift the cube 10 cm off the table, held between both fingers."""

    CUBES = (Cube("cube", (0.85, 0.15, 0.1, 1.0)),)
    LIFT_HEIGHT = 0.10

    def raised(self) -> float:
        return float(self.cube_pos("cube")[2] - self._start["cube"][2])

    def is_success(self) -> bool:
        return bool(self.raised() >= self.LIFT_HEIGHT and self.grasped("cube"))

    def progress(self) -> float:
        """Reach 0.25, grasp 0.25, lift 0.5 (in proportion to the height, while grasped)."""
        grasped = self.grasped("cube")
        lift = np.clip(self.raised() / self.LIFT_HEIGHT, 0.0, 1.0) if grasped else 0.0
        return float(0.25 * self._reach("cube") + 0.25 * grasped + 0.49 * lift)


class PandaStackEnv(PandaEnv):
    """Put one cube on the other (either order) and let go of it."""

    CUBES = (Cube("cube_a", (0.85, 0.15, 0.1, 1.0)), Cube("cube_b", (0.1, 0.55, 0.85, 1.0)))

    def stacked(self, top: str, bottom: str) -> bool:
        """``top`` rests on ``bottom`` (centred within half a cube, face on face, at rest) and
        no finger touches it."""
        d = self.cube_pos(top) - self.cube_pos(bottom)
        dof = self.model.joint(f"{top}_joint").dofadr[0]
        fingers = self._finger_geoms["left"] | self._finger_geoms["right"]
        return bool(
            np.linalg.norm(d[:2]) < CUBE_HALF
            and abs(d[2] - 2 * CUBE_HALF) < 0.01
            and np.linalg.norm(self.data.qvel[dof : dof + 3]) < 0.05
            and not self.touching(fingers, {self._cube_geom[top]})
        )

    def is_success(self) -> bool:
        return self.stacked("cube_a", "cube_b") or self.stacked("cube_b", "cube_a")

    def stack_order(self) -> str:
        """Which order the cubes are stacked in now: "a_on_b" (cube_a on cube_b), "b_on_a",
        or "none"; reported in every step's info as "stack_order", so that an evaluation can
        count the orders of its successes."""
        if self.stacked("cube_a", "cube_b"):
            return "a_on_b"
        return "b_on_a" if self.stacked("cube_b", "cube_a") else "none"

    def _info(self, failure: str | None, success: bool) -> dict[str, Any]:
        return {**PandaEnv._info(failure, success), "stack_order": self.stack_order()}

    def progress(self) -> float:
        """The better order's reach 0.25, grasp 0.25, and 0.49 for bringing the held cube to
        its resting place on the other (1 - tanh(10 * distance))."""

        def order(top: str, bottom: str) -> float:
            rest = self.cube_pos(bottom) + [0.0, 0.0, 2 * CUBE_HALF]
            place = 1.0 - np.tanh(10.0 * np.linalg.norm(self.cube_pos(top) - rest))
            grasped = self.grasped(top)
            return 0.25 * self._reach(top) + 0.25 * grasped + 0.49 * place * grasped

        return float(max(order("cube_a", "cube_b"), order("cube_b", "cube_a")))
