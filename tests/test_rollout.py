"""Batched receding-horizon rollout on a tiny counting env whose every step is predictable."""

import gymnasium as gym
import numpy as np
import pytest

from dplite.envs.rollout import rollout, summarize, wilson_interval


class CountEnv(gym.Env):
    """obs = {"x": [position, time]}; action moves the position; success at position >= goal."""

    observation_space = gym.spaces.Dict({"x": gym.spaces.Box(-1e3, 1e3, (2,), np.float64)})
    action_space = gym.spaces.Box(-10, 10, (1,), np.float64)

    def __init__(self, render_mode=None, horizon=20):
        self.render_mode, self.horizon = render_mode, horizon

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.goal, self.pos, self.t = float(seed % 7 + 3), 0.0, 0
        return self._obs(), {}

    def _obs(self):
        return {"x": np.array([self.pos, self.t], dtype=np.float64)}

    def step(self, action):
        self.pos += float(action[0])
        self.t += 1
        success = self.pos >= self.goal
        reward = min(1.0, self.pos / self.goal)
        return self._obs(), reward, success, self.t >= self.horizon, {"is_success": success}

    def render(self):
        return np.full((4, 4, 3), self.t, np.uint8)


def test_history_batching_and_receding_horizon():
    calls = []

    def policy(obs, seeds):
        calls.append(obs["x"].copy())
        return np.full((obs["x"].shape[0], 4, 1), 0.5)  # Ta=3 of these 4 are executed

    seeds = [0, 1, 6]  # goals 3, 4, 9 -> successes after 6, 8, 18 steps
    results = rollout(
        policy,
        lambda r: CountEnv("rgb_array" if r else None),
        seeds,
        n_obs_steps=2,
        n_action_steps=3,
        n_videos=1,
    )
    assert [r.steps for r in results] == [6, 8, 18]
    assert all(r.success for r in results) and [r.seed for r in results] == seeds
    # first call: the first observation repeated To times, for all three envs at once
    np.testing.assert_array_equal(calls[0], np.zeros((3, 2, 2)))
    # second call: the last two observations (times 2 and 3) of each env, oldest first
    np.testing.assert_array_equal(calls[1][:, :, 1], [[2, 3]] * 3)
    # finished episodes drop out of the batch: env 0 ends after call 2, env 1 after call 3
    assert [c.shape[0] for c in calls] == [3, 3, 2, 1, 1, 1]
    assert len(results[0].frames) == 7 and not results[1].frames  # reset frame + 6 steps


def test_time_limit_and_max_reward():
    results = rollout(
        lambda o, s: np.full((len(o["x"]), 2, 1), 0.1),
        lambda r: CountEnv(horizon=5),
        [2],
        n_obs_steps=1,
        n_action_steps=2,
    )
    (r,) = results
    assert r.steps == 5 and not r.success
    assert r.max_reward == pytest.approx(0.5 / 5)


def test_wrong_action_shape_is_named():
    with pytest.raises(ValueError, match="expected \\(1, >= 3, Da\\)"):
        rollout(lambda o, s: np.zeros((1, 2, 1)), lambda r: CountEnv(), [0], 1, 3)


def test_wilson_interval_hand_values_and_summary():
    lo, hi = wilson_interval(45, 50)
    assert lo == pytest.approx(0.7864, abs=1e-4) and hi == pytest.approx(0.9565, abs=1e-4)
    lo, hi = wilson_interval(50, 50)
    assert hi == 1.0 and lo == pytest.approx(0.9287, abs=1e-4)
    results = rollout(
        lambda o, s: np.full((len(o["x"]), 1, 1), 1.0),
        lambda r: CountEnv(horizon=4),
        [0, 6],
        n_obs_steps=1,
        n_action_steps=1,
    )
    s = summarize(results)
    assert s["success_rate"] == 0.5 and s["episodes"] == 2 and s["seeds"] == [0, 6]
    assert s["mean_max_reward"] == pytest.approx((1.0 + 4 / 9) / 2)


def test_max_reward_of_negative_rewards_is_the_largest_one():
    class Negative(CountEnv):
        def step(self, action):
            obs, reward, term, trunc, info = super().step(action)
            return obs, reward - 10.0, term, trunc, info

    (r,) = rollout(lambda o, s: np.full((1, 1, 1), 0.1), lambda r: Negative(horizon=3), [2], 1, 1)
    assert r.max_reward == pytest.approx(0.3 / 5 - 10.0)  # the last step's, not 0
    assert summarize([r])["mean_max_reward"] == pytest.approx(r.max_reward)


