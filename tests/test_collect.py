"""dplite.scripts.collect: a short run writes a valid dataset in the timing convention and resumes."""

import itertools
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest
import tyro

from dplite.data.replay_buffer import ReplayBuffer
from dplite.envs import EVAL_SEED_START
from dplite.envs.collect import ExpertEpisodes
from dplite.envs.experts import PushTExpert, expert_rng
from dplite.envs.pusht import PushTEnv
from dplite.scripts.collect import Config, main


def test_short_run_is_valid_and_replays(tmp_path):
    out = tmp_path / "demo.zarr"
    summary = main(Config(episodes=2, out=out, progress=False))
    assert summary["episodes"] == 2 and summary["success_rate"] == 1.0
    rb = ReplayBuffer.open(out)
    assert sorted(rb.keys) == ["action", "agent_pos", "keypoint", "state"]
    n = rb.n_steps
    shapes = {k: (rb[k].shape, rb[k].dtype) for k in rb.keys}
    assert shapes == {
        "action": ((n, 2), np.float32),
        "agent_pos": ((n, 2), np.float32),
        "keypoint": ((n, 9, 2), np.float32),
        "state": ((n, 5), np.float32),
    }
    np.testing.assert_array_equal(rb.get_meta("seed"), [0, 1])
    np.testing.assert_array_equal(rb.get_meta("success"), [1, 1])
    modes = list(rb.attrs["expert_modes"])
    assert modes == list(PushTExpert.MODES)
    assert set(rb.get_meta("expert_mode")) <= set(range(len(modes)))

    # Timing convention: row t = observation before acting, and the action taken at t.
    # Replaying episode 1's actions from its seed reproduces its states exactly, and the
    # last action ends the episode in success.
    ep = rb.get_episode(1)
    env = PushTEnv(obs_mode="keypoint")
    obs, _ = env.reset(seed=1)
    for t, action in enumerate(ep["action"]):
        np.testing.assert_array_equal(obs["state"], ep["state"][t])
        np.testing.assert_array_equal(obs["keypoint"], ep["keypoint"][t])
        np.testing.assert_array_equal(obs["agent_pos"], ep["agent_pos"][t])
        obs, _, terminated, _, info = env.step(action)
        assert terminated == (t == len(ep["action"]) - 1)
    assert info["is_success"]


def test_resume_adds_without_duplicating_seeds(tmp_path):
    out = tmp_path / "demo.zarr"
    main(Config(episodes=2, out=out, progress=False, seed_start=10))
    first = ReplayBuffer.open(out).get_episode(0)
    summary = main(Config(episodes=3, out=out, progress=False))
    assert summary["added"] == 1
    rb = ReplayBuffer.open(out)
    np.testing.assert_array_equal(rb.get_meta("seed"), [10, 11, 12])
    np.testing.assert_array_equal(rb.get_episode(0)["action"], first["action"])
    # Already complete: nothing to do.
    assert main(Config(episodes=3, out=out, progress=False))["added"] == 0
    with pytest.raises(ValueError, match="images"):
        main(Config(episodes=4, out=out, progress=False, images=True))


def test_action_noise_stores_the_experts_clean_actions(tmp_path):
    """DART: the executed actions are perturbed, the stored ones are the expert's outputs on
    the stored observations (re-running the expert on them reproduces them)."""
    out = tmp_path / "dart.zarr"
    main(Config(episodes=1, out=out, progress=False, action_noise=4.0))
    rb = ReplayBuffer.open(out)
    ep = rb.get_episode(0)
    seed = int(rb.get_meta("seed")[0])
    expert = PushTExpert(expert_rng(seed))
    expert.reset({"state": ep["state"][0]})
    replay = np.array([expert.act({"state": s}) for s in ep["state"]])
    np.testing.assert_allclose(replay, ep["action"], atol=1e-4)
    # ...and the perturbation is real: replaying the clean actions leaves the recorded states.
    env = PushTEnv(obs_mode="keypoint")
    obs, _ = env.reset(seed=seed)
    for action in ep["action"][:10]:
        obs, *_ = env.step(action)
    assert np.abs(obs["state"] - ep["state"][10]).max() > 0.5


def test_images_are_stored_when_asked(tmp_path):
    out = tmp_path / "img.zarr"
    main(Config(episodes=1, out=out, progress=False, images=True))
    rb = ReplayBuffer.open(out)
    img = rb["img"][:]
    assert img.shape == (rb.n_steps, 96, 96, 3) and img.dtype == np.uint8
    assert img.std() > 10  # a scene, not a blank frame
    assert rb["keypoint"].shape == (rb.n_steps, 9, 2)


def test_demo_seeds_stay_below_evaluation_seeds(tmp_path):
    with pytest.raises(ValueError, match="seed_start"):
        Config(out=tmp_path / "x.zarr", seed_start=EVAL_SEED_START)
    # The last demo seed is usable; the run then stops instead of crossing into eval seeds.
    out = tmp_path / "edge.zarr"
    with pytest.raises(ValueError, match="evaluation seeds"):
        main(Config(episodes=2, out=out, progress=False, seed_start=EVAL_SEED_START - 1))
    assert ReplayBuffer.open(out).n_episodes == 1  # the last demo seed, and no further


def test_cli_flags_parse():
    cfg = tyro.cli(
        Config,
        args=["--task", "pusht", "--episodes", "7", "--out", "x.zarr", "--images",
              "--keep-failed", "--seed-start", "5", "--no-progress"],
    )  # fmt: skip
    assert (cfg.episodes, cfg.images, cfg.keep_failed, cfg.seed_start, cfg.progress) == (
        7, True, True, 5, False,
    )  # fmt: skip


def test_expert_episodes_are_numpy_and_reproducible_from_their_seed():
    """envs.collect alone (no dataset): one episode per seed upward, the same again from the
    seed, DART noise included; never an evaluation seed."""
    from tests.toy_envs import TOY_TASK

    with ExpertEpisodes(TOY_TASK, action_noise=0.1) as source:
        episodes = list(itertools.islice(source.episodes(5), 2))
    assert [e.seed for e in episodes] == [5, 6] and all(e.success for e in episodes)
    first = episodes[0]
    assert sorted(first.data) == ["action", "pos", "target_xy"]
    assert first.data["action"].dtype == np.float32
    assert len({len(v) for v in first.data.values()}) == 1  # one row per step
    assert first.meta == {"seed": 5, "success": 1, "expert_mode": source.modes.index(first.mode)}
    with ExpertEpisodes(TOY_TASK, action_noise=0.1) as again:
        replay = next(again.episodes(6))
    np.testing.assert_array_equal(replay.data["pos"], episodes[1].data["pos"])
    with ExpertEpisodes(TOY_TASK) as source, pytest.raises(ValueError, match="evaluation seeds"):
        next(source.episodes(EVAL_SEED_START))
