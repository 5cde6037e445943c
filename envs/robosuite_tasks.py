"""robosuite's robomimic tasks (Lift, PickPlaceCan, NutAssemblySquare) as gymnasium envs.

The Diffusion Policy paper (Chi et al. 2023, Tables 1-2) and robomimic (Mandlekar et al. 2021)
report on robosuite's manipulation tasks with the settings robomimic's datasets record in their
``env_args``: a Panda arm, the OSC_POSE controller with delta inputs (kp 150, damping ratio 1,
inputs in [-1, 1] scaled to 5 cm and 0.5 rad per step, position and orientation uncoupled), 20 Hz
control, sparse reward, no ``done`` from robosuite (``ignore_done``), object observations on.
This module wraps robosuite 1.5.2's environments, unchanged in their scenes, start
distributions and success checks, behind the project's observation dict:

* observation dict, float32, robomimic's low-dim key set: ``object`` (the task's
  ``object-state``: 10 numbers for Lift, 14 for Can and Square), ``robot0_eef_pos`` (3,),
  ``robot0_eef_quat`` (4, x y z w as robosuite), ``robot0_gripper_qpos`` (2,).
* action (7,) float32 in [-1, 1]: [dx, dy, dz, droll, dpitch, dyaw, gripper] for OSC_POSE
  (gripper +1 closes, -1 opens).
* ``info["is_success"]`` is the robosuite env's own ``_check_success()``; success ends the
  episode (``terminated``), as robomimic's rollouts do; the 400-step limit (robomimic's rollout
  horizon) is gymnasium's TimeLimit, registered with the id. Reward: robosuite's sparse reward.
* ``reset(seed)``: robosuite 1.5 draws every random start (Lift's cube size, object
  placement, the arm's joint noise) from one generator, ``env.rng``; it is re-seeded from
  ``self.np_random`` at each reset, before robosuite's hard reset rebuilds the model, so the same
  seed gives the same episode in any env instance, whatever ran before.
  The first observation is read twice: robosuite computes Can's and Square's object-to-hand
  entries before the hand pose they use is cached, so its own reset frame has zeros there.
* ``obs_mode="image"`` adds ``agentview_image`` and ``robot0_eye_in_hand_image``
  (``image_size`` px, uint8, top row first; robomimic's image datasets use 84).
  ``render_mode="rgb_array"`` renders robosuite's ``agentview`` camera at ``render_size`` for
  videos; with neither, no offscreen renderer is made.
* ``fast_render`` (on by default): the offscreen context renders without shadows, reflections
  or multisampling, into a buffer the size of the largest image asked for (robosuite's is
  640 x 480 with 4 samples). With software OpenGL (EGL on Mesa's llvmpipe) this takes a Lift
  step with both 84 px cameras from about 7 to about 25 steps/s; the images lose the table's
  reflection and the shadows, and edges are not antialiased. ``fast_render=False`` renders as
  robosuite does.

Compatibility with MuJoCo >= 3.10 (``patch_robosuite``). robosuite 1.5.2 was written against
MuJoCo 3.3 and breaks on newer bindings in two places: ``MjModel.get_joint_qpos_addr`` /
``get_joint_qvel_addr`` compare a numpy joint type with ``mujoco.mjtJoint`` members (no longer
equal, so every joint fails an assert), and the controllers read ``MjData.qM`` and call
``mj_fullM(m, dst, qM)``, where the bindings now have ``mj_fullM(m, d, dst)`` and no ``qM``.
``patch_robosuite`` replaces the two address functions with ones that compare plain ints and
hands the controller module a ``mujoco`` namespace whose ``mj_fullM`` takes the old arguments;
nothing else of robosuite or of mujoco changes, and the project keeps one MuJoCo for all its
tasks. The patches are applied when an environment is made, and are idempotent.

robosuite is optional (``EXTRA_HINT``: the ``robosuite`` extra, then robosuite itself with
``--no-deps``, as its metadata pins a numpy < 2 dependency the Panda tasks never load): this
module imports it when an environment is made, so the task registry and these ids exist
without it. No torch.
"""

