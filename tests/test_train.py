"""Train and evaluate through the real scripts: smoke run, exact resume, checkpoint errors."""

import contextlib
import json

import numpy as np
import pytest
import torch

from dplite import envs
from dplite.data.dataset import WindowDataset
from dplite.data.replay_buffer import ReplayBuffer
from dplite.data.sampler import split_episodes
from dplite.envs.options import EnvOptions
from dplite.envs.rollout import wilson_interval
from dplite.envs.tasks import UnknownTaskError
from dplite.policy.checkpoint import CheckpointError
from dplite.policy.diffusion import DiffusionPolicy, PolicyConfig
from dplite.policy.normalizer import Normalizer
from dplite.scripts import collect, train
from dplite.scripts import eval as eval_script


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pusht.zarr"
    collect.main(collect.Config(episodes=3, out=path, progress=False))
    return path


def _cfg(dataset, out, **kw):
    base = dict(
        dataset=dataset,
        out=out,
        down_dims=(16, 32, 64),
        diffusion_step_embed_dim=16,
        batch_size=8,
        steps=2,
        warmup_steps=1,
        log_every=1,
        save_every=1,
        eval_every=-1,
        val_ratio=0.0,
        progress=False,
    )
    return train.Config(**{**base, **kw})


def test_two_step_train_then_one_episode_eval(dataset, tmp_path):
    summary = train.main(_cfg(dataset, tmp_path / "run"))
    assert summary["step"] == 2
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2] and all(r["loss"] > 0 for r in lines)
    results = tmp_path / "results.json"
    out = eval_script.main(
        eval_script.Config(
            checkpoint=tmp_path / "run",
            episodes=1,
            inference_steps=2,
            videos=1,
            json=results,
            video_dir=tmp_path / "videos",
            progress=False,
        )
    )
    written = json.loads(results.read_text())
    assert written == json.loads(json.dumps(out))
    assert written["episodes"] == 1 and written["seeds"] == [envs.EVAL_SEED_START]
    # a policy trained for 2 steps cannot bring the T within 2 px and 2 degrees of the goal:
    # the episode fails and runs to the 300-step time limit, with no env error
    assert written["success_rate"] == 0.0 and written["successes"] == [False]
    assert written["mean_steps"] == 300 and written["errors"] == []
    assert 0 <= written["mean_max_reward"] < 1
    assert written["task"] == "pusht" and written["env_id"] == "PushT-v0"
    assert written["sampler"] == "ddim" and written["inference_steps"] == 2
    assert written["train_step"] == 2 and written["wall_time_s"] > 0
    (video,) = written["videos"]
    assert (tmp_path / "videos").is_dir() and video.endswith(".mp4")


def test_eval_pools_noise_seeds(dataset, tmp_path, monkeypatch):
    """--noise-seeds N is N single-seed evaluations pooled: the same episodes, each seed's rate
    listed, the pooled numbers the episode-weighted means of the separate runs'."""
    train.main(_cfg(dataset, tmp_path / "run"))
    used = []  # the noise seed of each evaluation
    real = eval_script.evaluate_policy
    monkeypatch.setattr(
        eval_script,
        "evaluate_policy",
        lambda actor, *a, **kw: used.append(actor.noise_seed) or real(actor, *a, **kw),
    )

    def run(**kw):
        return eval_script.main(
            eval_script.Config(
                checkpoint=tmp_path / "run",
                env=EnvOptions(max_episode_steps=20),
                episodes=2,
                inference_steps=2,
                videos=0,
                progress=False,
                **kw,
            )
        )

    pooled = run(seed=3, noise_seeds=2)
    single = [run(seed=3), run(seed=4)]
    assert used == [3, 4, 3, 4]
    assert pooled["noise_seeds"] == [3, 4] and single[1]["noise_seeds"] == [4]
    assert pooled["episodes"] == 4 and pooled["seeds"] == single[0]["seeds"] + single[1]["seeds"]
    assert pooled["successes"] == single[0]["successes"] + single[1]["successes"]
    assert pooled["success_by_noise_seed"] == [r["success_rate"] for r in single]
    assert single[0]["success_by_noise_seed"] == [single[0]["success_rate"]]
    # rate and interval are over the 4 pooled episodes, not the first run's 2
    wins = sum(pooled["successes"])
    assert pooled["success_rate"] == wins / 4
    assert pooled["success_ci95"] == pytest.approx(list(wilson_interval(wins, 4)))
    assert pooled["success_ci95"] != pytest.approx(single[0]["success_ci95"])
    assert pooled["mean_max_reward"] == pytest.approx(
        np.mean([r["mean_max_reward"] for r in single])
    )
    with pytest.raises(ValueError, match="--noise-seeds"):
        eval_script.Config(checkpoint=tmp_path, noise_seeds=0)


