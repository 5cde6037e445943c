"""Training-time real-time chunking (PolicyConfig.train_max_delay, prefix_mode "conditioned"):
committed rows enter the network clean and leave the loss, hand-checked; sampling gives the
network the clean prefix in every step; prefixes training never showed are refused; dp-train
records the setting and dp-eval runs the policy under a delay."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from dplite.envs import EVAL_SEED_START
from dplite.envs.evaluate import evaluate_policy
from dplite.envs.rollout import ChunkExecution
from dplite.policy.actor import PolicyActor
from dplite.policy.diffusion import DiffusionPolicy, PolicyConfig
from dplite.scripts import collect, train
from dplite.scripts import eval as eval_script
from tests.toy_envs import TOY_TASK

SMALL = dict(down_dims=(8, 16), diffusion_step_embed_dim=8, kernel_size=3, n_groups=4)


def _policy(**kw):
    torch.manual_seed(0)
    cfg = dict(obs_shapes={"s": (2,)}, horizon=8, n_action_steps=4, train_max_delay=3, **SMALL)
    return DiffusionPolicy(PolicyConfig(**{**cfg, **kw}))


class Spy(nn.Module):
    """Wraps a network and keeps every input chunk it is given."""

    def __init__(self, net):
        super().__init__()
        self.net, self.inputs = net, []

    def forward(self, x, t, cond):
        self.inputs.append(x.detach().clone())
        return self.net(x, t, cond)


def _batch(B=3):
    g = torch.Generator().manual_seed(4)
    return {
        "obs": {"s": torch.randn(B, 2, 2, generator=g)},
        "action": torch.randn(B, 8, 2, generator=g),
    }


def test_committed_rows_enter_clean_and_leave_the_loss():
    policy = _policy()
    spy = policy.net = Spy(policy.net)
    batch, noise = _batch(), torch.randn(3, 8, 2)
    t, delays = torch.tensor([10, 50, 99]), torch.tensor([0, 2, 3])
    loss = policy.compute_loss(batch, noise=noise, timesteps=t, delays=delays)
    (x_in,) = spy.inputs
    _, x0 = policy.training_chunk(batch)
    x_t = policy.schedule.add_noise(x0, noise, t)
    # To = 2: chunk 1 has rows 1, 2 committed, chunk 2 rows 1, 2, 3; chunk 0 none
    committed = {(1, 1), (1, 2), (2, 1), (2, 2), (2, 3)}
    with torch.no_grad():
        out = spy.net(x_in, t, policy.encode_obs(batch["obs"]))
    means = []  # each chunk's mean over its free entries; the loss is their mean
    for b in range(3):
        sq, count = 0.0, 0
        for i in range(8):
            expect = x0[b, i] if (b, i) in committed else x_t[b, i]
            assert torch.equal(x_in[b, i], expect), (b, i)
            if (b, i) not in committed:
                sq += float(((out[b, i] - noise[b, i]) ** 2).sum())
                count += 2
        means.append(sq / count)
    assert loss.item() == pytest.approx(sum(means) / 3, rel=1e-5)
    # split in two halves (two DDP ranks), the mean of the halves' losses is the whole one's
    halves = [
        policy.compute_loss(
            {"obs": {"s": batch["obs"]["s"][r]}, "action": batch["action"][r]},
            noise=noise[r], timesteps=t[r], delays=delays[r],
        )
        for r in (slice(0, 1), slice(1, 3))
    ]  # fmt: skip
    assert (halves[0] + 2 * halves[1]).item() / 3 == pytest.approx(loss.item(), rel=1e-5)


def test_the_noise_of_committed_rows_changes_nothing_and_delay_zero_is_the_plain_loss():
    policy, batch, t = _policy(), _batch(), torch.tensor([30, 60, 90])
    noise = torch.randn(3, 8, 2)
    other = noise.clone()
    other[:, 1:4] = torch.randn(3, 3, 2)  # rows 1-3: committed for d = 3
    d3 = torch.full((3,), 3)
    a = policy.compute_loss(batch, noise=noise, timesteps=t, delays=d3)
    b = policy.compute_loss(batch, noise=other, timesteps=t, delays=d3)
    assert torch.equal(a, b)
    plain = DiffusionPolicy(PolicyConfig(**{**policy.cfg.to_dict(), "train_max_delay": 0}))
    plain.load_state_dict(policy.state_dict())
    zero = policy.compute_loss(batch, noise=noise, timesteps=t, delays=torch.zeros(3, dtype=int))
    assert zero.item() == pytest.approx(plain.compute_loss(batch, noise=noise, timesteps=t).item())


@pytest.mark.parametrize("sampler,k", [("ddim", 3), ("ddpm", 4)])
def test_a_conditioned_prefix_reaches_the_network_clean_in_every_step(sampler, k):
    policy = _policy().eval()
    spy = policy.net = Spy(policy.net)
    obs = {"s": torch.randn(2, 2, 2)}
    # chunk rows 1, 2 committed (weight 1), row 3 soft: conditioning ignores soft rows
    prefix = torch.tensor([[[0.0, 0.0], [0.7, 0.2], [2.5, -0.3], [9.0, 9.0]]] * 2)
    w = [0.0, 1.0, 1.0, 0.5]
    out = policy.predict_action(
        obs, sampler, k, prefix=prefix, prefix_weights=w, prefix_mode="conditioned"
    )
    target = policy.normalizer.normalize("action", prefix)  # unanchored policy
    assert len(spy.inputs) == k
    for x in spy.inputs:
        assert torch.equal(x[:, 1:3], target[:, 1:3])
        assert not torch.equal(x[:, 3], target[:, 3]) and not torch.equal(x[:, 0], target[:, 0])
    assert torch.equal(out["action_pred"][:, 1:3], prefix[:, 1:3])


def test_prefixes_training_never_showed_are_refused():
    obs, prefix = {"s": torch.zeros(1, 2, 2)}, torch.zeros(1, 5, 2)
    with pytest.raises(ValueError, match="needs a policy trained with committed prefixes"):
        _policy(train_max_delay=0).predict_action(obs, prefix=prefix, prefix_mode="conditioned")
    policy = _policy().eval()
    for w in ([1, 1, 0, 0, 0], [0, 1, 1, 1, 1], [0, 1, 0, 1, 0]):  # row 0; 4 rows > 3; a gap
        with pytest.raises(ValueError, match="must be chunk rows To - 1 = 1 onward, at most"):
            policy.predict_action(obs, prefix=prefix, prefix_weights=w, prefix_mode="conditioned")
    distilled = _policy(consistency_timesteps=(90, 0), sampler="consistency", num_inference_steps=1)
    with pytest.raises(ValueError, match="samples with ddpm or ddim, not 'consistency'"):
        distilled.predict_action(obs, prefix=prefix, prefix_mode="conditioned")
    with pytest.raises(ValueError, match=r"train_max_delay=7 must be in \[0, T - To = 6\]"):
        _policy(train_max_delay=7)
    with pytest.raises(ValueError, match="train_max_delay needs objective 'diffusion'"):
        _policy(objective="mse")


def test_soft_rows_alone_leave_a_conditioned_rollout_as_it_was_without_delay():
    """d = 0 with a blend: the rollout passes a prefix of soft rows only (weights < 1), which
    "conditioned" ignores, so every action equals the rollout without delay."""
    torch.manual_seed(0)
    cfg = PolicyConfig(
        obs_shapes={"pos": (2,), "target_xy": (2,)},
        horizon=8,
        n_action_steps=4,
        num_inference_steps=2,
        train_max_delay=2,
        **SMALL,
    )
    policy, seeds = DiffusionPolicy(cfg).eval(), [EVAL_SEED_START, EVAL_SEED_START + 1]
    _, today = evaluate_policy(PolicyActor(policy, "ddim", 2), TOY_TASK, seeds)
    actor = PolicyActor(policy, "ddim", 2, rtc_method="conditioned")
    execution = ChunkExecution("rtc", 0, blend_steps=3)
    _, runs = evaluate_policy(actor, TOY_TASK, seeds, execution=execution)
    assert any(len(a.actions) > 4 for a in runs)  # so later chunks got prefixes
    for a, b in zip(today, runs, strict=True):
        np.testing.assert_array_equal(np.stack(a.actions), np.stack(b.actions))


def test_dp_train_records_the_delay_and_dp_eval_runs_it_under_that_delay(tmp_path):
    data = tmp_path / "pusht.zarr"
    collect.main(collect.Config(episodes=2, out=data, progress=False))
    cfg = train.Config(
        dataset=data,
        out=tmp_path / "run",
        down_dims=(16, 32, 64),
        diffusion_step_embed_dim=16,
        batch_size=8,
        steps=2,
        warmup_steps=1,
        eval_every=-1,
        val_ratio=0.2,
        progress=False,
        n_action_steps=4,
        train_max_delay=3,
    )
    train.main(cfg)
    step = tmp_path / "run" / "checkpoints" / "step_0000002"
    assert DiffusionPolicy.from_pretrained(step).cfg.train_max_delay == 3
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train_max_delay"] == 3
    out = eval_script.main(
        eval_script.Config(
            checkpoint=tmp_path / "run",
            episodes=1,
            inference_steps=2,
            progress=False,
            latency_steps=3,
            execution="rtc",
            rtc_method="conditioned",
        )
    )
    assert out["rtc_method"] == "conditioned" and out["latency_steps"] == 3
    assert out["errors"] == [] and out["mean_steps"] == 300
    # a delay beyond the trained one, or a plain policy, is refused before any episode
    with pytest.raises(ValueError, match=r"delay of 4 steps commits more rows .*train_max_delay=3"):
        eval_script.main(
            eval_script.Config(
                checkpoint=tmp_path / "run", episodes=1, progress=False, latency_steps=4,
                execution="rtc", rtc_method="conditioned",
            )
        )  # fmt: skip


def test_resuming_a_plain_run_with_a_delay_is_refused(tmp_path):
    data = tmp_path / "pusht.zarr"
    collect.main(collect.Config(episodes=2, out=data, progress=False))
    base = dict(
        dataset=data, out=tmp_path / "run", down_dims=(16, 32, 64), diffusion_step_embed_dim=16,
        batch_size=8, steps=2, warmup_steps=1, eval_every=-1, val_ratio=0.0, progress=False,
    )  # fmt: skip
    train.main(train.Config(**base))
    recorded = tmp_path / "run" / "config.json"
    rec = json.loads(recorded.read_text())
    del rec["train_max_delay"]  # as a run made before the option wrote it
    recorded.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="train_max_delay: 0 -> 2"):
        train.main(train.Config(**base, train_max_delay=2))
