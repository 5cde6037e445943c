"""Non-learned baselines (envs.baselines) through the same rollout as a learned policy: the
scripted expert solves the toy task, uniform random actions mostly do not, and an episode's
result depends on its seed only."""

import numpy as np
import pytest

from dplite.envs import EVAL_SEED_START
from dplite.envs.baselines import ExpertPolicy, RandomPolicy, evaluate_baseline, make_baseline
from dplite.envs.tasks import get_task
from tests.toy_envs import TOY_TASK as TOY  # importing it also registers ToyReach-v0
from tests.toy_envs import ToyReachExpert

SEEDS = [EVAL_SEED_START + i for i in range(10)]


def test_expert_succeeds_and_random_mostly_fails_on_the_toy_task():
    expert, _ = evaluate_baseline("expert", TOY, SEEDS)
    random, _ = evaluate_baseline("random", TOY, SEEDS)
    assert expert["success_rate"] == 1.0 and expert["errors"] == []
    assert random["success_rate"] <= 0.2
    # the summary has scripts.eval's keys, so the suite treats every method alike
    for s, name in ((expert, "expert"), (random, "random")):
        assert s["seeds"] == SEEDS and s["episodes"] == 10 and s["sampler"] == name
        assert s["n_action_steps"] == 1 and s["env_id"] == "ToyReach-v0" and s["wall_time_s"] > 0


def test_expert_acts_like_it_does_in_collect():
    """One expert per episode, reset with the episode's seed, fed the newest observation:
    the rollout replays the expert's own episode step for step."""
    import gymnasium as gym

    from tests.toy_envs import ToyReachExpert

    seed = SEEDS[3]
    _, (result,) = evaluate_baseline("expert", TOY, [seed])
    env, expert = gym.make("ToyReach-v0"), ToyReachExpert()
    obs, _ = env.reset(seed=seed)
    expert.reset(seed)
    steps = 0
    while True:
        flat = {"pos": obs["pos"], "target_xy": obs["target"]["xy"]}
        obs, reward, terminated, truncated, _ = env.step(expert(flat))
        steps += 1
        if terminated or truncated:
            break
    assert (result.steps, result.final_reward) == (steps, pytest.approx(reward))


def test_a_seed_gives_the_same_episode_alone_or_in_a_batch():
    for method in ("expert", "random"):
        _, batched = evaluate_baseline(method, TOY, SEEDS[:4])
        _, alone = evaluate_baseline(method, TOY, SEEDS[2:3])
        assert (alone[0].steps, alone[0].final_reward) == (
            batched[2].steps,
            pytest.approx(batched[2].final_reward),
        ), method


def test_random_actions_are_uniform_in_the_box_and_seeded_per_episode():
    pusht = get_task("pusht")
    obs = {"agent_pos": np.zeros((3, 1, 2), np.float32)}
    policy = make_baseline("random", pusht)
    a = policy(obs, np.array([5, 6, 7]))  # (B, Ta = 1, Da)
    assert a.shape == (3, 1, 2) and a.dtype == np.float32 and len(np.unique(a)) == 6
    # an episode's draws depend on its seed only, not on its neighbours in the batch
    alone = make_baseline("random", pusht)({"agent_pos": obs["agent_pos"][1:2]}, np.array([6]))
    assert np.array_equal(alone[0], a[1])
    # uniform over the action box [0, 512]^2
    many = np.concatenate([policy(obs, np.array([5, 6, 7])) for _ in range(200)]).reshape(-1, 2)
    assert many.min() >= 0 and many.max() <= 512
    assert many.min() < 10 and many.max() > 502 and abs(many.mean() - 256) < 15


def test_baselines_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="task 'nox' has no scripted expert"):
        ExpertPolicy.for_task(TOY.replace(name="nox", expert=None))
    with pytest.raises(ValueError, match="unknown baseline 'greedy'"):
        make_baseline("greedy", TOY)
    from gymnasium import spaces

    with pytest.raises(ValueError, match="bounded Box action space"):
        RandomPolicy(spaces.Box(-np.inf, np.inf, (2,)))


def test_the_expert_is_built_on_its_episodes_own_env():
    """The expert factory gets the env of the episode it will act in, after its reset."""
    from dplite.envs.evaluate import evaluate_policy

    seen = []

    def factory(env):
        seen.append(env.unwrapped.seed_)  # the episode's env, already reset with its seed
        return ToyReachExpert(env)

    evaluate_policy(ExpertPolicy(factory), TOY, SEEDS[:3])
    assert seen == SEEDS[:3]


def test_max_envs_runs_the_seeds_in_groups_with_the_same_episodes(monkeypatch):
    """evaluate_policy(max_envs=3) never holds more than 3 environments, and returns the
    episodes of the all-at-once rollout: same steps, rewards and actions, videos for the first
    n_videos episodes of the whole list."""
    from dplite.envs import evaluate as evaluate_module
    from dplite.envs.evaluate import evaluate_policy

    make_env, alive, most = evaluate_module.make_env, set(), [0]

    def counted_make_env(*args, **kwargs):
        env = make_env(*args, **kwargs)
        alive.add(env)
        most[0] = max(most[0], len(alive))
        close = env.close
        env.close = lambda: (alive.discard(env), close())[1]
        return env

    monkeypatch.setattr(evaluate_module, "make_env", counted_make_env)
    seeds = SEEDS[:7]
    _, together = evaluate_policy(make_baseline("random", TOY), TOY, seeds, n_videos=4)
    assert most[0] >= 7
    most[0] = 0
    _, grouped = evaluate_policy(make_baseline("random", TOY), TOY, seeds, n_videos=4, max_envs=3)
    assert most[0] <= 3
    assert [r.seed for r in grouped] == seeds
    for a, b in zip(together, grouped, strict=True):
        assert (a.steps, a.success, a.final_reward) == (b.steps, b.success, b.final_reward)
        np.testing.assert_array_equal(np.array(a.actions), np.array(b.actions))
    assert [len(r.frames) > 0 for r in grouped] == [True] * 4 + [False] * 3
    with pytest.raises(ValueError, match="max_envs must be >= 1"):
        evaluate_policy(make_baseline("random", TOY), TOY, seeds, max_envs=0)