class CountingRender(CountEnv):
    """Counts render() calls; reports info["failure"] at `fail_step` of seed `fail_seed`."""

    renders = 0

    def __init__(self, render_mode="rgb_array", horizon=20, fail_seed=None, fail_step=3):
        super().__init__(render_mode, horizon)
        self.fail_seed, self.fail_step = fail_seed, fail_step

    def reset(self, seed=None, options=None):
        self.seed_ = seed
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, term, trunc, info = super().step(action)
        if self.seed_ == self.fail_seed and self.t == self.fail_step:
            info = {**info, "failure": "cube left the table"}
        return obs, reward, term, trunc, info

    def render(self):
        CountingRender.renders += 1
        return super().render()


def test_only_the_episodes_asked_for_are_filmed_whatever_the_render_mode():
    CountingRender.renders = 0
    policy = lambda o, s: np.full((len(o["x"]), 1, 1), 1.0)  # noqa: E731
    results = rollout(policy, lambda r: CountingRender(horizon=4), [0, 1, 2], 1, 1, n_videos=0)
    assert CountingRender.renders == 0 and not any(r.frames for r in results)
    results = rollout(policy, lambda r: CountingRender(horizon=4), [0, 1, 2], 1, 1, n_videos=1)
    assert len(results[0].frames) == results[0].steps + 1 and not results[1].frames
    assert CountingRender.renders == results[0].steps + 1


def test_info_failure_ends_the_episode_as_an_error():
    policy = lambda o, s: np.full((len(o["x"]), 1, 1), 0.1)  # noqa: E731
    make = lambda r: CountingRender(horizon=10, fail_seed=5, fail_step=3)  # noqa: E731
    failed, healthy = rollout(policy, make, [5, 6], 1, 1)
    assert failed.steps == 2 and not failed.success
    assert failed.error == "step 2: EnvFailure: cube left the table"
    assert healthy.error is None and healthy.steps == 10
    assert summarize([failed, healthy])["errors"] == [{"seed": 5, "error": failed.error}]


def test_a_policy_hears_of_each_episode_start_with_its_own_env():
    made, started = [], []

    class Policy:
        def episode_started(self, seed, env):
            started.append((seed, env, env.t))  # called right after the reset: t == 0

        def __call__(self, o, s):
            return np.full((len(o["x"]), 1, 1), 1.0)

    def make(render):
        made.append(CountEnv(horizon=3))
        return made[-1]

    rollout(Policy(), make, [4, 9], 1, 1)
    assert started == [(4, made[0], 0), (9, made[1], 0)]


class WayEnv(CountEnv):
    """CountEnv solved by reaching |position| >= goal either way; info["way"] is the side the
    position is on now, and the episode runs on after success (to its time limit)."""

    def step(self, action):
        obs, reward, success, truncated, info = super().step(action)
        info["is_success"] = abs(self.pos) >= self.goal
        info["way"] = "up" if self.pos > 0 else "down" if self.pos < 0 else "none"
        return obs, reward, False, truncated, info


def test_outcome_is_the_way_of_the_first_success_and_successes_are_counted_by_it():
    def policy(obs, seeds):
        t = obs["x"][:, -1, 1]  # each row's current time
        # seed 0 (goal 3): +2, +2 (solved "up" at t=2), then -3 per step to the "down" side;
        # seed 2 (goal 5): -3 per step (solved "down" at t=2); seed 3 (goal 6): +0.1, never
        step = np.where(seeds == 0, np.where(t < 2, 2.0, -3.0), np.where(seeds == 2, -3.0, 0.1))
        return np.repeat(step[:, None, None], 2, axis=1)  # (B, 2, 1)

    results = rollout(policy, lambda r: WayEnv(horizon=6), [0, 2, 3], 1, 1, outcome_key="way")
    assert [r.success for r in results] == [True, True, False]
    # seed 0 ends on the "down" side but was solved "up"; an unsolved episode keeps its last way
    assert [r.outcome for r in results] == ["up", "down", "up"]
    record = summarize(results)
    assert record["outcomes"] == ["up", "down", "up"]
    assert record["success_by_outcome"] == {"down": 1, "up": 1}
    # no outcome key: no outcome fields at all
    plain = rollout(policy, lambda r: WayEnv(horizon=6), [0], 1, 1)
    assert plain[0].outcome is None and "outcomes" not in summarize(plain)
