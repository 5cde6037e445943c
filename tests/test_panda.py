"""dplite.envs.panda: the Franka scene, IK, the lift / stack tasks and their experts."""

import subprocess
import sys

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from dplite import envs  # noqa: F401  (registers PandaLift-v0 / PandaStack-v0)
from dplite.envs.panda.env import MAX_MOVE, PandaLiftEnv, PandaStackEnv
from dplite.envs.panda.experts import grasp_yaws, make_lift_expert, make_stack_expert
from dplite.envs.panda.ik import solve_ik, yaw_down_rotation
from dplite.envs.panda.scene import ARM_PREFIX, CUBE_HALF, FINGER_OPEN
from dplite.envs.tasks import get_task, make_env


def run_expert(env, expert, seed, limit=150, reset=True):
    if reset:
        env.reset(seed=seed)
        expert.reset(seed)
    obs = env.unwrapped._obs()
    for step in range(1, limit + 1):
        obs, _, terminated, truncated, info = env.step(expert(obs))
        if terminated or truncated:
            return obs, info, step
    return obs, info, limit


@pytest.mark.parametrize("env_id", ["PandaLift-v0", "PandaStack-v0"])
@pytest.mark.parametrize("obs_mode", ["state", "image"])
def test_check_env_every_task_and_mode(env_id, obs_mode):
    env = gym.make(env_id, obs_mode=obs_mode, render_mode="rgb_array", render_size=64)
    check_env(env.unwrapped)
    obs, _ = env.reset(seed=0)
    assert obs["eef_pos"].shape == (3,) and obs["gripper"].shape == (1,)
    if obs_mode == "image":
        for key in ("front_img", "wrist_img"):
            assert obs[key].shape == (96, 96, 3) and obs[key].dtype == np.uint8
            assert obs[key].std() > 5  # a real picture, not a blank buffer
    assert env.render().shape == (64, 64, 3)
    env.close()


@pytest.mark.parametrize("cls", [PandaLiftEnv, PandaStackEnv])
def test_same_seed_same_episode(cls):
    def episode(seed):
        env = cls()
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(1)
        frames = [obs]
        for _ in range(15):
            obs, *_ = env.step(rng.uniform(-1, 1, 5))
            frames.append(obs)
        return frames

    a, b, c = episode(7), episode(7), episode(8)
    for fa, fb in zip(a, b, strict=True):
        for key in fa:
            np.testing.assert_array_equal(fa[key], fb[key])
    cube = "cube_pos" if "cube_pos" in a[0] else "cube_a_pos"
    assert not np.allclose(a[0][cube], c[0][cube])  # another seed, another layout


def test_gravity_compensation_is_compiled_in_and_the_arm_holds_still():
    env = PandaLiftEnv()
    m = env.model
    arm = [b for b in range(m.nbody) if m.body(b).name.startswith(ARM_PREFIX)]
    assert len(arm) == 10 and np.all(m.body_gravcomp[arm] == 1.0)
    obs, _ = env.reset(seed=0)
    start = obs["eef_pos"].copy()
    for _ in range(30):  # 3 s with "no motion" commanded
        obs, *_ = env.step(np.array([0, 0, 0, 0, -1.0]))
    assert np.linalg.norm(obs["eef_pos"] - start) < 1e-3  # without gravcomp it sags centimetres


def test_ik_reaches_random_reachable_targets_within_2mm():
    env = PandaLiftEnv()
    env.reset(seed=0)
    m, scratch = env.model, mujoco.MjData(env.model)
    rng = np.random.default_rng(0)
    for _ in range(20):
        target = rng.uniform([0.3, -0.25, 0.06], [0.65, 0.25, 0.35])
        yaw = rng.uniform(-1.2, 1.2)
        q, _ = solve_ik(
            m,
            scratch,
            env._site,
            env._arm_qpos,
            env._arm_dof,
            env.home_qpos,
            target,
            yaw_down_rotation(yaw),
            env.home_qpos,
            max_iters=100,
            tol=1e-5,
        )
        # independent check: forward kinematics of the returned joints on a fresh MjData
        check = mujoco.MjData(m)
        check.qpos[env._arm_qpos] = q
        mujoco.mj_kinematics(m, check)
        assert np.linalg.norm(check.site_xpos[env._site] - target) < 2e-3
        down = check.site_xmat[env._site].reshape(3, 3)[:, 2]
        assert down[2] < -0.999  # gripper points down