from __future__ import annotations

import types
from typing import Any, Literal

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

EXTRA_HINT = (
    'pip install -e ".[robosuite]" && pip install --no-deps robosuite==1.5.2'
    "  (robosuite's own metadata pins mink==0.0.5, which would downgrade numpy below 2)"
)
MAX_EPISODE_STEPS = 400  # robomimic's rollout horizon for Lift, Can and Square
CONTROL_HZ = 20

# gymnasium id -> robosuite environment name
ROBOSUITE_ENVS = {
    "RobosuiteLift-v0": "Lift",
    "RobosuiteCan-v0": "PickPlaceCan",
    "RobosuiteSquare-v0": "NutAssemblySquare",
}
OBS_KEYS = ("object", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
IMAGE_KEYS = ("agentview_image", "robot0_eye_in_hand_image")

# robomimic's OSC_POSE settings (its datasets' env_args), the defaults of robosuite 1.5's Panda.
OSC_POSE = {
    "type": "OSC_POSE",
    "input_max": 1,
    "input_min": -1,
    "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5],
    "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5],
    "kp": 150,
    "damping_ratio": 1,
    "impedance_mode": "fixed",
    "kp_limits": [0, 300],
    "damping_ratio_limits": [0, 10],
    "position_limits": None,
    "orientation_limits": None,
    "uncouple_pos_ori": True,
    "input_type": "delta",
    "input_ref_frame": "base",
    "interpolation": None,
    "ramp_ratio": 0.2,
    "gripper": {"type": "GRIP"},
}


# ---------------------------------------------------------------------------------- compat


def joint_addr(model: Any, name: str, velocity: bool = False) -> int | tuple[int, int]:
    """A joint's qpos (or qvel) address as robosuite's bindings return it: an int for a hinge
    or slide joint, ``(start, end)`` for a free (7 / 6 numbers) or ball (4 / 3) joint."""
    jid = model.joint_name2id(name)
    jtype = int(model.jnt_type[jid])
    start = int(model.jnt_dofadr[jid] if velocity else model.jnt_qposadr[jid])
    if jtype == int(mujoco.mjtJoint.mjJNT_FREE):
        return (start, start + (6 if velocity else 7))
    if jtype == int(mujoco.mjtJoint.mjJNT_BALL):
        return (start, start + (3 if velocity else 4))
    if jtype not in (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE)):
        raise ValueError(f"joint {name!r} has unknown MuJoCo joint type {jtype}")
    return start


def _joint_qpos_addr(self, name):
    return joint_addr(self, name)


def _joint_qvel_addr(self, name):
    return joint_addr(self, name, velocity=True)


class _MujocoOldFullM(types.ModuleType):
    """``mujoco`` with the pre-3.x ``mj_fullM(m, dst, qM)`` signature, for robosuite's
    controllers; ``qM`` is the robosuite MjData wrapper's ``qM``, which (patched) is the raw
    ``mujoco.MjData`` itself, so the sparse inertia is read from the data as the new
    ``mj_fullM(m, d, dst)`` wants. Every other name is mujoco's own."""

    def __getattr__(self, name: str) -> Any:
        return getattr(mujoco, name)

    @staticmethod
    def mj_fullM(m: mujoco.MjModel, dst: np.ndarray, data: mujoco.MjData) -> None:  # noqa: N802
        mujoco.mj_fullM(m, data, dst)


