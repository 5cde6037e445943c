"""examples.pointmaze_expert: shortest routes, reaches the goal, deterministic, mode-split ties."""

import os
from itertools import pairwise

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

gymnasium_robotics = pytest.importorskip("gymnasium_robotics")

import gymnasium as gym  # noqa: E402

from examples.pointmaze_expert import (  # noqa: E402
    MODES,
    bfs_distances,
    cell_routes,
    free_cells,
    funnel,
    make_expert,
)

gym.register_envs(gymnasium_robotics)

# 1 = wall. From (1, 1) to (4, 3) the way down the left is 5 moves, the way round the right 9.
SMALL = [
    [1, 1, 1, 1, 1, 1, 1],
    [1, 0, 0, 0, 0, 0, 1],
    [1, 0, 1, 1, 1, 0, 1],
    [1, 0, 0, 0, 1, 0, 1],
    [1, 1, 1, 0, 0, 0, 1],
    [1, 1, 1, 1, 1, 1, 1],
]
# A ring round one wall cell: (1, 1) -> (3, 3) is 4 moves either way.
RING = [[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 0, 1, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]]


def _make_env():
    return gym.make("PointMaze_Medium-v3", continuing_task=False)


def _episode(env, expert, seed, options=None):
    obs, info = env.reset(seed=seed, options=options)
    expert.reset(seed)
    observations, actions = [], []
    while True:
        action = expert(obs)
        observations.append(obs)
        actions.append(action)
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return observations, np.array(actions), bool(info["success"])


def _assert_walk(free, route, start, goal):
    assert route[0] == start and route[-1] == goal
    assert all(free[c] for c in route), "route enters a wall cell"
    steps = np.abs(np.diff(np.array(route), axis=0)).sum(axis=1)
    assert np.all(steps == 1), "route jumps between non-adjacent cells"


def test_bfs_routes_are_shortest_and_stay_in_free_cells():
    free = free_cells(SMALL)
    assert bfs_distances(free, (4, 3))[1, 1] == 5
    assert bfs_distances(free, (4, 3))[0, 0] == -1  # a wall is unreachable
    (route,) = cell_routes(free, (1, 1), (4, 3))
    _assert_walk(free, route, (1, 1), (4, 3))
    assert len(route) - 1 == 5
    # With slack the longer way round joins, shortest first; nothing else is that short.
    routes = cell_routes(free, (1, 1), (4, 3), slack=4)
    assert [len(r) - 1 for r in routes] == [5, 9]
    for r in routes:
        _assert_walk(free, r, (1, 1), (4, 3))
    # Equal ways round the ring are both shortest.
    ring = cell_routes(free_cells(RING), (1, 1), (3, 3))
    assert sorted(r[1] for r in ring) == [(1, 2), (2, 1)] and all(len(r) == 5 for r in ring)


def test_funnel_bends_only_at_the_portal_end_in_the_way():
    # Heading +x through an edge at x = 1 that spans y in [0.5, 1] (left end first): the
    # straight line y = 0 misses it, so the path bends at its right end (1, 0.5).
    path = funnel((0.0, 0.0), [((1.0, 1.0), (1.0, 0.5))], (2.0, 0.0))
    np.testing.assert_allclose(path, [[0, 0], [1, 0.5], [2, 0]])
    path = funnel((0.0, 0.0), [((1.0, -0.5), (1.0, -1.0))], (2.0, 0.0))
    np.testing.assert_allclose(path, [[0, 0], [1, -0.5], [2, 0]])
    # An edge the line already passes through costs nothing.
    path = funnel((0.0, 0.0), [((1.0, 1.0), (1.0, -1.0)), ((1.5, 0.2), (1.5, -0.2))], (2.0, 0.0))
    np.testing.assert_allclose(path, [[0, 0], [2, 0]])


def test_taut_routes_keep_off_walls_and_the_mode_picks_the_side():
    env = _make_env()
    expert = make_expert(env)
    maze = env.unwrapped.maze
    # (3, 3) -> (6, 2): round the central wall block east or west, both 6 moves (4.57 m taut).
    start, goal = (maze.cell_rowcol_to_xy(np.array(c)) for c in ((3, 3), (6, 2)))
    xs = {}
    for mode in MODES:
        expert.mode = mode
        route = expert.route(start, goal)
        s = np.linspace(0, 1, 50)[:, None]
        dense = np.concatenate([a + s * (b - a) for a, b in pairwise(route)])
        assert expert.wall_distance(dense).min() > 0.25  # ball radius 0.1, plus a margin
        assert np.linalg.norm(np.diff(route, axis=0), axis=1).sum() < 5.0  # taut, not 6 cells
        xs[mode] = dense[:, 0]
    # Heading south, the left of the ball is east: "left" passes x > 0, "right" x < -2.
    assert xs["left"].max() > 0.2 and xs["left"].min() > -1.7
    assert xs["right"].min() < -2.2


def test_expert_reaches_the_goal_smoothly():
    env = _make_env()
    expert = make_expert(env)
    for seed in range(200_000, 200_005):  # neither demonstration (0+) nor evaluation seeds
        observations, actions, success = _episode(env, expert, seed)
        assert success, f"seed {seed} ({expert.mode}) failed"
        assert len(actions) < env.spec.max_episode_steps
        assert expert.mode in MODES
        assert actions.dtype == np.float32 and np.abs(actions).max() <= 1.0
        # No jitter: the action moves by well under a tenth of its range per 10 ms step.
        assert np.abs(np.diff(actions, axis=0)).max() < 0.3
        pos = np.array([o["observation"][:2] for o in observations])
        assert expert.wall_distance(pos).min() > 0.15  # never scrapes a wall (radius 0.1)


def test_actions_are_a_function_of_observation_and_mode():
    env = _make_env()
    observations, actions, _ = _episode(env, make_expert(env), 200_010)
    _, again, _ = _episode(env, make_expert(env), 200_010)
    np.testing.assert_array_equal(again, actions)
    # A fresh expert fed the same observations backwards agrees: no timer, no kept plan.
    expert = make_expert(env)
    expert.reset(200_010)
    backwards = [expert(o) for o in observations[::-1]][::-1]
    np.testing.assert_array_equal(np.array(backwards), actions)


def test_modes_split_a_tied_start_both_ways():
    env = _make_env()
    expert = make_expert(env)
    seed_of = {}
    for seed in range(20):
        expert.reset(seed)
        seed_of.setdefault(expert.mode, seed)
    assert set(seed_of) == set(MODES), "20 seeds drew only one mode"
    # Same env seed (same noisy start and goal), a tied pair of cells; only the mode differs.
    options = {"reset_cell": np.array([3, 3]), "goal_cell": np.array([6, 2])}
    min_x = {}
    for mode, expert_seed in seed_of.items():
        obs, _ = env.reset(seed=7, options=options)
        expert.reset(expert_seed)
        assert expert.mode == mode
        xs = []
        for _ in range(env.spec.max_episode_steps):
            obs, _, terminated, _, info = env.step(expert(obs))
            xs.append(obs["observation"][0])
            if terminated:
                break
        assert info["success"], mode
        min_x[mode] = min(xs)
    assert min_x["left"] > -1.7 and min_x["right"] < -2.0  # east of the block vs west of it
