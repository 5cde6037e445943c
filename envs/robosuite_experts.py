"""Scripted experts for the robosuite tasks (envs/robosuite_tasks.py): OSC_POSE waypoints.

Each control step the expert steers ``robot0_eef_pos`` (robosuite's grip site, between the
fingertips) towards the current waypoint with a speed-limited proportional step (an OSC_POSE
position input of 1 asks for 5 cm), turns the hand towards "pointing down at palm yaw psi"
(the rotation error as an axis-angle, an input of 1 asks for 0.5 rad) and opens or closes the
gripper. A phase ends when its waypoint is reached, or after a fixed number of steps for the
gripper. Waypoints come from the observation, so an object that moves is re-targeted; the
fixed goals (Can's target bin, Square's peg) are read from the robosuite env once per episode.

psi is the rotation of the hand about the world z axis from its start pose; at psi = 0 the
fingers close along world y, at psi they close along (-sin psi, cos psi).

Modes, drawn at ``reset(seed)`` from the expert's own generator (not the env's):

* ``grasp`` - Lift: which of the cube's two pinch yaws (across either pair of faces); Can: one
  of two palm yaws 90 degrees apart (the can is round, so both hold it).
* ``side`` (Lift, Can) - the hand comes down 5 cm (Can: 4 cm) to one side of the object or the
  other, along the palm (across the fingers' opening direction), and slides in: the open
  fingers straddle it. Can takes the other side where the chosen one is against a bin wall.
* ``turn`` (Square) - the nut is turned onto the square peg's axes by the nearest quarter turn
  clockwise or counter-clockwise (both fit the peg); ``approach`` (Square) - straight down
  onto the handle, or down beside its free end and in along it.
"""

from __future__ import annotations

import itertools

import mujoco
import numpy as np

POS_SCALE = 0.05  # metres per unit of OSC_POSE position input (robomimic's output_max)
ROT_SCALE = 0.5  # radians per unit of rotation input
OPEN, CLOSE = -1.0, 1.0
_EXPERT_STREAM = 0x5B0C5


def _wxyz(quat_xyzw: np.ndarray) -> np.ndarray:
    x, y, z, w = np.asarray(quat_xyzw, dtype=np.float64)
    return np.array([w, x, y, z])


def quat_yaw(quat_xyzw: np.ndarray) -> float:
    """Rotation about world z of a body that stays upright (robosuite's x y z w order)."""
    w, x, y, z = _wxyz(quat_xyzw)
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


def fold(angle: float, period: float) -> float:
    """``angle`` shifted by a multiple of ``period`` into [-period / 2, period / 2)."""
    return float((angle + period / 2) % period - period / 2)


def hand_quat(psi: float) -> np.ndarray:
    """The hand pointing straight down, turned by ``psi`` about world z (w x y z)."""
    down = np.array([0.0, 1.0, 0.0, 0.0])  # half a turn about x: the start pose without its tilt
    turn = np.array([np.cos(psi / 2), 0.0, 0.0, np.sin(psi / 2)])
    out = np.zeros(4)
    mujoco.mju_mulQuat(out, turn, down)
    return out


def rotation_error(quat_xyzw: np.ndarray, psi: float) -> np.ndarray:
    """Axis-angle (world frame) that turns the hand from its pose to ``hand_quat(psi)``."""
    cur_inv, err, vel = np.zeros(4), np.zeros(4), np.zeros(3)
    mujoco.mju_negQuat(cur_inv, _wxyz(quat_xyzw))
    mujoco.mju_mulQuat(err, hand_quat(psi), cur_inv)
    if err[0] < 0:  # the short way round
        err = -err
    mujoco.mju_quat2Vel(vel, err, 1.0)
    return vel


