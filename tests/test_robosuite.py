"""robosuite tasks (envs/robosuite_tasks.py, envs/robosuite_experts.py): the MuJoCo
compatibility patches against hand-derived values and MuJoCo's own inertia product, seeding,
the experts on held-out seeds, and a dp-collect run. Skipped without the robosuite extra,
except the checks that a core install never imports robosuite."""

import importlib.util
import os
import subprocess
import sys

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco
import numpy as np
import pytest

from dplite.envs import EVAL_SEED_START
from dplite.envs.tasks import get_task, make_env

HAS_ROBOSUITE = importlib.util.find_spec("robosuite") is not None
needs_robosuite = pytest.mark.skipif(not HAS_ROBOSUITE, reason="robosuite extra not installed")
TASKS = {
    "robosuite-lift": (10, "make_lift_expert"),
    "robosuite-can": (14, "make_can_expert"),
    "robosuite-square": (14, "make_square_expert"),
}


def test_registry_does_not_import_robosuite():
    code = (
        "import sys, dplite.envs.tasks as t, dplite.envs.robosuite_tasks, "
        "dplite.envs.robosuite_experts\n"
        "s = t.get_task('robosuite-square')\n"
        "assert s.env_id == 'RobosuiteSquare-v0' and s.control_hz == 20.0\n"
        "assert s.max_episode_steps == 400\n"
        "assert 'robosuite' not in sys.modules, 'robosuite imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_extra_names_the_install_command(monkeypatch):
    from dplite.envs import robosuite_tasks

    monkeypatch.setitem(sys.modules, "robosuite", None)  # import robosuite -> ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[robosuite\]"'):
        robosuite_tasks.RobosuiteEnv("Lift")


# ------------------------------------------------------------------------------ compat layer

_JOINTS_XML = """
<mujoco>
  <worldbody>
    <body name="a"><freejoint name="free"/><geom size="0.1"/>
      <body name="b"><joint name="ball" type="ball"/><geom size="0.1"/>
        <body name="c"><joint name="hinge" type="hinge"/><geom size="0.1"/>
          <body name="d"><joint name="slide" type="slide"/><geom size="0.1"/></body>
        </body>
      </body>
    </body>
  </worldbody>
</mujoco>
"""


@needs_robosuite
def test_joint_addresses_by_hand():
    from dplite.envs.robosuite_tasks import patch_robosuite

    patch_robosuite()
    from robosuite.utils.binding_utils import MjModel

    model = MjModel(mujoco.MjModel.from_xml_string(_JOINTS_XML))
    # qpos: free 7 numbers (0-6), ball 4 (7-10), hinge 1 (11), slide 1 (12);
    # qvel: free 6 (0-5), ball 3 (6-8), hinge 1 (9), slide 1 (10)
    assert model.get_joint_qpos_addr("free") == (0, 7)
    assert model.get_joint_qpos_addr("ball") == (7, 11)
    assert model.get_joint_qpos_addr("hinge") == 11
    assert model.get_joint_qpos_addr("slide") == 12
    assert model.get_joint_qvel_addr("free") == (0, 6)
    assert model.get_joint_qvel_addr("ball") == (6, 9)
    assert model.get_joint_qvel_addr("hinge") == 9
    assert model.get_joint_qvel_addr("slide") == 10


@pytest.fixture(scope="module")
def lift():
    if not HAS_ROBOSUITE:
        pytest.skip("robosuite extra not installed")
    env = make_env(get_task("robosuite-lift"))
    yield env
    env.close()


def test_robot_joint_addresses_in_lift(lift):
    """Lift's model: the Panda's 7 hinges (qpos 0-6), its 2 finger slides (7, 8), then the
    cube's free joint (9-15)."""
    model = lift.unwrapped.rs.sim.model
    arm = [model.get_joint_qpos_addr(f"robot0_joint{i}") for i in range(1, 8)]
    assert arm == list(range(7))
    fingers = sorted(
        model.get_joint_qpos_addr(model.joint_id2name(j))
        for j in range(model.njnt)
        if "finger" in model.joint_id2name(j)
    )
    assert fingers == [7, 8]
    assert model.get_joint_qpos_addr("cube_joint0") == (9, 16)
    assert model.get_joint_qvel_addr("cube_joint0") == (9, 15)


def test_controller_mass_matrix_is_mujocos(lift):
    """The patched mj_fullM path gives the arm's joint-space inertia: compared with M's
    columns from mj_mulM (M times unit vectors), a MuJoCo function robosuite never calls."""
    env = lift.unwrapped
    env.reset(seed=1)
    for _ in range(3):
        env.step(np.array([0.3, -0.2, 0.1, 0.0, 0.1, 0.2, -1.0]))
    controller = env.rs.robots[0].part_controllers["right"]
    controller.update(force=True)
    m, d = env.rs.sim.model._model, env.rs.sim.data._data
    full = np.zeros((m.nv, m.nv))
    for i in range(m.nv):
        unit, col = np.zeros(m.nv), np.zeros(m.nv)
        unit[i] = 1.0
        mujoco.mj_mulM(m, d, col, unit)
        full[:, i] = col
    idx = np.asarray(controller.qvel_index)
    expected = full[np.ix_(idx, idx)]
    np.testing.assert_allclose(controller.mass_matrix, expected, rtol=1e-10, atol=1e-12)
    assert np.all(np.linalg.eigvalsh(expected) > 0)


# ------------------------------------------------------------------------------ env


def test_lift_observations_and_seeding(lift):
    from gymnasium.utils.env_checker import check_env

    env = lift.unwrapped
    obs, info = env.reset(seed=7)
    assert {k: v.shape for k, v in obs.items()} == {
        "object": (10,),
        "robot0_eef_pos": (3,),
        "robot0_eef_quat": (4,),
        "robot0_gripper_qpos": (2,),
    }
    assert all(v.dtype == np.float32 for v in obs.values()) and not info["is_success"]
    # object = cube position, quaternion, hand-to-cube vector (robosuite's gripper_to_cube)
    np.testing.assert_allclose(
        obs["object"][7:10], obs["object"][:3] - obs["robot0_eef_pos"], atol=1e-6
    )
    # a 4-4.4 cm cube over the table (top at z = 0.8), dropped from 1 cm (robosuite's z_offset)
    assert 0.82 <= obs["object"][2] <= 0.833
    actions = np.random.default_rng(0).uniform(-1, 1, size=(5, 7))
    run = lambda: [env.step(a)[0]["object"] for a in actions]  # noqa: E731
    first = run()
    env.reset(seed=3)  # something else in between
    env.step(actions[0])
    again, _ = env.reset(seed=7)
    for k in obs:
        np.testing.assert_array_equal(obs[k], again[k])
    np.testing.assert_array_equal(np.array(first), np.array(run()))
    other, _ = env.reset(seed=8)
    assert not np.allclose(other["object"][:3], obs["object"][:3])
    with pytest.raises(ValueError, match="expected 7 finite numbers"):
        env.step(np.zeros(6))
    check_env(env, skip_render_check=True)


@needs_robosuite
def test_lift_cameras_and_video_frames_are_upright():
    """84 px agentview + wrist images and a 256 px video frame. robosuite renders bottom row
    first; flipped, agentview shows the white table in its lower half and the robot and the
    floor behind it at the top."""
    spec = get_task("robosuite-lift")
    env = make_env(spec, obs_keys=spec.image_keys, render=True)
    try:
        obs, _ = env.reset(seed=0)
        for key in spec.image_keys:
            assert obs[key].shape == (84, 84, 3) and obs[key].dtype == np.uint8
            assert obs[key].std() > 5  # a picture, not a blank
        agentview = obs["agentview_image"].astype(float)
        assert agentview[-21:].mean() > agentview[:21].mean() + 30
        frame = env.render()
        assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8
        assert frame[-64:].mean() > frame[:64].mean() + 30
    finally:
        env.close()


@needs_robosuite
def test_fast_render_draws_the_same_scene_on_rebuilt_models():
    """fast_render (no shadows, reflections or multisampling) against robosuite's own rendering
    of the same episode: the same picture up to those effects, also after a second hard reset
    (a rebuilt model and render context, set up through the wrapped _initialize_sim)."""
    from dplite.envs.robosuite_tasks import IMAGE_KEYS, RobosuiteEnv

    envs = {fast: RobosuiteEnv("Lift", obs_mode="image", fast_render=fast) for fast in (1, 0)}
    try:
        for seed in (3, 4):
            obs = {fast: env.reset(seed=seed)[0] for fast, env in envs.items()}
            for key in IMAGE_KEYS:
                fast, slow = (obs[f][key].astype(float) for f in (1, 0))
                np.testing.assert_array_equal(obs[1]["object"], obs[0]["object"])
                assert slow.std() > 5 and np.abs(fast - slow).mean() < 4.0, (seed, key)
            models = {f: env.rs.sim.model._model for f, env in envs.items()}
            assert models[1].vis.quality.offsamples == 0 and models[1].vis.global_.offwidth == 84
            assert models[0].vis.quality.offsamples > 0  # robosuite's own settings untouched
    finally:
        for env in envs.values():
            env.close()


@needs_robosuite
@pytest.mark.parametrize("name", ["robosuite-can", "robosuite-square"])
def test_object_to_hand_is_set_at_reset(name):
    """robosuite's first observation reports the object-to-hand entries as zeros; the env
    reads them again, so the reset frame agrees with the next one (a zero action barely
    moves the hand)."""
    env = make_env(get_task(name))
    try:
        obs, _ = env.reset(seed=0)
        assert np.linalg.norm(obs["object"][:3]) > 0.05
        nxt = env.step(np.zeros(7, dtype=np.float32))[0]
        np.testing.assert_allclose(obs["object"][:3], nxt["object"][:3], atol=0.01)
    finally:
        env.close()


# ------------------------------------------------------------------------------ experts


def test_expert_rotation_math_matches_scipy():
    """The experts' orientation error (world-frame axis-angle from the hand's pose to "pointing
    down at palm yaw psi") and object yaw, against scipy's Rotation."""
    Rotation = pytest.importorskip("scipy.spatial.transform").Rotation
    from dplite.envs.robosuite_experts import hand_quat, quat_yaw, rotation_error

    rng = np.random.default_rng(0)
    down = Rotation.from_euler("x", np.pi)
    for _ in range(20):
        psi = rng.uniform(-np.pi / 2, np.pi / 2)
        target = Rotation.from_euler("z", psi) * down
        w, x, y, z = hand_quat(psi)
        np.testing.assert_allclose(
            Rotation.from_quat([x, y, z, w]).as_matrix(), target.as_matrix(), atol=1e-12
        )
        # a hand within 60 degrees of the target (the error's short way round is unambiguous)
        pose = Rotation.from_rotvec(rng.normal(size=3) * 0.4) * target
        expected = (target * pose.inv()).as_rotvec()
        np.testing.assert_allclose(rotation_error(pose.as_quat(), psi), expected, atol=1e-9)
        yaw = rng.uniform(-np.pi, np.pi)
        assert abs(quat_yaw(Rotation.from_euler("z", yaw).as_quat()) - yaw) < 1e-9


@needs_robosuite
@pytest.mark.parametrize("name", list(TASKS))
def test_expert_modes_come_from_the_seed(name):
    from dplite.envs import robosuite_experts

    expert = getattr(robosuite_experts, TASKS[name][1])(_NoEnv())
    cls = type(expert)
    seen = {}
    for seed in range(40):
        expert.reset(seed)
        seen[seed] = dict(expert.choice)
    for option, values in cls.MODE_OPTIONS.items():
        assert {c[option] for c in seen.values()} == set(values), option
    expert.reset(11)
    assert expert.choice == seen[11]
    assert expert.mode in cls.modes() and len(cls.modes()) == 4


class _NoEnv:
    """Stands in for the env where only the mode draw is tested (no robosuite episode)."""

    unwrapped = None


@needs_robosuite
@pytest.mark.parametrize("name", list(TASKS))
def test_expert_succeeds_on_held_out_seeds(name):
    from dplite.envs.collect import run_episode
    from dplite.envs.tasks import load_callable

    spec = get_task(name)
    env = make_env(spec)
    expert = load_callable(spec.expert)(env)
    try:
        for seed in (EVAL_SEED_START + 3, EVAL_SEED_START + 4):
            data, success = run_episode(env, expert, seed, spec)
            assert success, (name, seed, expert.mode)
            assert data["object"].shape[1] == TASKS[name][0]
            assert len(data["action"]) < spec.max_episode_steps
    finally:
        env.close()


@needs_robosuite
def test_collect_three_episodes(tmp_path):
    from dplite.data.replay_buffer import ReplayBuffer
    from dplite.envs.options import EnvOptions
    from dplite.scripts.collect import Config, main

    out = tmp_path / "lift.zarr"
    summary = main(
        Config(env=EnvOptions(task="robosuite-lift"), episodes=3, out=out, progress=False)
    )
    assert summary["episodes"] == 3 and summary["success_rate"] == 1.0
    rb = ReplayBuffer.open(out)
    assert sorted(rb.keys) == sorted(["action", *get_task("robosuite-lift").obs_keys])
    assert rb["action"].shape == (rb.n_steps, 7) and rb["object"].shape == (rb.n_steps, 10)
    np.testing.assert_array_equal(rb.get_meta("seed"), [0, 1, 2])
    # the timing convention: replaying episode 1's actions from its seed gives its states
    ep = rb.get_episode(1)
    env = make_env(get_task("robosuite-lift"))
    try:
        obs, _ = env.reset(seed=1)
        for t, action in enumerate(ep["action"]):
            np.testing.assert_array_equal(obs["object"], ep["object"][t])
            obs, _, terminated, _, info = env.step(action)
        assert terminated and info["is_success"]
    finally:
        env.close()