def test_env_tracks_cartesian_targets_within_2mm():
    env = PandaLiftEnv()
    rng = np.random.default_rng(3)
    for seed in range(4):
        obs, _ = env.reset(seed=seed)
        target = rng.uniform([0.35, -0.2, 0.1], [0.6, 0.2, 0.3])
        for _ in range(40):
            delta = np.clip((target - obs["eef_pos"]) / MAX_MOVE, -1, 1)
            obs, *_ = env.step(np.array([*delta, 0.0, -1.0]))
        assert np.linalg.norm(obs["eef_pos"] - target) < 2e-3


def test_bad_actions_are_refused_not_clipped():
    env = PandaLiftEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(4,\).*5 finite"):
        env.step(np.zeros(4))
    with pytest.raises(ValueError, match="5 finite"):
        env.step(np.array([0, 0, np.nan, 0, 0]))


def test_a_launched_cube_ends_the_episode_as_failed_with_a_reason():
    env = gym.make("PandaLift-v0")
    env.reset(seed=0)
    base = env.unwrapped
    dof = base.model.joint("cube_joint").dofadr[0]
    base.data.qvel[dof : dof + 3] = [60.0, 0.0, 30.0]  # an explosion's worth of velocity
    for _ in range(20):
        _, _, terminated, truncated, info = env.step(np.zeros(5))
        if terminated or truncated:
            break
    assert terminated and not info["is_success"]
    assert "cube left the scene" in info["failure"]


def test_grasp_yaws_pinch_across_opposite_faces():
    for cube_yaw in np.linspace(-np.pi, np.pi, 17):
        a, b = grasp_yaws(cube_yaw)
        assert -np.pi / 4 - 1e-9 <= a < np.pi / 4 and abs(abs(a - b) - np.pi / 2) < 1e-9
        # the finger axis (palm y) is parallel to a face normal of the cube: yaw differs by k*pi/2
        for g in (a, b):
            k = (g - cube_yaw) / (np.pi / 2)
            assert abs(k - round(k)) < 1e-9


def test_lift_expert_succeeds_with_the_cube_between_the_fingers():
    env = PandaLiftEnv()
    expert = make_lift_expert(env)
    for seed in (100_000, 100_001, 100_002, 100_003):
        obs, info, _ = run_expert(env, expert, seed)
        assert info["is_success"], (seed, expert.mode)
        # contacts: each finger touches the cube ...
        assert env.grasped("cube")
        # ... and geometry: the cube's centre is between the two finger pads, in the palm frame
        left = env.data.xpos[env.model.body(f"{ARM_PREFIX}leftfinger").id]
        right = env.data.xpos[env.model.body(f"{ARM_PREFIX}rightfinger").id]
        axis = (left - right) / np.linalg.norm(left - right)
        along = (env.cube_pos("cube") - right) @ axis
        assert 0 < along < np.linalg.norm(left - right)
        assert obs["gripper"][0] == pytest.approx(2 * CUBE_HALF, abs=0.006)  # pinching, not shut
        assert env.cube_pos("cube")[2] - CUBE_HALF > 0.10
        # the palm holds the grasp yaw of the expert's mode
        near, far = grasp_yaws(env.cube_yaw("cube"))
        wanted = near if expert.mode["grasp"] == "near" else far
        assert abs(obs["eef_yaw"][0] - wanted) < 0.1
        assert abs(obs["eef_to_cube_yaw"][0]) < 0.1  # square to the faces, either way round


