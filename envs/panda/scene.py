"""The Panda scene, composed with ``mujoco.MjSpec`` from the gymnasium-robotics asset files.

The Franka Emika Panda's MJCF fragments and meshes ship inside the gymnasium-robotics wheel
(``envs/assets/kitchen_franka/franka_assets``). They are located with
``importlib.util.find_spec`` and read as bytes; the package is never imported (its own Franka
and Fetch environments do not load under mujoco 4) and nothing is copied into this repository.

On top of the arm the spec adds a table, cubes on free joints, a light, a front camera and a
wrist camera, a grasp site between the finger pads, and gravity compensation on every arm body.
Gravity compensation has to be set here, on the spec: ``model.body_gravcomp`` written after
compiling is ignored by the compiled model's cached flags and the arm sags by centimetres.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import mujoco
import numpy as np

ASSET_SUBDIR = Path("envs/assets/kitchen_franka/franka_assets")
ARM_PREFIX = "panda0_"
N_ARM_JOINTS = 7
TABLE_TOP = 0.0  # world z of the table surface; the robot base stands on it at the origin
CUBE_HALF = 0.025  # 5 cm cubes: the open gripper spans 8 cm
GRASP_SITE = "grasp"  # between the finger pads, halfway along them
FINGERTIP_DEPTH = 0.045  # how far the fingertips reach below the grasp site
FINGER_OPEN = 0.04  # per finger (slide joint range 0 .. 0.04 m)
ARM_DAMPING = 40.0  # joints 1-4, N m s / rad
FINGER_KP = 2000.0  # N / m

_WRAPPER = """<mujoco model="panda_table">
  <include file="assets.xml"/>
  <include file="actuator.xml"/>
  <worldbody><include file="chain.xml"/></worldbody>
</mujoco>"""


@dataclass(frozen=True)
class Cube:
    name: str
    rgba: tuple[float, float, float, float]
    half: float = CUBE_HALF
    mass: float = 0.1


def franka_asset_dir() -> Path:
    """The Panda asset folder inside the installed gymnasium-robotics wheel."""
    found = importlib.util.find_spec("gymnasium_robotics")
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError(
            "the Panda tasks read the Franka model files shipped in the gymnasium-robotics wheel; "
            "install the project's dependencies (pip install -e ., which brings gymnasium-robotics>=1.4,<1.5)"
        )
    folder = Path(next(iter(found.submodule_search_locations))) / ASSET_SUBDIR
    if not (folder / "chain.xml").is_file():
        raise FileNotFoundError(
            f"no Franka chain.xml under {folder}: unexpected gymnasium-robotics"
        )
    return folder


@cache
def _asset_files() -> tuple[dict[str, bytes], dict[str, bytes]]:
    folder = franka_asset_dir()
    include = {
        name: (folder / name).read_bytes() for name in ("assets.xml", "chain.xml", "actuator.xml")
    }
    # assets.xml sets meshdir="franka_assets/meshes"; the virtual files are keyed accordingly.
    meshes = {
        f"franka_assets/meshes/{path.relative_to(folder / 'meshes').as_posix()}": path.read_bytes()
        for path in sorted((folder / "meshes").rglob("*.stl"))
    }
    return include, meshes


def build_spec(cubes: Sequence[Cube], timestep: float = 0.005) -> mujoco.MjSpec:
    """Arm + table + ``cubes`` (free joints named ``<cube>_joint``) + cameras ``front`` and
    ``wrist``."""
    include, meshes = _asset_files()
    spec = mujoco.MjSpec.from_string(_WRAPPER, include=include, assets=meshes)
    spec.option.timestep = timestep
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.visual.global_.offwidth = max(spec.visual.global_.offwidth, 640)
    spec.visual.global_.offheight = max(spec.visual.global_.offheight, 480)

    for body in spec.bodies:
        if body.name.startswith(ARM_PREFIX):
            body.gravcomp = 1.0
    # The shoulder and elbow joints come with damping 100, which lets the hand cover only ~57 %
    # of a commanded 10 Hz step; 40 covers ~97 % with no overshoot (measured at 10 Hz).
    for joint in spec.joints:
        if joint.name in {f"robot:{ARM_PREFIX}joint{i}" for i in range(1, 5)}:
            joint.damping = [ARM_DAMPING, 0, 0]
    # The finger servos come with kp 500: 13 N on a 5 cm cube, and soft finger contacts let a
    # cube creep out when the hand moves fast. kp 2000 pinches with ~50 N (forcerange is 70 N).
    for actuator in spec.actuators:
        if actuator.name.endswith("gripper_finger_joint"):
            actuator.gainprm[0] = FINGER_KP
            actuator.biasprm[1] = -FINGER_KP
    hand = spec.body(f"{ARM_PREFIX}link7")
    # The fingers' pads span 1.5-8.75 cm past the finger base (0.1654 m down link7's z axis);
    # the grasp site sits in the middle of that span, with the hand's orientation (x along the
    # palm, y the direction the fingers close along, z out of the hand).
    hand.add_site(name=GRASP_SITE, pos=[0, 0, 0.1654 + 0.05], euler=[0, 0, -0.785398], size=[0.006])
    # Beside the palm, looking down the fingers (a camera looks along its -z; link7's +z points
    # out of the hand, hence the half turn about x).
    hand.add_camera(name="wrist", pos=[0.05, -0.05, 0.12], euler=[np.pi, 0, 0.785398], fovy=75)
    # The arm's own collision meshes only need to meet the world, not each other.
    for geom in spec.geoms:
        if geom.contype == 1 and geom.conaffinity == 1 and geom.parent.name.startswith(ARM_PREFIX):
            geom.conaffinity = 0

    world = spec.worldbody
    world.add_light(
        name="sun", pos=[0.5, 0, 2.0], dir=[0, 0, -1], diffuse=[0.8, 0.8, 0.8], castshadow=False
    )
    world.add_geom(
        name="table",
        type=mujoco.mjtGeom.mjGEOM_BOX,
        size=[0.6, 0.6, 0.025],
        pos=[0.35, 0, TABLE_TOP - 0.025],
        rgba=[0.55, 0.45, 0.35, 1],
        friction=[1.0, 0.005, 0.0001],
    )
    world.add_camera(name="front", pos=[1.25, 0.0, 0.55], xyaxes=[0, 1, 0, -0.45, 0, 0.89], fovy=45)
    for cube in cubes:
        body = world.add_body(name=cube.name, pos=[0.5, 0, TABLE_TOP + cube.half])
        body.add_freejoint(name=f"{cube.name}_joint")
        body.add_geom(
            name=f"{cube.name}_geom",
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=[cube.half] * 3,
            mass=cube.mass,
            rgba=list(cube.rgba),
            friction=[1.0, 0.005, 0.0001],
            condim=4,
        )
    return spec
