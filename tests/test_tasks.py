"""dplite.envs.tasks: the registry, observation flattening, success lookup, one time limit."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from dplite import envs  # noqa: F401  (registers PushT-v0)
from dplite.envs.options import EnvOptions
from dplite.envs.tasks import (
    TaskSpec,
    UnknownTaskError,
    flat_obs_shapes,
    flatten_obs,
    get_task,
    is_success,
    list_tasks,
    make_env,
    register_task,
    task_from_env_id,
)


def test_pusht_tasks_are_registered_as_data():
    assert {"pusht", "pusht_state"} <= set(list_tasks())
    spec = get_task("pusht")
    assert spec.env_id == "PushT-v0" and spec.max_episode_steps == 300
    assert spec.obs_keys == ("keypoint", "agent_pos") and spec.action_anchor == "agent_pos"
    # a spec survives the JSON round trip a checkpoint puts it through
    assert TaskSpec.from_dict(spec.to_dict()) == spec


def test_unknown_task_and_id_name_the_known_tasks_and_env_import():
    with pytest.raises(UnknownTaskError, match=r"unknown task 'pushy'.*pusht.*--env-import"):
        get_task("pushy")
    with pytest.raises(UnknownTaskError, match=r"'NoSuchEnv-v9'.*pusht.*--env-import"):
        task_from_env_id("NoSuchEnv-v9")
    with pytest.raises(ValueError, match="could not import env module 'no_such_module'"):
        EnvOptions(env_id="X-v0", env_import=("no_such_module",)).resolve()
    with pytest.raises(ValueError, match="not both"):
        EnvOptions(task="pusht", env_id="PushT-v0")
    with pytest.raises(ValueError, match="not valid JSON"):
        EnvOptions(env_kwargs="{obs_mode: 1}")


def test_registering_a_different_spec_under_a_taken_name_is_refused():
    spec = get_task("pusht")
    assert register_task(spec) is spec  # the same spec again is fine
    with pytest.raises(ValueError, match="already registered"):
        register_task(spec.replace(max_episode_steps=10))


def test_flatten_box_and_nested_dict_and_copy():
    buf = np.arange(3.0)
    flat = flatten_obs(buf)
    assert list(flat) == ["state"]
    buf[:] = -1  # the env reuses its buffer: the flattened copy must not change
    np.testing.assert_array_equal(flat["state"], [0, 1, 2])
    obs = {"robot": {"qpos": np.zeros(7), "grip": np.ones(1)}, "cube": np.zeros(3)}
    assert sorted(flatten_obs(obs)) == ["cube", "robot_grip", "robot_qpos"]
    space = spaces.Dict(
        {
            "robot": spaces.Dict({"qpos": spaces.Box(-1, 1, (7,))}),
            "img": spaces.Box(0, 255, (8, 8, 3), np.uint8),
        }
    )
    assert flat_obs_shapes(space) == {
        "robot_qpos": ((7,), np.float32),
        "img": ((8, 8, 3), np.uint8),
    }
    with pytest.raises(ValueError, match="Discrete"):
        flat_obs_shapes(spaces.Discrete(3))


def test_success_key_falls_back_to_success_only_for_the_default():
    assert is_success({"is_success": True, "success": False})
    assert is_success({"success": True})
    assert not is_success({})
    assert not is_success({"success": True}, key="solved")
    assert is_success({"solved": 1}, key="solved")


def test_max_episode_steps_is_the_one_time_limit():
    # gym.make's limit reaches the episode: no second limit at the env's own 300 steps
    env = gym.make("PushT-v0", max_episode_steps=320)
    obs, _ = env.reset(seed=0)
    for t in range(320):
        _, _, terminated, truncated, _ = env.step(obs["agent_pos"])
        assert not terminated and truncated == (t == 319)
    env.close()
    # and through a task spec / the --max-episode-steps option
    spec = EnvOptions(task="pusht", max_episode_steps=7).resolve()
    env = make_env(spec)
    obs, _ = env.reset(seed=0)
    steps = 0
    truncated = False
    while not truncated:
        _, _, _, truncated, _ = env.step(obs["agent_pos"])
        steps += 1
    assert steps == 7


def test_key_kwargs_make_the_env_emit_what_is_asked():
    spec = get_task("pusht_state")
    assert "keypoint" not in make_env(spec).observation_space.spaces
    assert "keypoint" in make_env(spec, obs_keys=["keypoint"]).observation_space.spaces
    emitted = make_env(spec, obs_keys=["img", "keypoint"]).observation_space.spaces
    assert {"img", "keypoint", "agent_pos"} <= set(emitted)


def test_env_options_override_a_recorded_spec():
    base = get_task("pusht")
    spec = EnvOptions(env_kwargs='{"success_threshold": 0.9}', success_key="done").resolve(base)
    assert spec.env_kwargs == {"obs_mode": "keypoint", "success_threshold": 0.9}
    assert spec.success_key == "done" and spec.name == "pusht"
    assert EnvOptions().resolve(base) is base
    with pytest.raises(ValueError, match="no environment"):
        EnvOptions().resolve()


def test_env_options_parse_from_the_command_line():
    import tyro

    from dplite.scripts.collect import Config

    cfg = tyro.cli(
        Config,
        args=["--env-id", "X-v0", "--env-import", "a", "--env-import", "b.c",
              "--env-kwargs", '{"k": [1, 2]}', "--success-key", "solved",
              "--max-episode-steps", "9"],
    )  # fmt: skip
    opts = cfg.env
    assert (opts.env_id, opts.env_import, opts.kwargs()) == ("X-v0", ("a", "b.c"), {"k": [1, 2]})
    assert (opts.success_key, opts.max_episode_steps) == ("solved", 9)


def test_headless_gl_is_egl_only_on_a_linux_machine_without_a_display():
    from dplite.envs import headless_gl

    assert headless_gl("linux", {}) == "egl"
    assert headless_gl("linux", {"DISPLAY": ":0"}) is None
    assert headless_gl("linux", {"WAYLAND_DISPLAY": "wayland-0"}) is None
    assert headless_gl("linux", {"MUJOCO_GL": "osmesa"}) is None  # the user's choice stays
    assert headless_gl("darwin", {}) is None  # macOS renders with its own backend
    assert headless_gl("win32", {}) is None


def test_rendering_is_off_unless_asked_whatever_the_registered_default():
    import gymnasium as gym

    from dplite.envs.tasks import TaskSpec, make_env

    if "ToyReachRendered-v0" not in gym.registry:
        gym.register(
            "ToyReachRendered-v0",
            entry_point="tests.toy_envs:ToyReach",
            max_episode_steps=5,
            kwargs={"render_mode": "rgb_array"},  # as gym-pusht's PushT-v0 registers
        )
    spec = TaskSpec(name="rendered", env_id="ToyReachRendered-v0", env_imports=("tests.toy_envs",))
    assert make_env(spec).unwrapped.render_mode is None
    assert make_env(spec, render=True).unwrapped.render_mode == "rgb_array"
    plain = spec.replace(env_id="ToyReach-v0")  # registers no render_mode: none is passed
    assert make_env(plain).unwrapped.render_mode is None