def patch_robosuite() -> None:
    """Make robosuite 1.5.2 run on the installed MuJoCo (see the module docstring)."""
    from robosuite.controllers.parts import controller
    from robosuite.utils import binding_utils

    binding_utils.MjModel.get_joint_qpos_addr = _joint_qpos_addr
    binding_utils.MjModel.get_joint_qvel_addr = _joint_qvel_addr
    if not hasattr(mujoco.MjData, "qM"):  # MuJoCo >= 3.10: the dense-inertia API changed
        binding_utils.MjData.qM = property(lambda self: self._data)
        if not isinstance(controller.mujoco, _MujocoOldFullM):
            controller.mujoco = _MujocoOldFullM("mujoco")


def load_robosuite() -> types.ModuleType:
    """The robosuite package, patched; an ImportError naming the extra when it is missing."""
    try:
        import robosuite
    except ImportError as e:
        raise ImportError(
            f"the robosuite tasks ({', '.join(ROBOSUITE_ENVS)}) need the optional dependency "
            f"robosuite 1.5.2, which is not installed ({e}); install it with: {EXTRA_HINT}"
        ) from e
    patch_robosuite()
    return robosuite


# ---------------------------------------------------------------------------------- env


class RobosuiteEnv(gym.Env):
    """One of robosuite's robomimic tasks with a flat float32 observation dict (module doc)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}

    def __init__(
        self,
        env_name: Literal["Lift", "PickPlaceCan", "NutAssemblySquare"] = "Lift",
        obs_mode: Literal["state", "image"] = "state",
        render_mode: Literal["rgb_array"] | None = None,
        render_size: int = 256,
        image_size: int = 84,
        hard_reset: bool = True,
        fast_render: bool = True,
    ) -> None:
        if env_name not in ROBOSUITE_ENVS.values():
            raise ValueError(
                f"RobosuiteEnv: env_name {env_name!r}, expected one of "
                f"{sorted(ROBOSUITE_ENVS.values())}"
            )
        if obs_mode not in ("state", "image"):
            raise ValueError(f"RobosuiteEnv: obs_mode {obs_mode!r}, expected 'state' or 'image'")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(
                f"RobosuiteEnv: render_mode {render_mode!r}, expected None or 'rgb_array'"
            )
        if render_size < 1 or image_size < 1:
            raise ValueError(
                f"RobosuiteEnv: render_size={render_size}, image_size={image_size}, expected >= 1"
            )
        suite = load_robosuite()
        self.env_name, self.obs_mode = env_name, obs_mode
        self.render_mode, self.render_size, self.image_size = render_mode, render_size, image_size
        self.fast_render = fast_render
        self._fast_context: Any = None  # the render context fast_render last configured
        cameras = obs_mode == "image"
        # hard_reset (robosuite's default, robomimic's setting): every reset rebuilds the model
        # from XML, 0.2-0.3 s, drawing what the model itself randomises (Lift's cube size) from
        # the freshly seeded env.rng. With False the model built here is kept, and its cube
        # size comes from the unseeded draw at construction: episodes then differ between two
        # env instances given the same seed.
        self.rs = suite.make(
            env_name,
            robots="Panda",
            controller_configs={"type": "BASIC", "body_parts": {"right": dict(OSC_POSE)}},
            has_renderer=False,
            has_offscreen_renderer=cameras or render_mode is not None,
            use_camera_obs=cameras,
            use_object_obs=True,
            camera_names=list(c.removesuffix("_image") for c in IMAGE_KEYS),
            camera_heights=image_size,
            camera_widths=image_size,
            camera_depths=False,
            control_freq=CONTROL_HZ,
            ignore_done=True,
            reward_shaping=False,
            hard_reset=hard_reset,
        )
        obs = self.rs.reset()
        self._configure_renderer()
        leaves = {
            # generous but finite: positions within metres of the table, unit quaternions
            k: spaces.Box(-10.0, 10.0, self._obs_part(obs, k).shape, np.float32)
            for k in OBS_KEYS
        }
        if cameras:
            for k in IMAGE_KEYS:
                leaves[k] = spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = spaces.Dict(leaves)
        self.action_space = spaces.Box(-1.0, 1.0, (self.rs.action_dim,), np.float32)

    def _configure_renderer(self) -> None:
        """With ``fast_render``, cheap settings for the offscreen renderer (module doc).

        robosuite's hard reset rebuilds the model and, from its visual settings, the render
        context. The first time, the settings are set here and the context is rebuilt; from
        then on robosuite's ``_initialize_sim`` is wrapped to set them on each new model before
        its context is made, and only the scene's flags (per context) are set here.
        """
        ctx = getattr(self.rs.sim, "_render_context_offscreen", None)
        if not self.fast_render or ctx is None or ctx is self._fast_context:
            return
        if self._fast_context is None:  # the context robosuite made at construction
            self._cheap_visuals(self.rs.sim.model._model)
            ctx.gl_ctx.make_current()
            ctx.con.free()
            ctx._set_mujoco_context_and_buffers()  # a new MjrContext reads the settings
            initialize_sim = self.rs._initialize_sim

            def initialize_sim_cheaply(*args: Any, **kwargs: Any) -> None:
                initialize_sim(*args, **kwargs)
                self._cheap_visuals(self.rs.sim.model._model)

            self.rs._initialize_sim = initialize_sim_cheaply
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION):
            ctx.scn.flags[flag] = 0
        self._fast_context = ctx

    def _cheap_visuals(self, model: mujoco.MjModel) -> None:
        """No multisampling, a small shadow map (shadows are off) and a buffer just big enough."""
        model.vis.quality.offsamples = 0
        model.vis.quality.shadowsize = 256
        size = max(self.image_size, self.render_size if self.render_mode else 0)
        model.vis.global_.offwidth = model.vis.global_.offheight = size

    @staticmethod
    def _obs_part(obs: dict[str, np.ndarray], key: str) -> np.ndarray:
        return np.asarray(obs["object-state" if key == "object" else key])

    def _obs(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: self._obs_part(obs, k).astype(np.float32) for k in OBS_KEYS}
        if self.obs_mode == "image":
            for k in IMAGE_KEYS:  # robosuite renders OpenGL-style, bottom row first
                out[k] = np.ascontiguousarray(obs[k][::-1])
        return out

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # robosuite draws placements and joint noise from env.rng, a Generator its samplers
        # share by reference: set its state in place rather than replacing the object.
        child = np.random.default_rng(self.np_random.integers(2**63))
        self.rs.rng.bit_generator.state = child.bit_generator.state
        self.rs.reset()
        self._configure_renderer()
        # the second read (also the first frame rendered with the settings configured above): see the module docstring (zeros in the first frame's object-state)
        obs = self.rs._get_observations(force_update=True)
        return self._obs(obs), {"is_success": bool(self.rs._check_success())}

    def step(self, action: np.ndarray):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape or not np.all(np.isfinite(action)):
            raise ValueError(
                f"{self.env_name}.step: action {action!r} has shape {action.shape}, expected "
                f"{self.action_space.shape[0]} finite numbers in [-1, 1] "
                "[dx, dy, dz, droll, dpitch, dyaw, gripper]"
            )
        obs, reward, _, _ = self.rs.step(np.clip(action, -1.0, 1.0))
        success = bool(self.rs._check_success())
        return self._obs(obs), float(reward), success, False, {"is_success": success}

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            return None
        frame = self.rs.sim.render(
            width=self.render_size, height=self.render_size, camera_name="agentview"
        )
        return np.ascontiguousarray(frame[::-1])

    def close(self) -> None:
        if getattr(self, "rs", None) is not None:
            self.rs.close()
            self.rs = None


for _id, _name in ROBOSUITE_ENVS.items():
    if _id not in gym.registry:
        gym.register(
            id=_id,
            entry_point="dplite.envs.robosuite_tasks:RobosuiteEnv",
            max_episode_steps=MAX_EPISODE_STEPS,
            kwargs={"env_name": _name},
        )
