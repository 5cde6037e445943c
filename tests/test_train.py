"""Train and evaluate through the real scripts: smoke run, exact resume, checkpoint errors."""

import json

import pytest
import torch

import envs
from policy.checkpoint import CheckpointError
from policy.diffusion import DiffusionPolicy
from scripts import collect, train
from scripts import eval as eval_script


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
    assert written["success_rate"] in (0.0, 1.0) and 0 <= written["mean_max_reward"] <= 1
    assert written["sampler"] == "ddim" and written["inference_steps"] == 2
    assert written["train_step"] == 2 and written["wall_time_s"] > 0
    (video,) = written["videos"]
    assert (tmp_path / "videos").is_dir() and video.endswith(".mp4")


def test_killed_run_resumes_exactly(dataset, tmp_path, monkeypatch):
    cfg = _cfg(dataset, tmp_path / "ref", steps=4, save_every=2)
    reference = train.Trainer(cfg)
    reference.train()

    # the same run, killed during step 3 (after the step-2 checkpoint was written)
    killed_cfg = _cfg(dataset, tmp_path / "killed", steps=4, save_every=2)
    calls = {"n": 0}
    real_loss = DiffusionPolicy.compute_loss

    def dying_loss(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real_loss(self, batch)

    monkeypatch.setattr(DiffusionPolicy, "compute_loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        train.Trainer(killed_cfg).train()
    monkeypatch.setattr(DiffusionPolicy, "compute_loss", real_loss)
    ckpt = json.loads((tmp_path / "killed" / "checkpoints" / "latest.json").read_text())
    assert ckpt["step"] == 2

    resumed = train.Trainer(killed_cfg)
    assert resumed.try_resume() and resumed.step == 2 and resumed.ema.step == 2
    assert resumed.opt.state_dict()["state"][0]["step"].item() == 2
    resumed.train()
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
    with pytest.raises(ValueError, match="unknown --task 'pushy'"):
        _cfg(dataset, tmp_path, task="pushy")
    with pytest.raises(ValueError, match="divisible"):
        train.Trainer(_cfg(dataset, tmp_path, horizon=10))
