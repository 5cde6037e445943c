"""The panda_stack_bimodal task: the stack env with demonstrations of both orders, half and half
per seed, success either way, and the order of the stack reported in info["stack_order"]."""

import math

import mujoco
import numpy as np

from dplite.envs.baselines import ExpertPolicy
from dplite.envs.collect import ExpertEpisodes
from dplite.envs.evaluate import evaluate_policy
from dplite.envs.panda.env import PandaStackEnv
from dplite.envs.panda.experts import PandaStackBimodalExpert
from dplite.envs.panda.scene import CUBE_HALF
from dplite.envs.tasks import get_task, load_callable, make_env


def test_the_task_is_the_stack_env_with_the_two_order_expert():
    stack, bimodal = get_task("panda_stack"), get_task("panda_stack_bimodal")
    assert bimodal.env_id == stack.env_id and bimodal.obs_keys == stack.obs_keys
    assert bimodal.max_episode_steps == stack.max_episode_steps
    env = make_env(bimodal)
    expert = load_callable(bimodal.expert)(env)
    assert isinstance(expert, PandaStackBimodalExpert)
    assert set(expert.MODES["order"]) == {"a_on_b", "b_on_a"}
    env.close()


def test_each_seed_draws_its_order_with_probability_one_half():
    """Deterministic per seed; over 400 seeds the count of each order is inside the central
    99.99 % of Binomial(400, 1/2) (|z| < 3.9), and both grasp yaws occur with both orders."""
    expert = PandaStackBimodalExpert(PandaStackEnv())
    orders, pairs = [], set()
    for seed in range(400):
        expert.reset(seed)
        first = dict(expert.mode)
        expert.reset(seed)
        assert expert.mode == first
        orders.append(first["order"])
        pairs.add((first["order"], first["grasp"]))
    n = orders.count("b_on_a")
    assert abs(n - 200) / math.sqrt(400 * 0.25) < 3.9, n
    assert len(pairs) == 4


def test_info_reports_the_order_of_the_stack():
    env = PandaStackEnv()
    _, info = env.reset(seed=0)
    assert info["stack_order"] == "none" and not info["is_success"]
    a, b = env._cube_qpos["cube_a"], env._cube_qpos["cube_b"]
    for top, bottom, want in ((a, b, "a_on_b"), (b, a, "b_on_a")):
        env.reset(seed=0)
        env.data.qpos[top : top + 3] = env.data.qpos[bottom : bottom + 3] + [0, 0, 2 * CUBE_HALF]
        mujoco.mj_forward(env.model, env.data)
        assert env.stack_order() == want and env.is_success()


def test_expert_demonstrates_both_orders_and_info_names_each():
    """Collected as dp-collect collects: every episode succeeds, its order is the expert's mode
    (recorded per episode), and the last info's stack_order is that order."""
    spec = get_task("panda_stack_bimodal")
    seen = {}
    with ExpertEpisodes(spec) as source:
        for episode in source.episodes(start_seed=0):
            order = source.expert.mode["order"]
            assert episode.success, (episode.seed, source.expert.mode)
            assert order in episode.mode  # the per-episode record names the order
            top, bottom = ("cube_a", "cube_b") if order == "a_on_b" else ("cube_b", "cube_a")
            env = source.env.unwrapped
            assert env.stacked(top, bottom) and env.stack_order() == order
            seen.setdefault(order, episode.seed)
            if len(seen) == 2:
                break
            assert episode.seed < 10  # both orders within the first few seeds
    # the info the rollout sees on the success step carries the order
    env = PandaStackEnv()
    expert = PandaStackBimodalExpert(env)
    for order, seed in seen.items():
        obs, info = env.reset(seed=seed)
        expert.reset(seed)
        for _ in range(150):
            obs, _, terminated, truncated, info = env.step(expert(obs))
            if terminated or truncated:
                break
        assert info["is_success"] and info["stack_order"] == order
        assert np.isfinite(obs["eef_pos"]).all()
    # an evaluation records each episode's order and counts the successes by order
    record, _ = evaluate_policy(ExpertPolicy.for_task(spec), spec, list(seen.values()))
    assert record["outcomes"] == list(seen)
    assert record["success_by_outcome"] == {"a_on_b": 1, "b_on_a": 1}
