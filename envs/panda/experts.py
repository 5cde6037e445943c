"""Scripted experts for the Panda tasks: waypoint state machines with real modes.

Each control step the expert steers the grasp site towards the current waypoint with a
proportional step (speed-limited per phase), turns the palm towards the grasp yaw, and sets the
gripper; a phase ends when its waypoint is reached (or the gripper has settled). Waypoints are
computed from the observation, so a cube that slips or gets nudged is re-targeted.

Modes, drawn at ``reset(seed)`` from the expert's own generator:

* ``grasp`` - which of the cube's two grasp yaws the palm takes. A cube at yaw theta can be
  pinched across either pair of faces: palm yaw ``a`` or ``a -/+ pi/2`` where ``a`` is theta
  folded into [-pi/4, pi/4).
* (lift) ``side`` - the pre-grasp point is 6 cm to one side of the cube along the palm (the
  fingers straddle the cube's faces), so the hand slides in from one side or the other.
* (stack) ``order`` - which cube is picked and which one it goes on; ``b_on_a`` works, but the
  default ``MODES`` only demonstrate ``a_on_b`` (see PandaStackExpert); PandaStackBimodalExpert
  (task ``panda_stack_bimodal``) draws both, half and half.
"""

from __future__ import annotations

import numpy as np

from dplite.envs.panda.env import MAX_MOVE, MAX_TURN, PandaEnv, fold_quarter, quat_yaw
from dplite.envs.panda.scene import CUBE_HALF, FINGERTIP_DEPTH, TABLE_TOP


def grasp_yaws(cube_yaw: float) -> tuple[float, float]:
    """The two palm yaws that pinch a cube at ``cube_yaw`` across opposite faces."""
    a = fold_quarter(cube_yaw)
    return a, a - np.pi / 2 if a >= 0 else a + np.pi / 2


class _WaypointExpert:
    MODES: dict[str, tuple[str, ...]] = {"grasp": ("near", "far"), "side": ("left", "right")}
    APPROACH_HEIGHT = 0.10
    SIDE_OFFSET = 0.06
    CLOSE_STEPS = 6

    def __init__(self, env):
        self.env: PandaEnv = env.unwrapped
        self.rng = np.random.default_rng()
        self.mode: dict[str, str] = {}

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(None if seed is None else [seed, 0x9A4DA])
        self.mode = {name: str(self.rng.choice(options)) for name, options in self.MODES.items()}
        self.phase, self.timer, self.grasp_yaw = 0, 0, None

    def _grasp_yaw(self, cube_quat: np.ndarray) -> float:
        near, far = grasp_yaws(quat_yaw(cube_quat))
        return near if self.mode["grasp"] == "near" else far

    def _side_offset(self, yaw: float) -> np.ndarray:
        if "side" not in self.mode:  # straight down onto the cube
            return np.zeros(3)
        sign = 1.0 if self.mode["side"] == "left" else -1.0
        # Along the palm's x axis: the open fingers (+-4 cm along y) straddle the cube's faces.
        return sign * self.SIDE_OFFSET * np.array([np.cos(yaw), np.sin(yaw), 0.0])

    def _act(self, obs, target: np.ndarray, yaw: float, grip: float, speed: float = 1.0):
        delta = (target - obs["eef_pos"]) / MAX_MOVE
        norm = np.abs(delta).max()
        if norm > speed:
            delta *= speed / norm
        turn = np.clip((yaw - float(obs["eef_yaw"][0])) / MAX_TURN, -1.0, 1.0)
        return np.array([*delta, turn, grip], dtype=np.float32)

    def _lost(self, obs, cube: str) -> bool:
        """After closing: the fingers met nothing, or the cube slipped out of the hand."""
        empty = float(obs["gripper"][0]) < 2 * CUBE_HALF - 0.015
        away = np.linalg.norm(obs["eef_pos"] - obs[f"{cube}_pos"]) > 2 * CUBE_HALF
        return bool(empty or away)

    def _regrasp(self) -> None:
        self.phase, self.timer, self.grasp_yaw = 0, 0, None

    @staticmethod
    def _reached(obs, target: np.ndarray, yaw: float, tol: float) -> bool:
        return bool(
            np.linalg.norm(target - obs["eef_pos"]) < tol and abs(yaw - obs["eef_yaw"][0]) < 0.08
        )

    def _pick_steps(self, obs, cube: str):
        """Phases 0-3 of picking ``cube``: waypoints (target, tolerance, grip, speed)."""
        pos, quat = obs[f"{cube}_pos"].astype(np.float64), obs[f"{cube}_quat"]
        if self.grasp_yaw is None:
            self.grasp_yaw = self._grasp_yaw(quat)
        # The fingertips reach 4.5 cm below the grasp site: pinch a low cube near its top.
        grasp = pos.copy()
        grasp[2] = max(grasp[2], TABLE_TOP + FINGERTIP_DEPTH + 0.005)
        above = grasp + [0, 0, self.APPROACH_HEIGHT]
        slant = grasp + self._side_offset(self.grasp_yaw) + [0, 0, 0.03]
        return [
            (above + self._side_offset(self.grasp_yaw), 0.02, -1.0, 1.0),
            (slant, 0.01, -1.0, 0.5),
            (grasp, 0.006, -1.0, 0.4),
        ]


