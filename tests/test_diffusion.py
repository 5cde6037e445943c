"""DiffusionPolicy: config validation, the timing convention, save/load, and multimodality.

The multimodal test is the method's reason to exist: 2-D paths pass an obstacle on the left
or on the right with equal probability. A diffusion policy must sample both modes and almost
never the average path through the obstacle; an MSE regressor with the same network must
land in the middle.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dplite.policy.checkpoint import CheckpointError
from dplite.policy.diffusion import DiffusionPolicy, PolicyConfig
from dplite.policy.normalizer import Normalizer
from dplite.policy.unet1d import ConditionalUnet1D

SMALL = dict(down_dims=(32, 64, 128), diffusion_step_embed_dim=32, kernel_size=5, n_groups=8)


# ------------------------------------------------------------------ config validation
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(horizon=10, down_dims=(32, 64, 128)), "divisible by 2\\^\\(levels-1\\)=4"),
        (dict(horizon=16, n_obs_steps=2, n_action_steps=16), "must be <= T - To \\+ 1 = 15"),
        (dict(beta_schedule="quadratic"), "unknown beta_schedule 'quadratic'"),
        (dict(variance_type="learned"), "unknown variance_type 'learned'"),
        (dict(num_inference_steps=101, num_train_timesteps=100), "k=101 must be in \\[1, 100\\]"),
        (dict(sampler="euler"), "unknown sampler 'euler'"),
    ],
)
def test_bad_config_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PolicyConfig(**kwargs)


def test_inference_steps_above_K_refused_at_call_time():
    policy = DiffusionPolicy(PolicyConfig(obs_shapes={"s": (2,)}, **SMALL))
    with pytest.raises(ValueError, match="k=200"):
        policy.predict_action({"s": torch.zeros(1, 2, 2)}, sampler="ddpm", num_inference_steps=200)


def test_wrong_observation_shape_named():
    policy = DiffusionPolicy(PolicyConfig(obs_shapes={"s": (2,)}, **SMALL))
    with pytest.raises(ValueError, match=r"obs\['s'\] has shape \(1, 2, 3\)"):
        policy.predict_action({"s": torch.zeros(1, 2, 3)})
    with pytest.raises(ValueError, match="missing key 's'"):
        policy.predict_action({"state": torch.zeros(1, 2, 2)})


# ------------------------------------------------------------------ timing convention
def test_encode_obs_uses_the_newest_To_frames():
    policy = DiffusionPolicy(PolicyConfig(obs_shapes={"s": (2,)}, **SMALL))
    history = torch.randn(3, 5, 2)  # (B, 5 > To, 2), oldest first
    torch.testing.assert_close(
        policy.encode_obs({"s": history}), policy.encode_obs({"s": history[:, -2:]})
    )
    assert not torch.allclose(
        policy.encode_obs({"s": history}), policy.encode_obs({"s": history[:, :2]})
    )


def test_executed_actions_start_at_the_newest_observation():
    cfg = PolicyConfig(obs_shapes={"s": (2,)}, horizon=16, n_obs_steps=3, n_action_steps=6, **SMALL)
    policy = DiffusionPolicy(cfg).eval()
    out = policy.predict_action({"s": torch.randn(4, 3, 2)}, sampler="ddim", num_inference_steps=2)
    assert out["action_pred"].shape == (4, 16, 2) and out["action"].shape == (4, 6, 2)
    torch.testing.assert_close(out["action"], out["action_pred"][:, 2:8])


def test_cond_dim_matches_reference_pusht_lowdim():
    cfg = PolicyConfig(obs_shapes={"keypoint": (9, 2), "agent_pos": (2,)}, action_dim=2)
    assert cfg.global_cond_dim == 40  # (9*2 + 2) * To=2, as the reference's PushT lowdim
    n = sum(p.numel() for p in DiffusionPolicy(cfg).net.parameters())
    assert n == 65_783_298


# ------------------------------------------------------------------ persistence
def test_save_load_round_trip_gives_identical_actions(tmp_path):
    stats = {
        "s": {"min": np.array([-2.0, 0.0]), "max": np.array([2.0, 9.0])},
        "action": {"min": np.array([0.0, 0.0]), "max": np.array([512.0, 512.0])},
    }
    cfg = PolicyConfig(obs_shapes={"s": (2,)}, **SMALL)
    policy = DiffusionPolicy(cfg, Normalizer.from_stats(stats)).eval()
    policy.save_pretrained(tmp_path, metadata={"task": "toy", "step": 3})
    loaded = DiffusionPolicy.from_pretrained(tmp_path)
    assert loaded.metadata == {"task": "toy", "step": 3}
    obs = {"s": torch.randn(3, 2, 2)}
    for sampler, k in (("ddpm", 100), ("ddim", 10)):
        a = policy.predict_action(obs, sampler, k, generator=torch.Generator().manual_seed(0))
        b = loaded.predict_action(obs, sampler, k, generator=torch.Generator().manual_seed(0))
        assert torch.equal(a["action_pred"], b["action_pred"])
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in tmp_path.iterdir())


def test_corrupt_or_mismatched_checkpoint_is_refused(tmp_path):
    DiffusionPolicy(PolicyConfig(obs_shapes={"s": (2,)}, **SMALL)).save_pretrained(tmp_path / "a")
    DiffusionPolicy(PolicyConfig(obs_shapes={"s": (3,)}, **SMALL)).save_pretrained(tmp_path / "b")
    (tmp_path / "a" / "model.safetensors").replace(tmp_path / "b" / "model.safetensors")
    with pytest.raises(CheckpointError, match="has shape"):
        DiffusionPolicy.from_pretrained(tmp_path / "b")
    (tmp_path / "b" / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="invalid policy config"):
        DiffusionPolicy.from_pretrained(tmp_path / "b")
    with pytest.raises(CheckpointError, match="not found"):
        DiffusionPolicy.from_pretrained(tmp_path / "nothing")


# ------------------------------------------------------------------ multimodality
T, OBSTACLE = 16, 0.35


def _two_mode_paths(n: int, rng: np.random.Generator):
    """Paths from y=-1 to y=+1 bowing round an obstacle at the origin, left or right at random."""
    s = np.linspace(0.0, 1.0, T)
    side = rng.choice([-1.0, 1.0], size=n)
    x0 = rng.uniform(-0.1, 0.1, size=n)
    x = x0[:, None] * (1 - s) + side[:, None] * 0.8 * np.sin(math.pi * s)  # (n, T)
    y = np.broadcast_to(2 * s - 1, (n, T))
    action = np.stack([x, y], -1) + 0.01 * rng.standard_normal((n, T, 2))  # (n, T, 2)
    start = np.stack([x0, -np.ones(n)], -1)  # (n, 2)
    obs = np.repeat(start[:, None], 2, axis=1)  # (n, To=2, 2)
    return torch.tensor(obs, dtype=torch.float32), torch.tensor(action, dtype=torch.float32)


def _mode_fractions(paths: torch.Tensor) -> tuple[float, float, float]:
    mid_x = paths[:, T // 2 - 1 : T // 2 + 1, 0].mean(1)  # x where the path passes the obstacle
    left = (mid_x < -OBSTACLE).float().mean().item()
    right = (mid_x > OBSTACLE).float().mean().item()
    return left, right, 1.0 - left - right


def test_diffusion_samples_both_modes_where_mse_regression_averages():
    torch.manual_seed(0)
    obs, action = _two_mode_paths(1024, np.random.default_rng(0))
    stats = {
        "pos": {"min": obs.amin((0, 1)).numpy(), "max": obs.amax((0, 1)).numpy()},
        "action": {"min": action.amin((0, 1)).numpy(), "max": action.amax((0, 1)).numpy()},
    }
    net_kw = dict(down_dims=(16, 32, 64), diffusion_step_embed_dim=32)
    cfg = PolicyConfig(
        obs_shapes={"pos": (2,)}, horizon=T, n_obs_steps=2, n_action_steps=8, **net_kw
    )
    policy = DiffusionPolicy(cfg, Normalizer.from_stats(stats))
    regressor = ConditionalUnet1D(2, cfg.global_cond_dim, **net_kw)
    steps = 600
    opts = [torch.optim.AdamW(m.parameters(), lr=3e-3) for m in (policy, regressor)]
    scheds = [
        torch.optim.lr_scheduler.LambdaLR(o, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
        for o in opts
    ]
    for _ in range(steps):
        idx = torch.randint(0, len(obs), (128,))
        batch = {"obs": {"pos": obs[idx]}, "action": action[idx]}
        # the regressor sees the same conditioning and a fixed input, and is fit by plain MSE
        cond = policy.encode_obs(batch["obs"]).detach()
        target = policy.normalizer.normalize("action", batch["action"])
        losses = (
            policy.compute_loss(batch),
            F.mse_loss(regressor(torch.zeros_like(target), 0, cond), target),
        )
        for loss, opt, sched in zip(losses, opts, scheds, strict=True):
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()

    test_obs = {"pos": obs[:200]}
    policy.eval()
    for sampler, k in (("ddim", 10), ("ddpm", 100)):
        gen = torch.Generator().manual_seed(1)
        paths = policy.predict_action(test_obs, sampler, k, generator=gen)["action_pred"]
        left, right, middle = _mode_fractions(paths)
        assert left >= 0.3 and right >= 0.3, (sampler, left, right)
        assert middle < 0.1, (sampler, middle)
    with torch.no_grad():
        cond = policy.encode_obs(test_obs)
        reg = policy.normalizer.unnormalize("action", regressor(torch.zeros(200, T, 2), 0, cond))
    left, right, middle = _mode_fractions(reg)
    assert middle > 0.9, (left, right, middle)


def test_sampler_defaults_follow_the_config():
    policy = DiffusionPolicy(PolicyConfig(obs_shapes={"s": (2,)}, num_inference_steps=5, **SMALL))
    assert policy.sampler_settings() == ("ddim", 5)
    assert policy.sampler_settings("ddpm") == ("ddpm", 100)  # full DDPM: k = K
    assert policy.sampler_settings("ddim", 20) == ("ddim", 20)