def test_stack_expert_succeeds_in_both_orders():
    env = PandaStackEnv()
    expert = make_stack_expert(env)
    orders = set()
    for seed in range(100_000, 100_006):
        obs, info = env.reset(seed=seed)
        expert.reset(seed)
        expert.mode["order"] = ("a_on_b", "b_on_a")[seed % 2]  # the default modes show one
        obs, info, _ = run_expert(env, expert, seed, reset=False)
        assert info["is_success"], (seed, expert.mode)
        orders.add(expert.mode["order"])
        top, bottom = (
            ("cube_a", "cube_b") if expert.mode["order"] == "a_on_b" else ("cube_b", "cube_a")
        )
        assert env.stacked(top, bottom) and not env.stacked(bottom, top)
        assert obs["gripper"][0] > 2 * CUBE_HALF  # let go
    assert orders == {"a_on_b", "b_on_a"}


def test_reward_rises_through_the_expert_episode_and_is_1_at_success():
    for cls, make in ((PandaLiftEnv, make_lift_expert), (PandaStackEnv, make_stack_expert)):
        env = cls()
        expert = make(env)
        obs, _ = env.reset(seed=100_000)
        expert.reset(100_000)
        rewards = []
        for _ in range(150):
            obs, reward, terminated, _, info = env.step(expert(obs))
            rewards.append(reward)
            if terminated:
                break
        assert info["is_success"] and rewards[-1] == 1.0
        assert all(0.0 <= r < 1.0 for r in rewards[:-1])
        assert rewards[0] < 0.3 < max(rewards[:-1])  # far at first, holding the cube later


def test_success_needs_a_grasp_or_a_resting_stack():
    lift = PandaLiftEnv()
    lift.reset(seed=0)
    adr = lift._cube_qpos["cube"]
    lift.data.qpos[adr + 2] += 0.2  # teleported up, nobody holding it
    mujoco.mj_forward(lift.model, lift.data)
    assert not lift.is_success()

    stack = PandaStackEnv()
    stack.reset(seed=0)
    a, b = stack._cube_qpos["cube_a"], stack._cube_qpos["cube_b"]
    stack.data.qpos[a : a + 3] = stack.data.qpos[b : b + 3] + [0, 0, 2 * CUBE_HALF]
    mujoco.mj_forward(stack.model, stack.data)
    assert stack.is_success() and stack.stacked("cube_a", "cube_b")
    stack.data.qpos[a] += 1.5 * CUBE_HALF  # hanging over the edge
    mujoco.mj_forward(stack.model, stack.data)
    assert not stack.is_success()


def test_expert_modes_are_all_demonstrated():
    env = PandaStackEnv()
    expert = make_stack_expert(env)
    seen = set()
    for seed in range(40):
        expert.reset(seed)
        seen.add(tuple(sorted(expert.mode.items())))
    assert len(seen) == 2  # grasp yaw (the order is fixed: red on blue)


def test_tasks_registered_with_their_experts_and_keys():
    lift, stack = get_task("panda_lift"), get_task("panda_stack")
    assert lift.env_id == "PandaLift-v0" and stack.env_id == "PandaStack-v0"
    env = make_env(lift, obs_keys=("front_img", "eef_pos"))
    obs, _ = env.reset(seed=0)
    assert set(lift.obs_keys) | {"front_img", "wrist_img"} <= set(obs)
    assert env.spec.max_episode_steps == lift.max_episode_steps
    assert env.unwrapped.data.ctrl[-1] == pytest.approx(FINGER_OPEN)


def test_assets_are_read_without_importing_gymnasium_robotics():
    code = (
        "import sys; from envs.panda.env import PandaLiftEnv; PandaLiftEnv().reset(seed=0); "
        "assert 'gymnasium_robotics' not in sys.modules, 'imported'; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
