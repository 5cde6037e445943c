"""PushT env: gymnasium contract, determinism, exact coverage vs rasterization, frame and physics."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from dplite import envs  # noqa: F401  (registers PushT-v0)
from dplite.envs.geometry import GOAL_POSE, T_AREA, T_CENTROID, t_coverage, t_keypoints
from dplite.envs.pusht import PushTEnv


def _raster_coverage(pose, goal, h=0.2):
    """Area(T(pose) & T(goal)) / area(T) by jittered sampling on an h-grid (one random point
    per cell: the goal's 45-degree edges would alias with plain midpoints). Independent of
    envs.geometry's clipping: each point is tested against both Ts' rectangles."""

    def inside(points, p):
        c, s = np.cos(p[2]), np.sin(p[2])
        d = points - p[:2]
        x = d[..., 0] * c + d[..., 1] * s  # body frame: rotate by -theta
        y = -d[..., 0] * s + d[..., 1] * c
        bar = (np.abs(x) <= 60) & (y >= 0) & (y <= 30)
        stem = (np.abs(x) <= 15) & (y > 30) & (y <= 120)
        return bar | stem

    g = np.asarray(goal, float)
    lo, hi = g[:2] - 125.0, g[:2] + 125.0  # the T lies within 121 px of its origin
    xs = np.arange(lo[0] + h / 2, hi[0], h)
    ys = np.arange(lo[1] + h / 2, hi[1], h)
    jitter = np.random.default_rng(123)
    total = 0
    for y in ys.reshape(-1, 50):  # row blocks keep memory small
        pts = np.stack(np.meshgrid(xs, y, indexing="xy"), axis=-1)
        pts = pts + jitter.uniform(-h / 2, h / 2, size=pts.shape)
        total += np.count_nonzero(inside(pts, np.asarray(pose, float)) & inside(pts, g))
    return total * h * h / T_AREA


@pytest.mark.parametrize("obs_mode", ["state", "keypoint", "image"])
def test_env_checker_passes(obs_mode):
    env = PushTEnv(obs_mode=obs_mode, render_mode="rgb_array", image_size=32, render_size=32)
    check_env(env, skip_render_check=False)
    obs, _ = env.reset(seed=3)
    extra = {"state": set(), "keypoint": {"keypoint"}, "image": {"keypoint", "img"}}[obs_mode]
    assert set(obs) == {"agent_pos", "state"} | extra
    env.close()


def test_gym_make_passes_kwargs_and_truncates():
    env = gym.make("PushT-v0", obs_mode="keypoint", max_episode_steps=5)
    obs, _ = env.reset(seed=0)
    assert obs["keypoint"].shape == (9, 2) and obs["keypoint"].dtype == np.float32
    far = obs["agent_pos"]  # stay put: the block is never touched
    for t in range(5):
        obs, reward, terminated, truncated, info = env.step(far)
        assert not terminated
        assert truncated == (t == 4)
    assert 0.0 <= reward <= 1.0 and reward == pytest.approx(min(info["coverage"] / 0.95, 1.0))


def test_same_seed_same_trajectory_and_seeds_differ():
    actions = np.random.default_rng(0).uniform(0, 512, size=(40, 2)).astype(np.float32)

    def rollout(seed):
        env = PushTEnv(obs_mode="keypoint")
        obs, _ = env.reset(seed=seed)
        traj = [np.concatenate([obs["state"], obs["keypoint"].ravel()])]
        rewards = []
        for a in actions:
            obs, r, *_ = env.step(a)
            traj.append(np.concatenate([obs["state"], obs["keypoint"].ravel()]))
            rewards.append(r)
        return np.array(traj), np.array(rewards)

    a1, r1 = rollout(7)
    a2, r2 = rollout(7)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(r1, r2)
    b, _ = rollout(8)
    assert not np.allclose(a1[0], b[0])
    # The random actions do move the block (the trajectory is not trivially constant).
    assert np.abs(a1[-1, 2:5] - a1[0, 2:5]).max() > 1.0


def test_reset_distribution_and_rejections():
    env = PushTEnv()
    for seed in range(40):
        obs, info = env.reset(seed=seed)
        s = obs["state"].astype(np.float64)
        assert np.all((s[:2] >= 50) & (s[:2] <= 450))
        assert np.all((s[2:4] >= 100) & (s[2:4] <= 400))
        assert -np.pi <= s[4] <= np.pi
        assert info["coverage"] <= 0.9 and not info["is_success"]
        kp = t_keypoints(s[2:5])
        assert kp.min() > 6 and kp.max() < 506  # inside the walls
        # pusher clear of the block: its centre is not within 15 px of any T point
        assert np.min(np.linalg.norm(kp - s[:2], axis=1)) > 15


def test_coverage_matches_rasterization():
    rng = np.random.default_rng(0)
    values = []
    for _ in range(5):
        pose = GOAL_POSE + np.array([*rng.uniform(-40, 40, 2), rng.uniform(-0.8, 0.8)])
        exact = t_coverage(pose, GOAL_POSE)
        assert exact == pytest.approx(_raster_coverage(pose, GOAL_POSE), abs=1e-3)
        # symmetric: both Ts have the same area
        assert exact == pytest.approx(t_coverage(GOAL_POSE, pose), abs=1e-12)
        values.append(exact)
    assert min(values) > 0.05 and max(values) < 0.95  # the poses test partial overlaps
    assert t_coverage(GOAL_POSE, GOAL_POSE) == pytest.approx(1.0, abs=1e-12)
    assert t_coverage(GOAL_POSE + [0, 0, 2 * np.pi]) == pytest.approx(1.0, abs=1e-12)
    assert t_coverage(np.array([100.0, 100.0, 0.3])) == 0.0
    # Hand-derived: shifting the T by 10 px along its stem (body +y): bar & bar 120 x 20, moved
    # bar & goal stem 30 x 10, stem & stem 30 x 80 -> 5100 of 6300 px^2.
    shift = np.array([-np.sin(GOAL_POSE[2]), np.cos(GOAL_POSE[2])]) * 10.0
    assert t_coverage(GOAL_POSE + [*shift, 0.0]) == pytest.approx(5100 / 6300, abs=1e-9)


def test_reward_and_termination_at_goal():
    env = PushTEnv()
    obs, info = env.reset(options={"reset_to_state": [60.0, 60.0, *GOAL_POSE]})
    assert info["is_success"] and info["coverage"] == pytest.approx(1.0, abs=1e-6)
    obs, reward, terminated, truncated, info = env.step(obs["agent_pos"])
    assert terminated and not truncated and reward == 1.0 and info["is_success"]


def test_keypoints_follow_the_block_frame():
    env = PushTEnv(obs_mode="keypoint")
    pose = np.array([300.0, 200.0, 0.7])
    obs, _ = env.reset(options={"reset_to_state": [60.0, 60.0, *pose]})
    kp = obs["keypoint"].astype(np.float64)
    np.testing.assert_allclose(kp[8], pose[:2], atol=1e-3)  # 9th keypoint = body origin
    # bar top corners (-60, 0) and (60, 0): 120 px apart along (cos, sin)(theta)
    np.testing.assert_allclose(
        kp[1] - kp[0], 120.0 * np.array([np.cos(0.7), np.sin(0.7)]), atol=1e-3
    )
    # stem tip corners (15, 120), (-15, 120): the stem points along (-sin, cos)(theta)
    tip_mid = (kp[6] + kp[7]) / 2
    np.testing.assert_allclose(
        tip_mid - pose[:2], 120.0 * np.array([-np.sin(0.7), np.cos(0.7)]), atol=1e-3
    )
    np.testing.assert_allclose(obs["state"][2:], pose, atol=1e-4)


def test_image_frame_is_the_pixel_frame():
    """Colours at known pixel positions: y runs down the image rows, x along columns."""
    env = PushTEnv(obs_mode="image", image_size=96)
    obs, _ = env.reset(options={"reset_to_state": [100.0, 420.0, 400.0, 100.0, 0.0]})
    img = obs["img"]

    def px(x, y):
        return img[int(y / 512 * 96), int(x / 512 * 96)].astype(int)

    blue, green, grey = px(100, 420), px(*(GOAL_POSE[:2] + [-40.0, 40.0])), px(400, 160)
    assert blue[2] > 180 and blue[0] < 120  # the pusher (RoyalBlue)
    assert green[1] > 200 and green[0] < 180 and green[2] < 180  # goal stem (LightGreen)
    assert abs(grey[0] - 119) < 30 and abs(grey[2] - 153) < 30  # the stem of the block
    assert px(400, 300).min() > 240  # white table below the block's stem tip (y = 220)


def test_pusher_tracks_targets_quickly_without_overshoot():
    env = PushTEnv()
    env.reset(options={"reset_to_state": [100.0, 100.0, 400.0, 400.0, 0.0]})
    target = np.array([150.0, 100.0], np.float32)
    obs, *_ = env.step(target)
    assert abs(obs["agent_pos"][0] - 150) < 5  # within 10 % of a 50 px step after 0.1 s
    xs = []
    for _ in range(3):
        obs, *_ = env.step(target)
        xs.append(obs["agent_pos"][0])
    assert max(xs) < 151 and abs(xs[-1] - 150) < 0.5


def test_central_push_translates_and_block_stops():
    """Pushing the bar's top face at its middle, along the stem, acts through the centroid:
    the block slides without turning, and stops as soon as the pusher retreats."""
    env = PushTEnv()
    pose = np.array([256.0, 200.0, 0.0])
    env.reset(options={"reset_to_state": [256.0, 180.0, *pose]})  # 5 px above the face
    for k in range(1, 6):
        obs, *_ = env.step(np.array([256.0, 185.0 + 10.0 * k], np.float32))
    s = obs["state"].astype(np.float64)
    assert s[3] - pose[1] > 25  # pushed down by ~40 px
    assert abs(s[2] - pose[0]) < 0.5 and abs(s[4]) < 0.01
    obs, *_ = env.step(np.array([256.0, 100.0], np.float32))  # retreat
    before = obs["state"][2:].copy()
    for _ in range(3):
        obs, *_ = env.step(np.array([256.0, 100.0], np.float32))
    np.testing.assert_allclose(obs["state"][2:], before, atol=0.05)
    # The env's centroid convention: block centroid = origin + R(theta) T_CENTROID.
    assert T_CENTROID[1] == pytest.approx((3600 * 15 + 2700 * 75) / 6300)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="obs_mode"):
        PushTEnv(obs_mode="pixels")
    env = PushTEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="reset_to_state"):
        env.reset(options={"reset_to_state": [1.0, 2.0]})
