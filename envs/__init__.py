"""MuJoCo gymnasium environments, scripted experts and batched rollouts (no torch).

Importing ``envs`` registers the environments with gymnasium (``gymnasium.make("PushT-v0", ...)``;
keyword arguments pass through to ``envs.pusht.PushTEnv``; the tasks built on them live in
``envs.tasks``) and fixes the seed ranges that keep
demonstrations and evaluation apart: demonstrations use seeds ``DEMO_SEED_START, +1, ...``
(below ``EVAL_SEED_START``), evaluation uses ``EVAL_SEED_START + i``.
"""

import os
import sys
from collections.abc import Mapping


def headless_gl(platform: str, environ: Mapping[str, str]) -> str | None:
    """The MuJoCo GL backend to set, if any: EGL on a Linux machine with no display (CI,
    servers); nothing where MUJOCO_GL is set already, on a Linux desktop, or off Linux (macOS
    and Windows render with their own default backends)."""
    if "MUJOCO_GL" in environ or not platform.startswith("linux"):
        return None
    return None if environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY") else "egl"


if (_gl := headless_gl(sys.platform, os.environ)) is not None:
    os.environ["MUJOCO_GL"] = _gl

import gymnasium as gym  # noqa: E402

DEMO_SEED_START = 0
EVAL_SEED_START = 100_000

if "PushT-v0" not in gym.registry:
    # One time limit: gymnasium's TimeLimit (300 steps unless gym.make says otherwise); the env
    # made through the registry has no limit of its own.
    gym.register(
        id="PushT-v0",
        entry_point="dplite.envs.pusht:PushTEnv",
        max_episode_steps=300,
        kwargs={"max_episode_steps": None},
    )

# Franka Panda tasks (envs/panda): the TimeLimit is the task's (envs.tasks), as for PushT.
for _id, _cls, _steps in (
    ("PandaLift-v0", "PandaLiftEnv", 80),
    ("PandaStack-v0", "PandaStackEnv", 150),
):
    if _id not in gym.registry:
        gym.register(
            id=_id,
            entry_point=f"dplite.envs.panda.env:{_cls}",
            max_episode_steps=_steps,
            kwargs={"max_episode_steps": None},
        )