class _OSCExpert:
    """Waypoint state machine; subclasses list the waypoints of each phase in ``plan``."""

    MODE_OPTIONS: dict[str, tuple[str, ...]] = {}
    SIDE_OFFSET = 0.05
    APPROACH_HEIGHT = 0.10
    CLOSE_STEPS = 8
    OPEN_STEPS = 6

    def __init__(self, env) -> None:
        self.env = env.unwrapped
        self.rng = np.random.default_rng()
        self.choice: dict[str, str] = {}
        self.phase, self.timer = 0, 0
        self._started = False

    @classmethod
    def modes(cls) -> tuple[str, ...]:
        names = list(cls.MODE_OPTIONS)
        return tuple(
            "/".join(f"{n}={v}" for n, v in zip(names, combo, strict=True))
            for combo in itertools.product(*cls.MODE_OPTIONS.values())
        )

    @property
    def MODES(self) -> tuple[str, ...]:  # noqa: N802 - the collect protocol's name
        return self.modes()

    @property
    def mode(self) -> str:
        return "/".join(f"{n}={self.choice.get(n, '?')}" for n in self.MODE_OPTIONS)

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(None if seed is None else [seed, _EXPERT_STREAM])
        self.choice = {n: str(self.rng.choice(opts)) for n, opts in self.MODE_OPTIONS.items()}
        self.phase, self.timer = 0, 0
        self.psi: float | None = None
        self.hold: np.ndarray | None = None
        self._started = False

    def episode_started(self) -> None:
        """Per-episode set-up of a subclass (fixed goals read from the env), called at the
        episode's first action, once the env has been reset."""

    @property
    def rs(self):
        return self.env.rs

    def _side(self, psi: float) -> np.ndarray:
        sign = 1.0 if self.choice.get("side") == "left" else -1.0
        # along the palm, across the fingers' opening: the open fingers straddle the object
        return sign * self.SIDE_OFFSET * np.array([np.cos(psi), np.sin(psi), 0.0])

    @staticmethod
    def _act(obs, target, psi: float, grip: float, speed: float = 1.0) -> np.ndarray:
        # each axis clipped on its own: while the hand descends at its speed limit, a sideways
        # error is still corrected at full gain (a nut over a peg must stay centred)
        move = np.clip((np.asarray(target) - obs["robot0_eef_pos"]) / POS_SCALE, -speed, speed)
        turn = np.clip(rotation_error(obs["robot0_eef_quat"], psi) / ROT_SCALE, -1.0, 1.0)
        return np.array([*move, *turn, grip], dtype=np.float32)

    @staticmethod
    def _reached(obs, target, psi: float, tol: float) -> bool:
        close = np.linalg.norm(np.asarray(target) - obs["robot0_eef_pos"]) < tol
        return bool(close and np.linalg.norm(rotation_error(obs["robot0_eef_quat"], psi)) < 0.1)

    def _waypoints(self, obs) -> list[tuple[str, np.ndarray | None, float, float, float]]:
        """[(kind, target, tolerance, grip, speed)]; kind "move" (until reached), "close" or
        "open" (hold the pose for a few steps while the gripper acts)."""
        raise NotImplementedError

    def __call__(self, obs) -> np.ndarray:
        if not self._started:
            self.episode_started()
            self._started = True
        steps = self._waypoints(obs)
        if self.phase >= len(steps):
            self.phase = len(steps) - 1
        kind, target, tol, grip, speed = steps[self.phase]
        if kind == "move":
            if self._reached(obs, target, self.psi, tol) and self.phase < len(steps) - 1:
                self.phase += 1
            return self._act(obs, target, self.psi, grip, speed)
        # close / open: hold still where the gripper started acting
        if self.hold is None:
            self.hold = obs["robot0_eef_pos"].astype(np.float64).copy()
        self.timer += 1
        action = self._act(obs, self.hold, self.psi, grip)
        if self.timer >= (self.CLOSE_STEPS if kind == "close" else self.OPEN_STEPS):
            self.phase, self.timer, self.hold = self.phase + 1, 0, None
        return action