class PandaLiftExpert(_WaypointExpert):
    """Pick the cube and lift it 15 cm (the task counts 10)."""

    def __call__(self, obs) -> np.ndarray:
        if self.phase > 3 and self._lost(obs, "cube"):
            self._regrasp()
        steps = self._pick_steps(obs, "cube")
        yaw = self.grasp_yaw
        if self.phase < len(steps):
            target, tol, grip, speed = steps[self.phase]
            if self._reached(obs, target, yaw, tol):
                self.phase += 1
            return self._act(obs, target, yaw, grip, speed)
        hold = obs["eef_pos"].astype(np.float64)
        if self.phase == len(steps):  # close on the cube
            self.timer += 1
            if self.timer >= self.CLOSE_STEPS:
                self.phase += 1
                self.lift_to = hold + [0, 0, 0.15]
            return self._act(obs, hold, yaw, 1.0)
        return self._act(obs, self.lift_to, yaw, 1.0, 0.6)


def make_lift_expert(env) -> PandaLiftExpert:
    return PandaLiftExpert(env)


class PandaStackExpert(_WaypointExpert):
    """Pick one cube, carry it over the other, put it down on top and let go."""

    # Measured with the default 1.2 M UNet, 10k steps, 500 demos: with the approach-side mode
    # as well, 0.10-0.20 success (the gripper closed while hovering beside a cube); without it
    # but with a random stacking order, 0.05 (the hand came down between the two cubes). The
    # expert therefore always puts the red cube on the blue one (its mode: the grasp yaw); any
    # order still counts as success in the env.
    MODES: dict[str, tuple[str, ...]] = {"grasp": ("near", "far"), "order": ("a_on_b",)}
    CARRY_CLEARANCE = 0.05  # held cube's bottom above the other cube's top while carrying
    PLACE_GAP = 0.006  # release this far above resting contact

    def __call__(self, obs) -> np.ndarray:
        held, other = (
            ("cube_a", "cube_b") if self.mode["order"] == "a_on_b" else ("cube_b", "cube_a")
        )
        if 3 < self.phase < 7 and self._lost(obs, held):
            self._regrasp()
        steps = self._pick_steps(obs, held)
        yaw = self.grasp_yaw
        eef = obs["eef_pos"].astype(np.float64)
        if self.phase < len(steps):
            target, tol, grip, speed = steps[self.phase]
            if self._reached(obs, target, yaw, tol):
                self.phase += 1
            return self._act(obs, target, yaw, grip, speed)
        n = len(steps)
        if self.phase == n:  # close
            self.timer += 1
            if self.timer >= self.CLOSE_STEPS:
                self.phase, self.timer = n + 1, 0
            return self._act(obs, eef, yaw, 1.0)
        # Carry the held cube's centre (not the hand) over the other cube.
        offset = eef - obs[f"{held}_pos"]
        below = obs[f"{other}_pos"].astype(np.float64)
        place = below + [0, 0, 2 * CUBE_HALF + self.PLACE_GAP] + offset
        carry = place + [0, 0, self.CARRY_CLEARANCE]
        if self.phase == n + 1:  # lift straight up first
            target = np.array([eef[0], eef[1], max(carry[2], place[2])])
            if eef[2] >= target[2] - 0.01:
                self.phase += 1
            return self._act(obs, target, yaw, 1.0, 0.6)
        if self.phase == n + 2:  # carry over
            if self._reached(obs, carry, yaw, 0.01):
                self.phase += 1
            return self._act(obs, carry, yaw, 1.0, 0.8)
        if self.phase == n + 3:  # put down
            if self._reached(obs, place, yaw, 0.005):
                self.phase += 1
            return self._act(obs, place, yaw, 1.0, 0.3)
        if self.phase == n + 4:  # let go
            self.timer += 1
            if self.timer >= self.CLOSE_STEPS:
                self.phase += 1
                self.retreat = eef + [0, 0, 0.08]
            return self._act(obs, eef, yaw, -1.0)
        return self._act(obs, self.retreat, yaw, -1.0, 0.5)


def make_stack_expert(env) -> PandaStackExpert:
    return PandaStackExpert(env)


class PandaStackBimodalExpert(PandaStackExpert):
    """The stack expert with both orders: each seed draws red-on-blue or blue-on-red with
    probability 1/2 (and its grasp yaw), the demonstrations of the "panda_stack_bimodal" task.
    A policy that averages the two orders brings the hand down between the cubes, which is the
    failure a multimodal policy must avoid."""

    MODES: dict[str, tuple[str, ...]] = {"grasp": ("near", "far"), "order": ("a_on_b", "b_on_a")}


def make_stack_bimodal_expert(env) -> PandaStackBimodalExpert:
    return PandaStackBimodalExpert(env)
