"""Tasks as data: a TaskSpec says how to make an environment and how to read it; a registry.

A task is everything the scripts need to know about an environment, and nothing they have to
guess: the gymnasium id and its keyword arguments (and the modules to import first so that the
id is registered), the episode length and control rate, the observation keys a policy uses by
default, the ``info`` key that reports success, the scripted expert that writes
demonstrations, and how to render videos. Built-in tasks register here (``register_task``);
any other gymnasium environment becomes a task on the fly (``task_from_env_id``, the
``--env-id`` options of the scripts). A saved policy stores its ``TaskSpec.to_dict()``, so
evaluation rebuilds the same environment from the checkpoint alone.

Observations are handed to policies, experts and datasets as flat dicts of arrays: a Box
observation becomes the key ``state``; a Dict observation gives one key per leaf, nested names
joined with ``_`` (``{"robot": {"qpos": ...}}`` -> ``robot_qpos``). Those names are the
dataset keys. ``flatten_obs`` always copies, because environments may hand out views of their
internal buffers that the next step overwrites.

No torch here.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

DEFAULT_TASK = "pusht"  # what scripts.collect demonstrates when no task is named
DEFAULT_SUCCESS_KEY = "is_success"
FALLBACK_SUCCESS_KEY = "success"


# Saved specs carry this marker; one without it predates the dplite namespace.
_LAYOUT_KEY, _LAYOUT = "module_layout", "dplite"


def _new_module_path(ref: str) -> str:
    """``envs...`` (the project's modules before the dplite namespace) -> ``dplite.envs...``."""
    return "dplite." + ref if ref == "envs" or ref.startswith(("envs.", "envs:")) else ref


class UnknownTaskError(ValueError):
    """A task name or gymnasium id that nothing registered."""


@dataclass(frozen=True)
class TaskSpec:
    """How to make, observe, judge and demonstrate one environment (JSON-serialisable)."""

    name: str
    """Short name used on the command line (``--task NAME``) and in results."""
    env_id: str
    """gymnasium id passed to ``gymnasium.make``."""
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments for ``gymnasium.make``."""
    env_imports: tuple[str, ...] = ()
    """Modules imported before ``gymnasium.make`` (they register the id, or patch something)."""
    max_episode_steps: int | None = None
    """Episode length (the TimeLimit); None keeps the id's registered limit."""
    control_hz: float = 10.0
    """Policy steps per second of simulated time; videos play at this rate."""
    obs_keys: tuple[str, ...] | None = None
    """Observation keys a policy uses by default; None: every key the environment emits."""
    key_kwargs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Extra ``gymnasium.make`` kwargs an observation key needs to be emitted at all
    (e.g. ``{"img": {"obs_mode": "image"}}``); applied, in this mapping's order, for the keys a
    policy or a dataset asks for."""
    image_keys: tuple[str, ...] = ()
    """Camera keys the task can emit (what ``collect --images`` records)."""
    success_key: str = DEFAULT_SUCCESS_KEY
    """``info`` key that is true once the task is solved (``success`` is tried when the default
    ``is_success`` is absent)."""
    outcome_key: str | None = None
    """``info`` key naming how an episode was solved when a task can be solved more than one way
    (e.g. Panda stack's ``stack_order``); evaluations record it per episode and count successes
    by it (envs/rollout.py, ``success_by_outcome``)."""
    expert: str | None = None
    """``module:callable`` building the scripted expert from the env (see scripts.collect)."""
    action_anchor: str | None = None
    """Default observation key actions are made relative to (None: absolute actions)."""
    video_size: int | None = 256
    """Side of rendered video frames, passed through the ``video_size_kwargs`` (None: the
    environment's own size)."""
    video_size_kwargs: tuple[str, ...] = ()
    """Names of the env kwargs that take ``video_size`` (e.g. ``("width", "height")``)."""

    def __post_init__(self) -> None:
        if not self.name or not self.env_id:
            raise ValueError(
                f"TaskSpec needs a name and an env_id, got {self.name!r}, {self.env_id!r}"
            )
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ValueError(
                f"task {self.name!r}: max_episode_steps={self.max_episode_steps}, expected >= 1"
            )
        if self.control_hz <= 0:
            raise ValueError(f"task {self.name!r}: control_hz={self.control_hz}, expected > 0")
        if self.expert is not None and ":" not in self.expert:
            raise ValueError(f"task {self.name!r}: expert {self.expert!r} is not 'module:callable'")
        # tuples and plain dicts only, so that specs compare equal after a JSON round trip
        object.__setattr__(self, "env_imports", tuple(self.env_imports))
        object.__setattr__(self, "image_keys", tuple(self.image_keys))
        object.__setattr__(self, "video_size_kwargs", tuple(self.video_size_kwargs))
        if self.obs_keys is not None:
            object.__setattr__(self, "obs_keys", tuple(self.obs_keys))
        object.__setattr__(self, "env_kwargs", dict(self.env_kwargs))
        object.__setattr__(self, "key_kwargs", {k: dict(v) for k, v in self.key_kwargs.items()})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d[_LAYOUT_KEY] = _LAYOUT
        json.dumps(d)  # fail here, not when a checkpoint is written, if a kwarg is not JSON
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaskSpec:
        """The spec of a saved dataset or policy. One written before the packages moved under
        ``dplite`` (no layout marker) names the project's modules by their old top-level paths
        (``envs``, ``envs.experts:...``); those are mapped to ``dplite.envs...``."""
        d = dict(d)
        legacy = d.pop(_LAYOUT_KEY, None) is None
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TaskSpec fields {sorted(unknown)}")
        if legacy:
            d["env_imports"] = [_new_module_path(m) for m in d.get("env_imports", ())]
            if d.get("expert"):
                d["expert"] = _new_module_path(d["expert"])
        return cls(**d)

    def replace(self, **changes: Any) -> TaskSpec:
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------------- registry

_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec, *, overwrite: bool = False) -> TaskSpec:
    """Add a task to the registry (``overwrite=True`` to replace one of the same name)."""
    if spec.name in _TASKS and not overwrite and _TASKS[spec.name] != spec:
        raise ValueError(f"task {spec.name!r} is already registered; pass overwrite=True")
    _TASKS[spec.name] = spec
    return spec


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str) -> TaskSpec:
    if name not in _TASKS:
        raise UnknownTaskError(
            f"unknown task {name!r}; registered tasks: {', '.join(list_tasks())}. For any other "
            "gymnasium environment pass --env-id ID (with --env-import MODULE for the module "
            "that registers it)"
        )
    return _TASKS[name]


def output_name(spec: TaskSpec) -> str:
    """The task's name as a file name (gymnasium ids may hold '/')."""
    return spec.name.replace("/", "_").replace(":", "_")


def import_modules(modules: Iterable[str]) -> None:
    """Import each module (for its side effects: gymnasium registrations, patches)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"could not import env module {module!r} (--env-import): {e}") from e


def task_from_env_id(
    env_id: str,
    env_imports: Iterable[str] = (),
    env_kwargs: Mapping[str, Any] | None = None,
    success_key: str = DEFAULT_SUCCESS_KEY,
    max_episode_steps: int | None = None,
) -> TaskSpec:
    """A task for any registered gymnasium id: all observation keys, absolute actions."""
    env_imports = tuple(env_imports)
    import_modules(env_imports)
    if env_id not in gym.registry:
        raise UnknownTaskError(
            f"unknown gymnasium id {env_id!r} (after importing {list(env_imports) or 'nothing'}); "
            f"registered tasks: {', '.join(list_tasks())}. Pass --env-import MODULE for the "
            "module that registers it"
        )
    fps = (gym.spec(env_id).kwargs or {}).get("render_fps") or 10.0
    return TaskSpec(
        name=env_id,
        env_id=env_id,
        env_kwargs=dict(env_kwargs or {}),
        env_imports=env_imports,
        max_episode_steps=max_episode_steps,
        control_hz=float(fps),
        success_key=success_key,
        video_size=None,
    )


# ---------------------------------------------------------------------------------- making


def make_env(spec: TaskSpec, obs_keys: Iterable[str] = (), render: bool = False) -> gym.Env:
    """Build the task's environment, asking it to emit ``obs_keys`` (see ``key_kwargs``);
    ``render=True`` adds ``render_mode="rgb_array"`` at the task's video size, otherwise the
    env is made without a render mode."""
    import_modules(spec.env_imports)
    if spec.env_id not in gym.registry:
        raise UnknownTaskError(
            f"task {spec.name!r}: gymnasium id {spec.env_id!r} is not registered (imports: "
            f"{list(spec.env_imports)}); pass --env-import MODULE for the module that registers it"
        )
    kwargs = dict(spec.env_kwargs)
    wanted = set(obs_keys)
    for key, extra in spec.key_kwargs.items():  # in key_kwargs order: later entries win
        if key in wanted:
            kwargs.update(extra)
    if render:
        kwargs["render_mode"] = "rgb_array"
        if spec.video_size is not None:
            kwargs.update({name: spec.video_size for name in spec.video_size_kwargs})
    elif "render_mode" in kwargs or gym.spec(spec.env_id).kwargs.get("render_mode") is not None:
        # rendering is off unless asked for, whatever the id registers by default (gym-pusht's
        # PushT-v0 registers rgb_array, and some envs then draw a frame at every step)
        kwargs["render_mode"] = None
    try:
        return gym.make(spec.env_id, max_episode_steps=spec.max_episode_steps, **kwargs)
    except TypeError as e:
        raise ValueError(
            f"task {spec.name!r}: gymnasium.make({spec.env_id!r}, **{kwargs}) failed: {e}"
        ) from e


def task_from_metadata(meta: Mapping[str, Any]) -> TaskSpec:
    """The environment recorded in a saved policy's or dataset's metadata: the full spec under
    "env", else (older files) the registered task named under "task"."""
    if "env" in meta:
        return TaskSpec.from_dict(meta["env"])
    return get_task(meta.get("task", "pusht"))


def check_env_fits(
    spec: TaskSpec, obs_shapes: Mapping[str, tuple[int, ...]], action_dim: int, what: str
) -> int | None:
    """Raise ValueError unless the env emits every key of ``what`` (a policy or a dataset) with
    its per-step shape, and takes actions of its size; returns the env's episode limit."""
    env = make_env(spec, obs_keys=obs_shapes)
    try:
        emitted = {k: shape for k, (shape, _) in flat_obs_shapes(env.observation_space).items()}
        action_shape = tuple(env.action_space.shape or ())
        limit = episode_limit(env)
    finally:
        env.close()
    missing = sorted(set(obs_shapes) - set(emitted))
    if missing:
        raise ValueError(
            f"{what} uses observation keys {sorted(obs_shapes)} but environment "
            f"{spec.env_id!r} (task {spec.name!r}) emits {sorted(emitted)}: missing {missing}"
        )
    for key, shape in obs_shapes.items():
        if tuple(emitted[key]) != tuple(shape):
            raise ValueError(
                f"observation {key!r}: {what} has per-step shape {tuple(shape)}, "
                f"environment {spec.env_id!r} emits {tuple(emitted[key])}"
            )
    if action_shape != (action_dim,):
        raise ValueError(
            f"{what} has actions of shape ({action_dim},) but environment "
            f"{spec.env_id!r} takes {action_shape}"
        )
    return limit


def episode_limit(env: gym.Env) -> int | None:
    """The TimeLimit of a made env (None when it has none)."""
    return env.spec.max_episode_steps if env.spec is not None else None


# ---------------------------------------------------------------------------------- observations


def flatten_obs(obs: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """A (nested) dict or array observation as {key: array copy}; a bare array is ``state``."""
    if isinstance(obs, Mapping):
        flat: dict[str, np.ndarray] = {}
        for k, v in obs.items():
            flat.update(
                flatten_obs(v, f"{prefix}{k}_" if isinstance(v, Mapping) else f"{prefix}{k}")
            )
        return flat
    return {prefix or "state": np.array(obs, copy=True)}


def flat_obs_shapes(
    space: spaces.Space, prefix: str = ""
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of the observations ``flatten_obs`` makes from this space."""
    if isinstance(space, spaces.Dict):
        out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        for k, sub in space.spaces.items():
            out.update(
                flat_obs_shapes(
                    sub, f"{prefix}{k}_" if isinstance(sub, spaces.Dict) else f"{prefix}{k}"
                )
            )
        return out
    if isinstance(space, spaces.Box):
        return {prefix or "state": (tuple(space.shape), np.dtype(space.dtype))}
    raise ValueError(
        f"observation {prefix or 'space'} is a {type(space).__name__}; only Box and (nested) "
        "Dict observation spaces are supported"
    )


def non_finite_keys(obs: Mapping[str, np.ndarray]) -> list[str]:
    """Keys of float observations holding NaN or inf."""
    return [k for k, v in obs.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]


def is_success(info: Mapping[str, Any], key: str = DEFAULT_SUCCESS_KEY) -> bool:
    """``info[key]``; for the default key, ``info["success"]`` when ``is_success`` is absent."""
    if key in info:
        return bool(info[key])
    if key == DEFAULT_SUCCESS_KEY:
        return bool(info.get(FALLBACK_SUCCESS_KEY, False))
    return False


def load_callable(ref: str, what: str = "expert") -> Any:
    """``module:attr`` -> the attribute (imports the module)."""
    module, _, attr = ref.partition(":")
    if not module or not attr:
        raise ValueError(f"{what} {ref!r}: expected MODULE:CALLABLE")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"{what} {ref!r}: cannot import {module!r}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {ref!r}: module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{what} {ref!r} is not callable")
    return obj


# ---------------------------------------------------------------------------------- built-ins

# PushT (envs/pusht.py). gymnasium's TimeLimit ends episodes after 300 steps (10 Hz); the
# default observation set is keypoints + pusher position, with actions relative to the pusher.
_PUSHT = dict(
    env_id="PushT-v0",
    env_imports=("dplite.envs",),
    max_episode_steps=300,
    control_hz=10.0,
    key_kwargs={"keypoint": {"obs_mode": "keypoint"}, "img": {"obs_mode": "image"}},
    image_keys=("img",),
    expert="dplite.envs.experts:make_pusht_expert",
    action_anchor="agent_pos",
    video_size=256,
    video_size_kwargs=("render_size",),
)
register_task(
    TaskSpec(
        name="pusht",
        env_kwargs={"obs_mode": "keypoint"},
        obs_keys=("keypoint", "agent_pos"),
        **_PUSHT,
    )
)
register_task(
    TaskSpec(
        name="pusht_state",
        env_kwargs={"obs_mode": "state"},
        obs_keys=("state", "agent_pos"),
        **_PUSHT,
    )
)

# gym-pusht (envs/gym_pusht.py; LeRobot's pymunk PushT, the field's benchmark; optional extra
# gym-pusht, imported only when the env is made): the observation dict of PushT above, so the
# same expert (at gym-pusht's pace: envs.experts.GYM_PUSHT_EXPERT_KWARGS) and the same default
# inputs (keypoints + pusher position, never gym-pusht's wrapped angle) and actions relative to
# the pusher; 300 steps at 10 Hz as gym-pusht's.
_GYM_PUSHT = dict(
    env_id="GymPushT-v0",
    env_imports=("dplite.envs.gym_pusht",),
    max_episode_steps=300,
    control_hz=10.0,
    key_kwargs={"keypoint": {"obs_mode": "keypoint"}, "img": {"obs_mode": "image"}},
    image_keys=("img",),
    expert="dplite.envs.experts:make_gym_pusht_expert",
    action_anchor="agent_pos",
    video_size=256,
    video_size_kwargs=("render_size",),
)
register_task(
    TaskSpec(
        name="gym-pusht",
        env_kwargs={"obs_mode": "keypoint"},
        obs_keys=("keypoint", "agent_pos"),
        **_GYM_PUSHT,
    )
)
register_task(
    TaskSpec(
        name="gym-pusht-image",
        env_kwargs={"obs_mode": "image"},
        obs_keys=("img", "agent_pos"),
        **_GYM_PUSHT,
    )
)

# Franka Panda (envs/panda): 10 Hz Cartesian deltas + gripper, absolute-free (no anchor).
# State: hand pose and opening + cube poses; images: front + wrist cameras + proprioception.
_PANDA = dict(
    env_imports=("dplite.envs",),
    control_hz=10.0,
    key_kwargs={"front_img": {"obs_mode": "image"}, "wrist_img": {"obs_mode": "image"}},
    image_keys=("front_img", "wrist_img"),
    video_size=256,
    video_size_kwargs=("render_size",),
)
_PANDA_PROPRIO = ("eef_pos", "eef_yaw", "gripper")
register_task(
    TaskSpec(
        name="panda_lift",
        env_id="PandaLift-v0",
        max_episode_steps=80,
        obs_keys=(*_PANDA_PROPRIO, "cube_pos", "cube_quat", "eef_to_cube", "eef_to_cube_yaw"),
        expert="dplite.envs.panda.experts:make_lift_expert",
        **_PANDA,
    )
)
register_task(
    TaskSpec(
        name="panda_stack",
        env_id="PandaStack-v0",
        max_episode_steps=150,
        obs_keys=(
            *_PANDA_PROPRIO,
            *("cube_a_pos", "cube_a_quat", "eef_to_cube_a", "eef_to_cube_a_yaw"),
            *("cube_b_pos", "cube_b_quat", "eef_to_cube_b", "eef_to_cube_b_yaw"),
            "cube_a_to_cube_b",
        ),
        expert="dplite.envs.panda.experts:make_stack_expert",
        outcome_key="stack_order",
        **_PANDA,
    )
)
# The same env with demonstrations of both stacking orders, drawn half and half per seed (success
# either way; info["stack_order"] says which): the multimodal case the single-order task avoids.
register_task(
    dataclasses.replace(
        get_task("panda_stack"),
        name="panda_stack_bimodal",
        expert="dplite.envs.panda.experts:make_stack_bimodal_expert",
    )
)

# robosuite 1.5.2 (envs/robosuite_tasks.py; the optional extra "robosuite"): robomimic's Lift,
# Can and Square with the Panda, OSC_POSE deltas at 20 Hz, robomimic's low-dim keys and its
# 400-step rollout horizon. Nothing here imports robosuite: making the env does, and says which
# extra to install when it is missing. Cameras (84 px, as robomimic's image datasets):
# agentview + robot0_eye_in_hand.
_ROBOSUITE = dict(
    env_imports=("dplite.envs.robosuite_tasks",),
    max_episode_steps=400,
    control_hz=20.0,
    obs_keys=("object", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"),
    key_kwargs={
        "agentview_image": {"obs_mode": "image"},
        "robot0_eye_in_hand_image": {"obs_mode": "image"},
    },
    image_keys=("agentview_image", "robot0_eye_in_hand_image"),
    video_size=256,
    video_size_kwargs=("render_size",),
)
for _name, _id, _expert in (
    ("robosuite-lift", "RobosuiteLift-v0", "make_lift_expert"),
    ("robosuite-can", "RobosuiteCan-v0", "make_can_expert"),
    ("robosuite-square", "RobosuiteSquare-v0", "make_square_expert"),
):
    register_task(
        TaskSpec(
            name=_name,
            env_id=_id,
            expert=f"dplite.envs.robosuite_experts:{_expert}",
            **_ROBOSUITE,
        )
    )

__all__ = [
    "TaskSpec",
    "UnknownTaskError",
    "register_task",
    "get_task",
    "list_tasks",
    "task_from_env_id",
    "make_env",
    "flatten_obs",
    "flat_obs_shapes",
    "is_success",
    "load_callable",
]