class LiftExpert(_OSCExpert):
    """Pinch the cube across one pair of faces and lift it 15 cm (the task counts 4 cm)."""

    MODE_OPTIONS = {"grasp": ("near", "far"), "side": ("left", "right")}

    def _waypoints(self, obs):
        pos, quat = obs["object"][:3].astype(np.float64), obs["object"][3:7]
        if self.psi is None:
            near = fold(quat_yaw(quat), np.pi / 2)  # in [-pi/4, pi/4)
            far = near - np.pi / 2 if near >= 0 else near + np.pi / 2  # in [-pi/2, pi/2)
            self.psi = near if self.choice["grasp"] == "near" else far
        side = self._side(self.psi)
        above = pos + [0, 0, self.APPROACH_HEIGHT]
        return [
            ("move", above + side, 0.02, OPEN, 1.0),
            ("move", pos + side + [0, 0, 0.02], 0.01, OPEN, 0.6),
            ("move", pos, 0.008, OPEN, 0.4),
            ("close", None, 0.0, CLOSE, 0.0),
            ("move", pos + [0, 0, 0.15], 0.01, CLOSE, 0.6),
        ]


def make_lift_expert(env) -> LiftExpert:
    return LiftExpert(env)


class CanExpert(_OSCExpert):
    """Pick the can from the left bin, carry it over its target square in the right bin, set it
    down, let go and rise (the task counts the can only once the hand is away from it)."""

    MODE_OPTIONS = {"grasp": ("minus45", "plus45"), "side": ("left", "right")}
    CARRY_Z = 1.02  # hand height while carrying: the can's bottom clears the bin walls
    RELEASE_DROP = 0.03  # let go with the can this far above where it would rest
    GRASP_ABOVE_CENTRE = 0.02  # pinch the can's upper half: the fingertips stay off the floor
    SIDE_OFFSET = 0.04  # the can stands in a bin: a shorter slide keeps the hand off its walls
    WALL_CLEARANCE = 0.07  # hand's half-width beside the slide point, with a margin

    def episode_started(self) -> None:
        # The can's quarter of the target bin is walled in (x 0.10-0.30, y 0.28-0.53 in
        # robosuite's default layout). Its centre (robosuite's target_bin_placements) is at the
        # edge of the Panda's reach from its base at (-0.5, -0.1): the can goes down in the
        # quarter's corner nearest the robot, a can radius and a margin inside its walls.
        rs = self.rs
        centre = np.array(rs.target_bin_placements[rs.object_id][:2], dtype=np.float64)
        half = np.array(rs.bin_size[:2]) / 4
        inset = 0.05  # can radius 2.5 cm + wall 1 cm + 1.5 cm margin
        self.goal = centre - half + inset
        self.bin_centre = np.array(rs.bin1_pos[:2], dtype=np.float64)
        self.bin_half = np.array(rs.bin_size[:2]) / 2

    def _waypoints(self, obs):
        pos = obs["object"][7:10].astype(np.float64)
        if self.psi is None:
            self.psi = np.pi / 4 if self.choice["grasp"] == "plus45" else -np.pi / 4
            self.rest_z = pos[2]  # the can's centre height standing on a bin floor
            # a can near a wall of its bin: the hand comes down on the side away from it
            slide = pos[:2] + self._side(self.psi)[:2]
            if np.any(np.abs(slide - self.bin_centre) > self.bin_half - self.WALL_CLEARANCE):
                self.choice["side"] = "right" if self.choice["side"] == "left" else "left"
        side = self._side(self.psi)
        grasp = pos + [0, 0, self.GRASP_ABOVE_CENTRE]
        goal_xy = self.goal
        over_goal = np.array([*goal_xy, self.CARRY_Z])
        release = np.array([*goal_xy, self.rest_z + self.RELEASE_DROP])
        return [
            ("move", grasp + side + [0, 0, self.APPROACH_HEIGHT], 0.02, OPEN, 1.0),
            ("move", grasp + side, 0.01, OPEN, 0.6),
            ("move", grasp, 0.008, OPEN, 0.4),
            ("close", None, 0.0, CLOSE, 0.0),
            ("move", np.array([*pos[:2], self.CARRY_Z]), 0.02, CLOSE, 0.8),
            ("move", over_goal, 0.02, CLOSE, 1.0),
            ("move", release, 0.01, CLOSE, 0.5),
            ("open", None, 0.0, OPEN, 0.0),
            ("move", release + [0, 0, 0.15], 0.01, OPEN, 0.6),
        ]


def make_can_expert(env) -> CanExpert:
    return CanExpert(env)


