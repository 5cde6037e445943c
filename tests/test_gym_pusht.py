"""gym-pusht behind the project's PushT interface: same frame, keypoints, coverage and goal as
envs/pusht.py for the same pose; gym-pusht's physics and starts unchanged; the expert solves
held-out seeds; dp-collect writes a dataset. Skipped where the gym-pusht extra is absent."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from dplite.data.replay_buffer import ReplayBuffer
from dplite.envs import EVAL_SEED_START
from dplite.envs.baselines import evaluate_baseline
from dplite.envs.geometry import GOAL_POSE, t_coverage, t_keypoints
from dplite.envs.options import EnvOptions
from dplite.envs.pusht import PushTEnv
from dplite.envs.tasks import get_task, make_env
from dplite.scripts.collect import Config, main


@pytest.fixture
def gym_pusht():
    return pytest.importorskip("gym_pusht")


@pytest.fixture
def env(gym_pusht):
    from dplite.envs.gym_pusht import GymPushTEnv

    e = GymPushTEnv(obs_mode="keypoint")
    yield e
    e.close()


def _poses(n, seed=0):
    """Random poses across the table (every point of the T, within 121 px of its origin, clear
    of the walls) plus ones at and near the goal."""
    rng = np.random.default_rng(seed)
    random = np.column_stack(
        [rng.uniform(140, 370, n), rng.uniform(140, 370, n), rng.uniform(-7, 7, n)]
    )
    near = GOAL_POSE + np.array([[0, 0, 0], [3, -2, 0.02], [10, 5, -0.1], [0, 0, 2 * np.pi]])
    return np.concatenate([random, near])


@pytest.mark.parametrize("obs_mode", ["state", "keypoint", "image"])
def test_env_checker_and_keys(gym_pusht, obs_mode):
    from dplite.envs.gym_pusht import GymPushTEnv

    e = GymPushTEnv(obs_mode=obs_mode, render_mode="rgb_array", image_size=32, render_size=96)
    check_env(e, skip_render_check=False)
    obs, _ = e.reset(seed=3)
    extra = {"state": set(), "keypoint": {"keypoint"}, "image": {"keypoint", "img"}}[obs_mode]
    assert set(obs) == {"agent_pos", "state"} | extra
    assert e.render().shape == (96, 96, 3)
    if obs_mode == "image":
        assert obs["img"].shape == (32, 32, 3) and obs["img"].std() > 10  # a scene
    e.close()


def test_same_pose_same_keypoints_coverage_and_goal_as_project_pusht(env):
    """For one pose set in both envs: gym-pusht's keypoints (pymunk) equal the project's
    (envs/geometry.py), its coverage (shapely) equals the project's exact polygon clipping and
    the MuJoCo env's, the goal is the project's, and the state reads back the pose set."""
    ours = PushTEnv(obs_mode="keypoint")
    for pose in _poses(12):
        state = np.array([25.0, 490.0, *pose])  # the pusher in a corner, clear of the block
        obs, info = env.reset(options={"reset_to_state": state})
        obs_mj, info_mj = ours.reset(options={"reset_to_state": state})
        np.testing.assert_allclose(env.goal_pose, GOAL_POSE, atol=1e-12)
        np.testing.assert_allclose(env.block_pose(), pose, atol=1e-6)
        np.testing.assert_allclose(env.agent_pos(), state[:2], atol=1e-9)
        np.testing.assert_allclose(env.keypoints(), t_keypoints(pose), atol=1e-6)
        np.testing.assert_allclose(obs["keypoint"], obs_mj["keypoint"], atol=1e-3)
        np.testing.assert_allclose(obs["state"], obs_mj["state"], atol=1e-3)
        assert info["coverage"] == pytest.approx(t_coverage(pose), abs=1e-9)
        assert info["coverage"] == pytest.approx(info_mj["coverage"], abs=1e-6)
    # at the goal: full coverage, success
    _, info = env.reset(options={"reset_to_state": [25.0, 490.0, *GOAL_POSE]})
    assert info["coverage"] == pytest.approx(1.0) and info["is_success"]


def test_keypoints_are_gym_pusht_environment_state_in_its_frame(gym_pusht, env):
    """Same seed: the wrapper starts where gym-pusht starts, its keypoints[:8] are gym-pusht's
    environment_state, and the angle is the unwrapped one (gym-pusht's state wraps it)."""
    raw = gym.make("gym_pusht/PushT-v0", obs_type="environment_state_agent_pos").unwrapped
    raw_state = gym.make("gym_pusht/PushT-v0", obs_type="state").unwrapped
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        r, _ = raw.reset(seed=seed)
        s, _ = raw_state.reset(seed=seed)
        np.testing.assert_allclose(obs["keypoint"][:8].ravel(), r["environment_state"], atol=1e-3)
        np.testing.assert_allclose(obs["agent_pos"], r["agent_pos"], atol=1e-3)
        np.testing.assert_allclose(obs["state"][:4], s[:4], atol=1e-3)
        angle = float(obs["state"][4])
        assert np.cos(angle) == pytest.approx(np.cos(s[4]), abs=1e-5)
        assert np.sin(angle) == pytest.approx(np.sin(s[4]), abs=1e-5)


def test_physics_reward_and_termination_are_gym_pusht_s(gym_pusht, env):
    """A fixed action sequence from the same seed gives gym-pusht's own trajectory and
    rewards; reward = clip(coverage / 0.95, 0, 1)."""
    raw = gym.make("gym_pusht/PushT-v0", obs_type="state").unwrapped
    actions = np.random.default_rng(1).uniform(100, 400, size=(30, 2)).astype(np.float32)
    obs, _ = env.reset(seed=11)
    raw.reset(seed=11)
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        s, raw_reward, raw_terminated, _, raw_info = raw.step(a)
        np.testing.assert_allclose(obs["state"][:4], s[:4], atol=1e-3)
        assert reward == pytest.approx(raw_reward)
        assert reward == pytest.approx(min(info["coverage"] / 0.95, 1.0))
        assert info["coverage"] == pytest.approx(raw_info["coverage"])
        assert terminated == raw_terminated and not truncated


def test_task_registration_limits_and_bad_input(gym_pusht):
    spec = get_task("gym-pusht")
    assert spec.obs_keys == ("keypoint", "agent_pos") and spec.action_anchor == "agent_pos"
    e = make_env(spec)
    assert e.spec.max_episode_steps == 300
    obs, _ = e.reset(seed=0)
    assert obs["keypoint"].shape == (9, 2) and "img" not in obs
    with pytest.raises(ValueError, match="reset_to_state"):
        e.reset(options={"reset_to_state": [1.0, 2.0]})
    with pytest.raises(ValueError, match="2 finite pixel coordinates"):
        e.step(np.array([np.nan, 1.0]))
    e.close()
    img = make_env(get_task("gym-pusht-image"))
    obs, _ = img.reset(seed=0)
    assert obs["img"].shape == (96, 96, 3) and obs["img"].dtype == np.uint8
    img.close()


def test_missing_extra_names_it(monkeypatch):
    """Without gym-pusht the tasks are still registered; making one says what to install."""
    from dplite.envs import gym_pusht as module  # importable without gym-pusht

    assert get_task("gym-pusht").env_imports == ("dplite.envs.gym_pusht",)
    monkeypatch.setitem(sys.modules, "gym_pusht", None)
    monkeypatch.setitem(sys.modules, "gym_pusht.envs", None)
    monkeypatch.setitem(sys.modules, "gym_pusht.envs.pusht", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[gym-pusht\]"') as e:
        module.GymPushTEnv()
    assert isinstance(e.value, ValueError)  # the command lines report it in one line


def test_expert_solves_held_out_seeds(gym_pusht):
    seeds = [EVAL_SEED_START + i for i in range(4)]
    record, results = evaluate_baseline("expert", get_task("gym-pusht"), seeds)
    assert record["success_rate"] == 1.0, [(r.seed, r.max_reward) for r in results]
    assert record["mean_max_reward"] == pytest.approx(1.0)
    assert all(r.steps < 300 for r in results)


def test_collect_three_episodes(gym_pusht, tmp_path):
    out = tmp_path / "gym_pusht.zarr"
    summary = main(Config(env=EnvOptions(task="gym-pusht"), episodes=3, out=out, progress=False))
    assert summary["episodes"] == 3 and summary["added"] == 3
    rb = ReplayBuffer.open(out)
    assert sorted(rb.keys) == ["action", "agent_pos", "keypoint", "state"]
    assert rb.attrs["task"] == "gym-pusht" and rb.attrs["env"]["env_id"] == "GymPushT-v0"
    np.testing.assert_array_equal(rb.get_meta("success"), [1] * 3)
    # timing convention: replaying episode 0's actions from its seed reproduces its rows
    from dplite.envs.gym_pusht import GymPushTEnv

    ep = rb.get_episode(0)
    e = GymPushTEnv(obs_mode="keypoint")
    obs, _ = e.reset(seed=int(rb.get_meta("seed")[0]))
    for t, action in enumerate(ep["action"]):
        np.testing.assert_array_equal(obs["keypoint"], ep["keypoint"][t])
        obs, _, terminated, _, info = e.step(action)
        assert terminated == (t == len(ep["action"]) - 1)
    assert info["is_success"]
