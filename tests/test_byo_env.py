"""Bring your own environment: a gymnasium env the package has never heard of goes
collect -> train -> eval through the command lines, with --env-import and nothing else."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro

from dplite.data.replay_buffer import ReplayBuffer
from dplite.envs import EVAL_SEED_START
from dplite.envs.evaluate import evaluate_policy
from dplite.envs.tasks import UnknownTaskError, task_from_metadata
from dplite.policy.actor import PolicyActor
from dplite.policy.diffusion import DiffusionPolicy
from dplite.scripts import collect, train
from dplite.scripts import eval as eval_script

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--env-id", "ToyReach-v0", "--env-import", "tests.toy_envs"]
EXPERT = ["--expert", "tests.toy_envs:ToyReachExpert"]
SMALL = ["--down-dims", "16", "32", "64", "--diffusion-step-embed-dim", "16", "--batch-size", "8",
         "--steps", "2", "--warmup-steps", "1", "--log-every", "1", "--save-every", "1",
         "--eval-every", "-1", "--val-ratio", "0", "--no-progress"]  # fmt: skip


def cli(module, args):
    return module.main(tyro.cli(module.Config, args=[str(a) for a in args]))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A toy dataset and a 2-step policy trained on it, through the CLIs."""
    root = tmp_path_factory.mktemp("toy")
    data, out = root / "toy.zarr", root / "run"
    summary = cli(collect, [*TOY, *EXPERT, "--episodes", 4, "--out", data, "--no-progress"])
    assert summary["episodes"] == 4 and summary["success_rate"] == 1.0
    cli(train, ["--dataset", data, "--out", out, *TOY, *SMALL])
    return root, data, out


def test_collect_flattens_nested_dict_observations(run):
    _, data, _ = run
    rb = ReplayBuffer.open(data)
    assert sorted(rb.keys) == ["action", "pos", "target_xy"]
    assert rb["action"].dtype == np.float32 and rb["pos"].shape[1:] == (2,)
    assert rb.attrs["env"]["env_id"] == "ToyReach-v0"
    assert set(rb.attrs["expert_modes"]) <= {"speed-0.1", "speed-0.15"}
    # timing convention: replaying episode 0's actions from its seed reproduces its states
    import gymnasium as gym

    ep, seed = rb.get_episode(0), int(rb.get_meta("seed")[0])
    env = gym.make("ToyReach-v0")
    obs, _ = env.reset(seed=seed)
    for t, a in enumerate(ep["action"]):
        np.testing.assert_array_equal(obs["pos"], ep["pos"][t])
        obs, _, terminated, _, info = env.step(a)
    assert terminated and info["success"]


def test_policy_records_its_env_and_uses_every_key_with_absolute_actions(run):
    _, _, out = run
    policy = DiffusionPolicy.from_pretrained(out / "checkpoints" / "step_0000002")
    assert sorted(policy.cfg.obs_shapes) == ["pos", "target_xy"]
    assert policy.cfg.action_anchor is None
    env = policy.metadata["env"]
    assert (env["env_id"], env["env_imports"], env["success_key"]) == (
        "ToyReach-v0", ["tests.toy_envs"], "is_success",
    )  # fmt: skip


def test_eval_from_the_checkpoint_alone_in_a_fresh_process(run, tmp_path):
    """A new interpreter that never imported the toy module rebuilds the env from the
    checkpoint: the result equals the in-process evaluation's."""
    _, _, out = run
    args = ["--checkpoint", out, "--episodes", 2, "--videos", 1, "--video-dir", tmp_path,
            "--inference-steps", 2, "--no-progress"]  # fmt: skip
    here = cli(eval_script, [*args, "--json", tmp_path / "here.json"])
    env = {**os.environ, "MUJOCO_GL": "egl", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        "-m",
        "dplite.scripts.eval",
        *map(str, args),
        "--json",
        str(tmp_path / "there.json"),
    ]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
    there = json.loads((tmp_path / "there.json").read_text())
    for key in ("env_id", "seeds", "successes", "mean_max_reward", "mean_steps", "errors"):
        assert there[key] == pytest.approx(here[key]), key
    assert here["env_id"] == "ToyReach-v0" and here["seeds"] == [
        EVAL_SEED_START,
        EVAL_SEED_START + 1,
    ]
    assert len(here["videos"]) == 1 and Path(here["videos"][0]).is_file()


def test_a_seed_gives_the_same_episode_alone_or_in_a_batch(run):
    _, _, out = run
    policy = DiffusionPolicy.from_pretrained(out / "checkpoints" / "step_0000002")
    spec = task_from_metadata(policy.metadata)
    seeds = [EVAL_SEED_START + i for i in range(4)]
    # DDPM draws fresh noise every step: the strongest test of per-episode noise streams
    _, batched = evaluate_policy(PolicyActor(policy, "ddpm", 10), spec, seeds)
    _, alone = evaluate_policy(PolicyActor(policy, "ddpm", 10), spec, seeds[2:3])
    assert alone[0].seed == batched[2].seed
    assert alone[0].steps == batched[2].steps
    assert alone[0].final_reward == pytest.approx(batched[2].final_reward, abs=1e-4)
    # the same episode seed with another noise seed gets other noise: other actions
    obs = {"pos": np.zeros((1, 2, 2), np.float32), "target_xy": np.ones((1, 2, 2), np.float32)}
    episode = np.array([seeds[0]])
    a0 = PolicyActor(policy, "ddpm", 10, noise_seed=0)(obs, episode)
    again = PolicyActor(policy, "ddpm", 10, noise_seed=0)(obs, episode)
    a1 = PolicyActor(policy, "ddpm", 10, noise_seed=1)(obs, episode)
    np.testing.assert_array_equal(a0, again)
    assert np.abs(a0 - a1).max() > 1e-3