class SquareExpert(_OSCExpert):
    """Pinch the square nut's handle, carry the nut over the square peg turned by a quarter
    turn onto the peg's axes, lower it down the peg, let go and rise."""

    MODE_OPTIONS = {"turn": ("ccw", "cw"), "approach": ("above", "slide")}
    HANDLE = 0.054  # handle centre from the nut's centre along the nut's x axis (nut MJCF)
    CARRY_Z = 1.03  # nut centre height while carrying: above the peg's top (0.95)
    RELEASE_Z = 0.87  # let go once the nut's centre is this low (the task counts < 0.87)
    # The wrist's last joint starts at pi/4 of its +-2.9 rad: about 2.1 rad of hand turn one
    # way; a quarter turn of the nut goes the other way when it would end beyond this.
    PSI_LIMIT = 1.7

    def episode_started(self) -> None:
        rs = self.rs
        peg = rs.sim.data.body_xpos[rs.peg1_body_id]
        self.peg = np.array(peg[:2], dtype=np.float64)
        self.turned: float | None = None

    def _waypoints(self, obs):
        pos, quat = obs["object"][7:10].astype(np.float64), obs["object"][10:14]
        yaw = quat_yaw(quat)
        axis = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        handle = pos + self.HANDLE * axis
        # 5 mm above the handle's mid-plane: fingertips that drag on the table stall the slide
        grasp = handle + [0, 0, 0.005]
        if self.psi is None:
            # fingers across the handle (along the nut's y axis): psi = nut yaw, mod pi
            self.psi = fold(yaw, np.pi)
            self.grasp_psi = self.psi
        # "slide": down beside the handle's free end, then in along it (the fingers straddle
        # it); the other side of the handle is the nut's ring
        side = 0.05 * axis if self.choice["approach"] == "slide" else np.zeros(3)
        if self.phase >= 5 and self.turned is None:
            # a quarter turn of the nut onto the peg's axes, in the mode's direction (the other
            # way when the wrist would leave its range)
            ccw = fold(-yaw, np.pi / 2) % (np.pi / 2)  # in [0, pi/2)
            turns = (
                (ccw, ccw - np.pi / 2) if self.choice["turn"] == "ccw" else (ccw - np.pi / 2, ccw)
            )
            # a handle pointing away from the robot (+x) puts the hand beyond the peg, at the
            # edge of the arm's reach: turn the other way then
            turn = next(
                (t for t in turns if abs(self.psi + t) <= self.PSI_LIMIT and np.cos(yaw + t) < 0.5),
                turns[0] if np.cos(yaw + turns[0]) < 0.5 else turns[1],
            )
            self.turned = turn
            self.choice["turn"] = "ccw" if turn >= 0 else "cw"  # the mode as executed
            self.psi = self.grasp_psi + turn
        # the hand's target moves the nut's centre (not the hand) onto the peg
        hand_from_nut = obs["robot0_eef_pos"].astype(np.float64) - pos
        over_peg = np.array([*self.peg, self.CARRY_Z]) + hand_from_nut
        down_peg = np.array([*self.peg, self.RELEASE_Z - 0.01]) + hand_from_nut
        return [
            ("move", grasp + side + [0, 0, self.APPROACH_HEIGHT], 0.02, OPEN, 1.0),
            ("move", grasp + side, 0.01, OPEN, 0.6),
            ("move", grasp, 0.006, OPEN, 0.4),
            ("close", None, 0.0, CLOSE, 0.0),
            ("move", handle + [0, 0, self.CARRY_Z - pos[2]], 0.02, CLOSE, 0.8),
            ("move", over_peg, 0.01, CLOSE, 0.6),
            ("move", over_peg, 0.003, CLOSE, 0.2),  # settle the swing, centre on the peg
            ("move", down_peg, 0.008, CLOSE, 0.3),
            ("open", None, 0.0, OPEN, 0.0),
            ("move", obs["robot0_eef_pos"] + [0, 0, 0.1], 0.01, OPEN, 0.6),
        ]


def make_square_expert(env) -> SquareExpert:
    return SquareExpert(env)