@contextlib.contextmanager
def killed_in_training_step(n: int, monkeypatch):
    """A KeyboardInterrupt in the n-th training loss (validation runs the EMA copy, in eval
    mode, and is not counted)."""
    calls = {"n": 0}
    real_loss = DiffusionPolicy.compute_loss

    def dying_loss(self, batch, **kwargs):
        if self.training:
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt("killed")
        return real_loss(self, batch, **kwargs)

    monkeypatch.setattr(DiffusionPolicy, "compute_loss", dying_loss)
    try:
        yield
    finally:
        monkeypatch.setattr(DiffusionPolicy, "compute_loss", real_loss)


def test_killed_run_resumes_exactly(dataset, tmp_path, monkeypatch):
    cfg = _cfg(dataset, tmp_path / "ref", steps=4, save_every=2)
    reference = train.setup(cfg)
    reference.run()

    # the same run, killed during step 3 (after the step-2 checkpoint was written)
    killed_cfg = _cfg(dataset, tmp_path / "killed", steps=4, save_every=2)
    with pytest.raises(KeyboardInterrupt), killed_in_training_step(3, monkeypatch):
        train.setup(killed_cfg).run()
    ckpt = json.loads((tmp_path / "killed" / "checkpoints" / "latest.json").read_text())
    assert ckpt["step"] == 2

    resumed = train.setup(killed_cfg)
    assert resumed.try_resume() and resumed.step == 2 and resumed.ema.step == 2
    assert resumed.opt.state_dict()["state"][0]["step"].item() == 2
    resumed.run()
    assert resumed.step == 4
    for a, b in zip(resumed.policy.parameters(), reference.policy.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(resumed.ema.model.parameters(), reference.ema.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert resumed.opt.state_dict()["state"][0]["step"].item() == 4


def test_corrupt_checkpoint_gives_clear_error(dataset, tmp_path):
    train.main(_cfg(dataset, tmp_path / "run", steps=1))
    weights = tmp_path / "run" / "checkpoints" / "step_0000001" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        eval_script.main(
            eval_script.Config(checkpoint=tmp_path / "run", episodes=1, progress=False)
        )
    with pytest.raises(CheckpointError, match="neither a policy folder"):
        eval_script.main(eval_script.Config(checkpoint=tmp_path, episodes=1, progress=False))


def test_bad_train_config_refused(dataset, tmp_path):
    with pytest.raises(UnknownTaskError, match="unknown task 'pushy'.*pusht"):
        train.setup(_cfg(dataset, tmp_path, env=EnvOptions(task="pushy")))
    with pytest.raises(ValueError, match="action anchor 'agent_pos'.*not among.*\\['keypoint'\\]"):
        train.setup(_cfg(dataset, tmp_path, obs_keys=("keypoint",)))
    with pytest.raises(ValueError, match="divisible"):
        train.setup(_cfg(dataset, tmp_path, horizon=10))


# ------------------------------------------------------------------ action anchor
def test_anchor_then_unanchor_is_exact():
    """normalize(action - anchor) -> unnormalize + anchor gives the action back, and the anchor
    is the newest observation however long the history."""
    cfg = PolicyConfig(obs_shapes={"agent_pos": (2,)}, action_anchor="agent_pos", horizon=8,
                       n_action_steps=4, down_dims=(8, 16), diffusion_step_embed_dim=8)  # fmt: skip
    lo = torch.linspace(-40, -10, 8)[:, None].expand(8, 2)  # (T, Da) per chunk index
    stats = {"agent_pos": {"min": np.zeros(2), "max": np.full(2, 512.0)},
             "action": {"min": lo.numpy(), "max": (lo + 60).numpy()}}  # fmt: skip
    policy = DiffusionPolicy(cfg, Normalizer.from_stats(stats))
    history = torch.tensor([[[1.0, 2.0], [100.0, 200.0], [300.0, 400.0]]])  # (B, 3 > To, 2)
    anchor = policy.anchor({"agent_pos": history})
    torch.testing.assert_close(anchor, torch.tensor([[[300.0, 400.0]]]))
    action = anchor + lo[None] + torch.rand(1, 8, 2) * 60  # (B, T, Da) inside the range
    x0 = policy.normalizer.normalize("action", action - anchor)
    assert x0.abs().max() <= 1 + 1e-6
    back = policy.normalizer.unnormalize("action", x0) + anchor
    torch.testing.assert_close(back, action, rtol=0, atol=1e-4)


def test_anchored_windows_near_episode_ends(tmp_path):
    """Hand-computed relative actions for every window of a ramp episode, padded ends
    included: the anchor is the window's newest observation (row To - 1), the padded rows
    repeat the first / last frame."""
    rb = ReplayBuffer.create(tmp_path / "ramp.zarr")
    L, T, To, Ta = 6, 4, 2, 2
    t = np.arange(L, dtype=np.float32)
    pos = np.stack([10 * t, np.zeros(L, np.float32)], 1)  # (L, 2)
    act = np.stack([10 * t + 5, np.ones(L, np.float32)], 1)  # (L, 2)
    rb.add_episode({"agent_pos": pos, "action": act})
    data = WindowDataset(tmp_path / "ramp.zarr", obs_keys=("agent_pos",), horizon=T,
                         n_obs_steps=To, n_action_steps=Ta, val_ratio=0.0,
                         obs_steps_only=True, pad_after=Ta - 1)  # fmt: skip
    starts = range(-(To - 1), L - T + Ta)  # -1 .. 3: windows reach Ta - 1 rows past the end
    assert len(data) == len(starts)
    batch = data.get_batch(np.arange(len(data)))
    rel = (batch["action"] - batch["obs"]["agent_pos"][:, To - 1 : To]).numpy()  # (N, T, 2)
    expected = np.array(
        [[[10 * np.clip(s + j, 0, L - 1) + 5 - 10 * (s + To - 1), 1.0] for j in range(T)]
         for s in starts]
    )  # fmt: skip
    np.testing.assert_allclose(rel, expected)
    stats = train.anchored_action_stats(data, "agent_pos", To)
    np.testing.assert_allclose(stats["min"], expected.min(0))
    np.testing.assert_allclose(stats["max"], expected.max(0))


def test_image_policy_trains_and_evaluates_through_the_scripts(tmp_path):
    """PushT with camera frames: collect --images, train on img + agent_pos (the camera gets a
    small CNN, the normalizer covers only the low-dim keys), evaluate from the checkpoint alone
    (the env is switched to image mode because the policy asks for img)."""
    data = tmp_path / "pusht_img.zarr"
    collect.main(collect.Config(episodes=2, out=data, images=True, progress=False))
    run = tmp_path / "run"
    cfg = _cfg(data, run, obs_keys=("img", "agent_pos"), image_crop=(84, 84), batch_size=4)
    trainer = train.setup(cfg)
    pcfg = trainer.policy.cfg
    assert set(pcfg.cameras) == {"img"} and pcfg.cameras["img"].crop_size == (84, 84)
    assert pcfg.obs_shapes["img"] == (96, 96, 3)
    assert "img" not in trainer.policy.normalizer.keys
    # the camera's CNN is optimised with the UNet
    optimised = {id(p) for group in trainer.opt.param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in trainer.policy.obs_encoder.parameters())
    before = [p.detach().clone() for p in trainer.policy.obs_encoder.parameters()]
    trainer.run()
    after = list(trainer.policy.obs_encoder.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    out = eval_script.main(
        eval_script.Config(
            checkpoint=run,
            env=EnvOptions(max_episode_steps=5),
            episodes=1,
            inference_steps=2,
            videos=0,
            progress=False,
        )
    )
    assert out["episodes"] == 1 and out["errors"] == [] and out["mean_steps"] == 5


# ---------------------------------------------------------------- resuming with other settings
def test_resume_with_changed_settings_is_refused_naming_the_fields(dataset, tmp_path):
    run = tmp_path / "run"
    train.main(_cfg(dataset, run, steps=2))
    recorded = (run / "config.json").read_text()
    with pytest.raises(ValueError) as e:
        train.main(_cfg(dataset, run, steps=2, down_dims=(8, 16, 32), lr=5e-4))
    msg = str(e.value)
    assert "down_dims: [16, 32, 64] -> [8, 16, 32]" in msg and "lr: 0.001 -> 0.0005" in msg
    assert "steps" not in msg  # only what differs
    assert (run / "config.json").read_text() == recorded  # nothing was overwritten
    with pytest.raises(ValueError, match=r"(?s)steps: 2 -> 4.*--extend-steps"):
        train.main(_cfg(dataset, run, steps=4))
    with pytest.raises(ValueError, match="warmup_steps: 1 -> 2") as e:
        train.main(_cfg(dataset, run, steps=2, warmup_steps=2))
    assert "--extend-steps" not in str(e.value)  # the hint is for --steps only
    # logging, evaluation cadence and progress may change; the run goes on from step 2
    summary = train.main(_cfg(dataset, run, steps=2, log_every=5, eval_every=-1, progress=True))
    assert summary["step"] == 2


def test_extend_steps_lays_the_schedule_over_the_new_total(dataset, tmp_path):
    run = tmp_path / "run"
    train.main(_cfg(dataset, run, steps=4, warmup_steps=1))
    summary = train.main(_cfg(dataset, run, steps=8, warmup_steps=1, extend_steps=True))
    assert summary["step"] == 8
    lrs = {
        r["step"]: r["lr"]
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    }
    peak = 1e-3
    # after step 4 of a 4-step schedule the LR was 0; resumed on an 8-step one it is that
    # schedule's value at step 5: 0.5 (1 + cos(pi 4 / 7)) of the peak, then down to 0 at 8
    assert lrs[4] == pytest.approx(0.0, abs=1e-12)
    assert lrs[5] == pytest.approx(peak * 0.5 * (1 + np.cos(np.pi * 4 / 7)), rel=1e-9)
    assert lrs[8] == pytest.approx(0.0, abs=1e-12)


def test_every_training_seed_trains_on_the_same_episodes(tmp_path):
    data = tmp_path / "d.zarr"
    collect.main(collect.Config(episodes=6, out=data, progress=False))
    masks = [
        train.setup(
            _cfg(data, tmp_path / f"s{seed}", seed=seed, val_ratio=0.34)
        ).rng_state.data.train_mask
        for seed in (0, 1, 2)
    ]
    assert masks[0].sum() == 4  # 2 of 6 episodes held out
    assert all((m == masks[0]).all() for m in masks)
    # ... which it would not be if the split followed --seed (seeds 0 and 1 split differently)
    assert not (split_episodes(6, 0.34, 0)[0] == split_episodes(6, 0.34, 1)[0]).all()
    cfg = _cfg(data, tmp_path / "x", val_ratio=0.34, split_seed=1)
    assert (train.setup(cfg).rng_state.data.train_mask == split_episodes(6, 0.34, 1)[0]).all()


# ---------------------------------------------------------------- camera policies: own streams
@pytest.fixture(scope="module")
def image_dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "pusht_img.zarr"
    collect.main(collect.Config(episodes=3, out=path, images=True, progress=False))
    return path


def _camera_cfg(data, out, **kw):
    base = dict(obs_keys=("img", "agent_pos"), image_crop=(84, 84), batch_size=4, steps=4,
                val_ratio=0.34, env=EnvOptions(max_episode_steps=3), eval_episodes=1)  # fmt: skip
    return _cfg(data, out, **{**base, **kw})


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


def test_camera_weights_do_not_depend_on_validation_or_rollout_checks(image_dataset, tmp_path):
    """Random crops draw from torch's global generator; validation and rollout checks must
    not, or the weights would depend on --log-every and --eval-every."""
    quiet = train.setup(_camera_cfg(image_dataset, tmp_path / "a", log_every=4, eval_every=-1))
    quiet.run()
    busy = train.setup(_camera_cfg(image_dataset, tmp_path / "b", log_every=1, eval_every=1))
    busy.run()
    logged = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert (
        sum("val_loss" in r for r in logged) == 4 and sum("eval_success" in r for r in logged) == 4
    )
    _same_weights(quiet.policy, busy.policy)
    _same_weights(quiet.ema.model, busy.ema.model)


def test_killed_camera_run_with_checks_resumes_exactly(image_dataset, tmp_path, monkeypatch):
    kw = dict(steps=4, save_every=2, log_every=1, eval_every=1)
    reference = train.setup(_camera_cfg(image_dataset, tmp_path / "ref", **kw))
    reference.run()
    with pytest.raises(KeyboardInterrupt), killed_in_training_step(3, monkeypatch):
        train.main(_camera_cfg(image_dataset, tmp_path / "killed", **kw))
    resumed = train.setup(_camera_cfg(image_dataset, tmp_path / "killed", **kw))
    resumed.run()
    assert resumed.step == 4
    _same_weights(resumed.policy, reference.policy)
    _same_weights(resumed.ema.model, reference.ema.model)