def test_max_episode_steps_reaches_the_eval_env(run, tmp_path):
    _, _, out = run
    s = cli(eval_script, ["--checkpoint", out, "--episodes", 2, "--videos", 0, "--no-progress",
                          "--inference-steps", 2, "--max-episode-steps", 5])  # fmt: skip
    assert s["mean_steps"] == 5 and s["successes"] == [False, False] and s["errors"] == []


def test_env_errors_fail_their_episode_only_and_are_reported(run, tmp_path):
    _, _, out = run
    bad = EVAL_SEED_START + 1
    s = cli(eval_script, ["--checkpoint", out, "--episodes", 3, "--videos", 0, "--no-progress",
                          "--inference-steps", 2, "--json", tmp_path / "r.json",
                          "--env-kwargs", json.dumps({"fail_seed": bad, "nan_seed": bad + 1})])  # fmt: skip
    written = json.loads((tmp_path / "r.json").read_text())
    assert [e["seed"] for e in written["errors"]] == [bad, bad + 1]
    assert "RuntimeError: simulated physics blow-up" in written["errors"][0]["error"]
    assert "non-finite observation in ['pos']" in written["errors"][1]["error"]
    assert written["successes"][1:] == [False, False] and s["episodes"] == 3
    # the failing episodes took 2 steps (the env raised in its 3rd) and 1 (NaN in the 2nd
    # observation); the healthy one ran to its time limit (60 steps) or to success
    healthy_steps = round(3 * written["mean_steps"]) - (2 + 1)
    assert healthy_steps == 60 or written["successes"][0]


def test_policy_keys_the_env_does_not_emit_are_refused(run):
    _, _, out = run
    with pytest.raises(ValueError, match=r"\['pos', 'target_xy'\].*emits \['state'\]"):
        cli(eval_script, ["--checkpoint", out, "--episodes", 1, "--no-progress",
                          "--env-id", "ToyReachBox-v0"])  # fmt: skip


def test_dataset_that_does_not_fit_the_env_is_refused_before_training(run, tmp_path):
    _, data, _ = run
    with pytest.raises(
        ValueError,
        match=r"toy.zarr: has keys \['action', 'pos', 'target_xy'\].*\['keypoint', 'agent_pos'\]",
    ):
        cli(train, ["--dataset", data, "--out", tmp_path / "x", "--task", "pusht", *SMALL])
    with pytest.raises(
        ValueError, match=r"dataset .* uses observation keys \['pos'\] but .*emits \['state'\]"
    ):
        cli(train, ["--dataset", data, "--out", tmp_path / "y", "--env-id", "ToyReachBox-v0",
                    "--env-import", "tests.toy_envs", "--obs-keys", "pos", *SMALL])  # fmt: skip
    with pytest.raises(
        ValueError, match=r"dataset .* has actions of shape \(2,\) but .*takes \(3,\)"
    ):
        cli(train, ["--dataset", data, "--out", tmp_path / "w", *TOY, "--env-kwargs",
                    '{"action_dim": 3}', *SMALL])  # fmt: skip
    for name in "xyw":
        assert not (tmp_path / name / "checkpoints").exists()
    with pytest.raises(UnknownTaskError, match="pusht"):
        cli(train, ["--dataset", data, "--out", tmp_path / "z", "--task", "pushy", *SMALL])


def test_box_observations_become_state(tmp_path):
    data = tmp_path / "box.zarr"
    cli(collect, ["--env-id", "ToyReachBox-v0", "--env-import", "tests.toy_envs", *EXPERT,
                  "--episodes", 2, "--out", data, "--no-progress"])  # fmt: skip
    rb = ReplayBuffer.open(data)
    assert sorted(rb.keys) == ["action", "state"] and rb["state"].shape[1:] == (4,)


def test_per_row_generators_make_rows_independent_of_the_batch():
    from dplite.policy.diffusion import PolicyConfig

    torch.manual_seed(0)
    policy = DiffusionPolicy(
        PolicyConfig(
            obs_shapes={"x": (3,)},
            down_dims=(8, 16),
            diffusion_step_embed_dim=8,
            horizon=8,
            n_action_steps=4,
        )
    ).eval()
    obs = {"x": torch.randn(3, 2, 3)}
    gens = [torch.Generator().manual_seed(s) for s in (11, 12, 13)]
    batched = policy.predict_action(obs, "ddpm", 5, generator=gens)["action_pred"]
    alone = policy.predict_action(
        {"x": obs["x"][1:2]}, "ddpm", 5, generator=[torch.Generator().manual_seed(12)]
    )["action_pred"]
    torch.testing.assert_close(alone[0], batched[1], atol=1e-5, rtol=0)
    assert not torch.allclose(batched[0], batched[1])
