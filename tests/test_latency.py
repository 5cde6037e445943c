"""Chunk execution under an inference delay (envs/rollout.py) and real-time chunking's prefix
(DiffusionPolicy.predict_action, policy/samplers.py Prefix): the delayed schedule step by step
on a toy env, zero delay equal to the rollout without delay in every mode, ACT's and RTC's
weights against hand-derived values, an exactly frozen prefix, the jerk metrics by hand."""

import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
import tyro
from torch import nn

from dplite.envs import EVAL_SEED_START
from dplite.envs.evaluate import evaluate_policy
from dplite.envs.rollout import (
    ChunkExecution,
    EpisodeResult,
    action_jerk,
    ensemble_weights,
    rollout,
    rtc_prefix_weights,
    summarize,
)
from dplite.policy.actor import PolicyActor
from dplite.policy.diffusion import DiffusionPolicy, PolicyConfig
from dplite.policy.samplers import Prefix, get_sampler
from dplite.scripts import eval as eval_script
from tests.toy_envs import TOY_TASK

SMALL = dict(down_dims=(8, 16), diffusion_step_embed_dim=8, kernel_size=3, n_groups=4)
MODES = ("sync", "async", "ensemble", "rtc")


class Tape(gym.Env):
    """Records every action it is given; obs {"x": [step]}; ends after `horizon` steps."""

    observation_space = gym.spaces.Dict({"x": gym.spaces.Box(0, 1e4, (1,), np.float64)})
    action_space = gym.spaces.Box(-1e4, 1e4, (1,), np.float64)

    def __init__(self, horizon=14):
        self.horizon, self.tape = horizon, []

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.tape = []
        return {"x": np.zeros(1)}, {}

    def step(self, action):
        self.tape.append(float(action[0]))
        t = len(self.tape)
        return {"x": np.array([t], float)}, 0.0, False, t >= self.horizon, {}


class ChunkCounter:
    """Chunk k (the k-th call) is 100 k + j at index j, length L; records its prefixes."""

    accepts_prefix = True

    def __init__(self, length=8):
        self.length, self.calls, self.prefixes = length, 0, []

    def __call__(self, obs, seeds, prefix=None, prefix_weights=None):
        self.prefixes.append(None if prefix is None else (prefix.copy(), prefix_weights.copy()))
        chunk = 100.0 * self.calls + np.arange(self.length)  # (L,)
        self.calls += 1
        return np.broadcast_to(chunk[None, :, None], (len(seeds), self.length, 1)).copy()


def tape_of(policy, execution, n_action_steps=4, horizon=14):
    envs = []

    def make(render):
        envs.append(Tape(horizon))
        return envs[-1]

    (res,) = rollout(policy, make, [0], 1, n_action_steps, execution=execution)
    return envs[0].tape, res


# ------------------------------------------------------------------ the delayed schedule
def test_async_executes_the_previous_chunk_during_the_delay_step_by_step():
    tape, res = tape_of(ChunkCounter(), ChunkExecution("async", latency_steps=2))
    # chunk 0 runs until chunk 1 (planned at step 4) arrives at step 6, which then starts at
    # its index d = 2; chunk 2 (planned at 8) arrives at 10; chunk 3 (planned at 12) at 14
    assert tape == [0, 1, 2, 3, 4, 5, 102, 103, 104, 105, 202, 203, 204, 205]
    assert res.leads == [0] * 6 + [4] * 4 + [8] * 4
    np.testing.assert_array_equal(np.concatenate(res.actions), tape)


def test_sync_ignores_the_delay_and_a_short_chunk_holds_its_last_action():
    tape, _ = tape_of(ChunkCounter(), ChunkExecution("sync", latency_steps=3))
    assert tape == [0, 1, 2, 3, 100, 101, 102, 103, 200, 201, 202, 203, 300, 301]
    # chunks of 6 actions, Ta = d = 4: chunk 0 must cover steps 0..7 and holds index 5
    tape, _ = tape_of(ChunkCounter(length=6), ChunkExecution("async", latency_steps=4))
    assert tape[:12] == [0, 1, 2, 3, 4, 5, 5, 5, 104, 105, 105, 105]


def test_ensemble_averages_old_and_new_chunk_with_acts_weights():
    m = 0.5
    tape, res = tape_of(ChunkCounter(), ChunkExecution("ensemble", 2, ensemble_decay=m))
    w_old, w_new = 1 / (1 + math.exp(-m)), math.exp(-m) / (1 + math.exp(-m))  # exp(-m i)
    # steps 6, 7: chunk 0 (indices 6, 7) with chunk 1 (indices 2, 3), then chunk 1 alone
    expected = [0, 1, 2, 3, 4, 5, w_old * 6 + w_new * 102, w_old * 7 + w_new * 103, 104, 105]
    np.testing.assert_allclose(tape[:10], expected, rtol=1e-12)
    assert res.leads[:10] == [0] * 6 + [4] * 4


def test_rtc_hands_the_policy_the_committed_actions_and_the_soft_overlap():
    policy = ChunkCounter(length=10)
    tape, _ = tape_of(policy, ChunkExecution("rtc", latency_steps=2))
    assert policy.prefixes[0] is None  # the first chunk has no predecessor
    prefix, weights = policy.prefixes[1]  # planned at step 4
    # steps 4, 5 run chunk 0 (frozen); steps 6, 7 are chunk 0's plan (blend_steps = d = 2)
    np.testing.assert_array_equal(prefix[0, :, 0], [4, 5, 6, 7])
    np.testing.assert_array_equal(weights, rtc_prefix_weights(2, 2))
    prefix, _ = policy.prefixes[2]  # planned at step 8: chunk 1's indices 4 .. 7
    np.testing.assert_array_equal(prefix[0, :, 0], [104, 105, 106, 107])
    assert tape[4:8] == [4, 5, 102, 103]  # switched at the arrival, like async


def test_blend_is_capped_by_what_the_previous_chunk_still_plans():
    policy = ChunkCounter(length=7)  # Ta + d = 6: one planned step left for the overlap
    tape_of(policy, ChunkExecution("rtc", latency_steps=2, blend_steps=5))
    prefix, weights = policy.prefixes[1]
    np.testing.assert_array_equal(prefix[0, :, 0], [4, 5, 6])
    np.testing.assert_array_equal(weights, rtc_prefix_weights(2, 1))


class Plain:
    """A callable with no prefix support."""

    def __call__(self, obs, seeds):
        return np.zeros((len(seeds), 8, 1))


def test_bad_settings_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="latency_steps d=5 > n_action_steps Ta=4"):
        tape_of(ChunkCounter(), ChunkExecution("async", latency_steps=5))
    with pytest.raises(ValueError, match="'rtc' needs a policy that takes a committed prefix"):
        tape_of(Plain(), ChunkExecution("rtc", latency_steps=1))
    with pytest.raises(ValueError, match="unknown execution 'later'"):
        ChunkExecution("later")
    with pytest.raises(ValueError, match="latency_steps must be >= 0"):
        ChunkExecution("async", -1)


# ------------------------------------------------------------------ d = 0 is today's rollout
class Wobbly:
    """Chunks that depend on the observation and the seed and overlap the next chunk (L > Ta):
    any leak of an old chunk into the executed actions would show."""

    accepts_prefix = True

    def __call__(self, obs, seeds, prefix=None, prefix_weights=None):
        assert prefix is None, "no prefix at d = 0"
        x = obs["x"][:, -1, :1]  # (B, 1)
        j = np.arange(9)[None, :]  # (1, L)
        chunk = np.sin(3.0 * x + 0.7 * j + seeds[:, None])  # (B, L)
        return chunk[..., None]


@pytest.mark.parametrize("mode", MODES)
def test_zero_delay_equals_the_rollout_without_delay(mode):
    today, _ = tape_of(Wobbly(), None, n_action_steps=3, horizon=20)
    delayed, res = tape_of(Wobbly(), ChunkExecution(mode, 0), n_action_steps=3, horizon=20)
    assert delayed == today


@pytest.fixture(scope="module")
def toy_policy(tmp_path_factory):
    """An untrained tiny policy for ToyReach, saved with its task (for dp-eval)."""
    torch.manual_seed(0)
    cfg = PolicyConfig(
        obs_shapes={"pos": (2,), "target_xy": (2,)},
        horizon=8,
        n_action_steps=4,
        num_inference_steps=2,
        **SMALL,
    )
    policy = DiffusionPolicy(cfg).eval()
    path = tmp_path_factory.mktemp("latency") / "policy"
    policy.save_pretrained(path, metadata={"env": TOY_TASK.to_dict()})
    return policy, path


def test_zero_delay_equals_the_rollout_without_delay_for_a_diffusion_policy(toy_policy):
    policy, _ = toy_policy
    seeds = [EVAL_SEED_START, EVAL_SEED_START + 1]
    _, today = evaluate_policy(PolicyActor(policy, "ddim", 2), TOY_TASK, seeds)
    for mode in MODES:
        for method in ("guidance", "inpaint"):
            actor = PolicyActor(policy, "ddim", 2, rtc_method=method)
            _, runs = evaluate_policy(actor, TOY_TASK, seeds, execution=ChunkExecution(mode, 0))
            for a, b in zip(today, runs, strict=True):
                assert a.steps == b.steps and a.final_reward == b.final_reward
                np.testing.assert_array_equal(np.stack(a.actions), np.stack(b.actions))


# ------------------------------------------------------------------ weights by hand
def test_ensemble_weights_are_acts_formula():
    # ACT (Zhao et al. 2023): w_i = exp(-m i), i = 0 the oldest prediction, normalized
    e1, e2 = 0.9900498337491681, 0.9801986733067553  # exp(-0.01), exp(-0.02)
    total = 1 + e1 + e2
    np.testing.assert_allclose(ensemble_weights(3, 0.01), [1 / total, e1 / total, e2 / total])
    np.testing.assert_allclose(ensemble_weights(4, 0.0), [0.25] * 4)
    np.testing.assert_allclose(ensemble_weights(2, math.log(3)), [0.75, 0.25])  # 1 : 1/3


def test_rtc_soft_mask_hand_values():
    # c = (soft - j) / (soft + 1): 3/4, 1/2, 1/4; weight c (e^c - 1) / (e - 1)
    e = math.e
    expected = [1, 1] + [c * (math.exp(c) - 1) / (e - 1) for c in (0.75, 0.5, 0.25)]
    np.testing.assert_allclose(rtc_prefix_weights(2, 3), expected)
    np.testing.assert_allclose(
        rtc_prefix_weights(2, 3)[2:], [0.487551, 0.188770, 0.041324], atol=1e-6
    )
    np.testing.assert_array_equal(rtc_prefix_weights(3, 0), [1, 1, 1])
    assert rtc_prefix_weights(0, 0).shape == (0,)


def test_jerk_on_a_hand_made_sequence():
    actions = np.array([[0, 0], [1, 0], [1, 0], [4, 4], [4, 5]], float)
    leads = [0, 0, 0, 3, 3]  # a new chunk leads from the 4th action on
    # deltas 1, 0, 5 (3-4-5 triangle), 1: the boundary one is 5, the others within
    assert action_jerk(actions, leads) == (5.0, 1, 2.0, 3)
    a = EpisodeResult(0, True, 1.0, 1.0, 5, actions=list(actions), leads=leads)
    b = EpisodeResult(1, False, 0.0, 0.0, 3, actions=[np.zeros(2), np.ones(2), np.ones(2)])
    b.leads = [0, 2, 2]  # delta sqrt(2) at a boundary, then 0 within
    s = summarize([a, b])
    assert s["boundary_jerk"] == pytest.approx((5 + math.sqrt(2)) / 2)
    assert s["within_jerk"] == pytest.approx(2 / 4)
    assert summarize([EpisodeResult(2, False, 0.0, 0.0, 0)])["boundary_jerk"] is None


# ------------------------------------------------------------------ the frozen prefix
def _policy(**kw):
    torch.manual_seed(0)
    cfg = dict(obs_shapes={"s": (2,)}, horizon=8, n_action_steps=4, **SMALL)
    return DiffusionPolicy(PolicyConfig(**{**cfg, **kw})).eval()


@pytest.mark.parametrize("sampler,k", [("ddim", 3), ("ddpm", 5)])
@pytest.mark.parametrize("mode", ["guidance", "inpaint"])
def test_rtc_returns_exactly_the_frozen_prefix(sampler, k, mode):
    policy = _policy()
    obs = {"s": torch.randn(2, 2, 2)}
    # values that do not survive normalize -> unnormalize bit for bit by luck
    prefix = torch.tensor([[[0.1, -1 / 3], [0.7, 0.2], [2.5, -0.3]]] * 2)  # (B, 3, Da)
    w = [1.0, 1.0, 0.5]
    gen = torch.Generator().manual_seed(1)
    out = policy.predict_action(
        obs, sampler, k, generator=gen, prefix=prefix, prefix_weights=w, prefix_mode=mode
    )
    assert torch.equal(out["action_pred"][:, :2], prefix[:, :2])
    assert not torch.equal(out["action_pred"][:, 2], prefix[:, 2])  # soft: pulled, not set
    # "action" starts at index To - 1 = 1: the frozen row 1 comes first
    assert torch.equal(out["action"][:, 0], prefix[:, 1])


def test_rtc_prefix_is_exact_for_anchored_distilled_and_mse_policies():
    distilled = dict(
        consistency_timesteps=(90, 60, 30, 0), sampler="consistency", num_inference_steps=2
    )
    for kw in (dict(action_anchor="s"), distilled, dict(objective="mse")):
        policy = _policy(**kw)
        obs = {"s": torch.randn(3, 2, 2)}
        prefix = torch.randn(3, 8, 2)  # the whole chunk, weights (T,)
        w = torch.tensor([1.0, 0.0, 1.0, 0.3, 0, 0, 0, 1])
        for mode in ("guidance", "inpaint"):
            out = policy.predict_action(obs, prefix=prefix, prefix_weights=w, prefix_mode=mode)
            rows = w == 1
            assert torch.equal(out["action_pred"][:, rows], prefix[:, rows]), (kw, mode)


def test_a_bad_prefix_is_refused_naming_what_is_wrong():
    policy, obs = _policy(), {"s": torch.zeros(2, 2, 2)}
    with pytest.raises(ValueError, match=r"prefix has shape \(2, 9, 2\); expected \(2, P, 2\)"):
        policy.predict_action(obs, prefix=torch.zeros(2, 9, 2))
    with pytest.raises(ValueError, match="prefix_weights has 2 entries; expected P=3 or T=8"):
        policy.predict_action(obs, prefix=torch.zeros(2, 3, 2), prefix_weights=[1, 1])
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        policy.predict_action(obs, prefix=torch.zeros(2, 1, 2), prefix_weights=[1.5])
    with pytest.raises(ValueError, match="nonzero past the prefix's P=1 rows"):
        policy.predict_action(obs, prefix=torch.zeros(2, 1, 2), prefix_weights=[1] * 2 + [0] * 6)
    with pytest.raises(ValueError, match="unknown prefix_mode 'paint'"):
        policy.predict_action(obs, prefix=torch.zeros(2, 1, 2), prefix_mode="paint")


class GaussianOracle(nn.Module):
    """The exact eps of data x_0 ~ N(0, I): E[x_0 | x_t] = sqrt(ab_t) x_t, so
    eps = sqrt(1 - ab_t) x_t. Its Jacobian is diagonal: guidance on some rows cannot leak into
    the others, and J^T e is known."""

    def __init__(self, alphas_cumprod):
        super().__init__()
        self.ab = alphas_cumprod
        self.dummy = nn.Parameter(torch.zeros(()))  # gives the policy a device

    def forward(self, x, t, cond):
        ab = self.ab.to(x.device)[torch.as_tensor(t).long()].reshape(-1, 1, 1)
        return (1 - ab).sqrt() * x + 0 * self.dummy


def test_guidance_alone_meets_the_prefix_on_a_gaussian_oracle():
    """Without predict_action's final overwrite: the guided DDIM sample itself lands on the
    frozen rows (near the data J -> sqrt(ab_t) I and the weight 1 / sqrt(ab_t), a full
    correction), and the free rows are those of the unguided sample."""
    policy = _policy(clip_sample=False)
    policy.net = GaussianOracle(policy.schedule.alphas_cumprod)
    B, T, Da = 2, 8, 2
    x = torch.randn(B, T, Da, generator=torch.Generator().manual_seed(0))
    y = torch.randn(B, T, Da, generator=torch.Generator().manual_seed(1))
    w = torch.tensor([1.0, 1.0, 1.0, 0, 0, 0, 0, 0])
    cond, empty = torch.zeros(B, 4), torch.zeros(0, B, T, Da)
    plain = get_sampler(policy.cfg, "ddim", 5)
    times = plain.timesteps(policy)
    free = plain.sample(policy, x, cond, empty, times)
    guided = get_sampler(policy.cfg, "ddim", 5)
    guided.prefix = Prefix(y, w, "guidance")
    out = guided.sample(policy, x, cond, empty, times)
    torch.testing.assert_close(out[:, :3], y[:, :3], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[:, 3:], free[:, 3:], atol=1e-6, rtol=0)
    assert (free[:, :3] - y[:, :3]).abs().max() > 0.5  # it was not there by itself


class TwoModes(nn.Module):
    """The exact eps of a two-mode chunk distribution: every action +mu or every action -mu
    (equally likely), plus N(0, sigma^2) noise; E[x_0 | x_t] is the posterior-weighted mean
    of the two Gaussian posteriors."""

    def __init__(self, alphas_cumprod, mu=0.5, sigma=0.1):
        super().__init__()
        self.ab, self.mu, self.var = alphas_cumprod, mu, sigma**2
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, cond):
        ab = self.ab.to(x.device)[torch.as_tensor(t).long()].reshape(-1, 1, 1)
        v = ab * self.var + 1 - ab  # variance of x_t within a mode
        logits, means = [], []
        for m in (self.mu, -self.mu):
            logits.append(-((x - ab.sqrt() * m) ** 2).sum(dim=(1, 2)) / (2 * v.reshape(-1)))
            means.append(m + ab.sqrt() * self.var / v * (x - ab.sqrt() * m))
        p = torch.softmax(torch.stack(logits), dim=0)[..., None, None]  # (2, B, 1, 1)
        x0 = p[0] * means[0] + p[1] * means[1]  # (B, T, Da)
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt() + 0 * self.dummy


@pytest.mark.parametrize("sampler,k", [("ddim", 5), ("ddpm", 20)])
def test_a_frozen_prefix_draws_the_rest_of_the_chunk_into_its_mode(sampler, k):
    """Why RTC: the free part of the chunk should continue the committed actions, not jump to
    the other mode. Unconstrained, half the chunks land in each mode; with three frozen rows
    of the -mu mode nearly all do (the exact conditional: all of them)."""
    policy = _policy()
    policy.net = TwoModes(policy.schedule.alphas_cumprod)
    B = 200
    obs = {"s": torch.zeros(B, 2, 2)}
    prefix = torch.full((B, 3, 2), -0.5)

    def negative(**kw):
        gen = torch.Generator().manual_seed(0)
        out = policy.predict_action(obs, sampler, k, generator=gen, **kw)["action_pred"]
        return (out[:, 3:].mean(dim=(1, 2)) < 0).float().mean().item()

    assert 0.35 < negative() < 0.65
    assert negative(prefix=prefix, prefix_mode="guidance") > 0.85
    assert negative(prefix=prefix, prefix_mode="inpaint") > 0.8


class TwoModesWithError(TwoModes):
    """TwoModes plus the kind of error a trained network makes: a small eps error shared by
    the rows (0.1 x the chunk's mean). Eq. 15 divides it by sqrt(ab_t), ~5e-4 at the first
    trailing step, so the unclipped x_0 estimate there is off by tens of units."""

    def forward(self, x, t, cond):
        return super().forward(x, t, cond) + 0.1 * x.mean(dim=(1, 2), keepdim=True)


@pytest.mark.parametrize("sampler,k", [("ddim", 5), ("ddpm", 20)])
def test_guidance_survives_an_imperfect_network_at_pure_noise(sampler, k):
    """Guidance goes through the clipped x_0 estimate the step uses. Through the unclipped one,
    J^T W (y - x0_hat) at t = K - 1 moved the estimate by ~5e4 and DDIM's chunks ended away
    from the mode's mean (a trained PushT policy's chunks off by ~100 px)."""
    policy = _policy()
    policy.net = TwoModesWithError(policy.schedule.alphas_cumprod)
    B = 200
    obs = {"s": torch.zeros(B, 2, 2)}
    prefix = torch.full((B, 3, 2), -0.5)
    gen = torch.Generator().manual_seed(0)
    free = policy.predict_action(obs, sampler, k, generator=gen)["action_pred"][:, 3:]
    gen = torch.Generator().manual_seed(0)
    out = policy.predict_action(obs, sampler, k, generator=gen, prefix=prefix)["action_pred"]
    guided = out[:, 3:]  # (B, T - 3, Da), raw = normalized here (identity normalizer)
    assert (guided.mean(dim=(1, 2)) < 0).float().mean() > 0.85  # the prefix's mode
    # in the mode, near its mean -0.5 like the unguided chunks are near theirs (+-0.5)
    assert (guided.abs() - 0.5).abs().mean() < 0.1
    assert (free.abs() - 0.5).abs().mean() < 0.1


def test_the_actor_shifts_the_prefix_to_the_newest_observation():
    policy = _policy()
    actor = PolicyActor(policy, "ddim", 2)
    obs = {"s": np.random.default_rng(0).normal(size=(2, 2, 2)).astype(np.float32)}
    prefix = np.array([[[0.3, -0.2], [0.1, 0.9]]] * 2, np.float32)  # (B, 2, Da)
    chunk = actor(obs, np.array([5, 6]), prefix=prefix, prefix_weights=np.array([1.0, 0.4]))
    assert chunk.shape == (2, 7, 2)  # T - To + 1 actions from the newest observation on
    np.testing.assert_array_equal(chunk[:, 0], prefix[:, 0])
    assert not np.array_equal(chunk[:, 1], prefix[:, 1])


# ------------------------------------------------------------------ dp-eval
def test_eval_records_the_execution_and_the_jerk(toy_policy, tmp_path):
    _, path = toy_policy
    base = ["--checkpoint", path, "--episodes", 2, "--videos", 0, "--no-progress"]
    records = {}
    for mode, d in (("sync", 0), ("rtc", 0), ("rtc", 2), ("ensemble", 2)):
        out = tmp_path / f"{mode}{d}.json"
        args = [*base, "--execution", mode, "--latency-steps", d, "--json", out]
        eval_script.main(tyro.cli(eval_script.Config, args=[str(a) for a in args]))
        records[mode, d] = json.loads(out.read_text())
    r = records["rtc", 2]
    assert (r["execution"], r["latency_steps"], r["blend_steps"]) == ("rtc", 2, 2)
    assert r["rtc_method"] == "guidance" and r["max_guidance"] == 5.0
    assert r["boundary_jerk"] > 0 and r["within_jerk"] > 0
    assert records["ensemble", 2]["ensemble_decay"] == 0.01
    for key in ("successes", "mean_max_reward", "boundary_jerk", "within_jerk"):
        assert records["rtc", 0][key] == records["sync", 0][key], key
    assert records["rtc", 2]["boundary_jerk"] != records["sync", 0]["boundary_jerk"]
    with pytest.raises(ValueError, match="latency_steps must be >= 0, got -1"):
        eval_script.Config(checkpoint=path, latency_steps=-1)


def test_guidance_keeps_the_fast_layers_caches_and_the_weights_trainable():
    """Guidance needs the gradient w.r.t. the sample only: it runs with the weights frozen, so
    the fast layers' derived weights survive it (a training pass would drop them) and
    requires_grad is back on afterwards."""
    from dplite.policy.fast_layers import FastPath

    policy = _policy()
    obs = {"s": torch.randn(1, 2, 2)}
    policy.predict_action(obs, "ddim", 3)  # builds the caches
    layers = [m for m in policy.modules() if isinstance(m, FastPath)]
    before = [m._fast for m in layers]
    assert sum(c is not None for c in before) > 0
    policy.predict_action(obs, "ddim", 3, prefix=torch.zeros(1, 3, 2), prefix_mode="guidance")
    assert all(m._fast is c for m, c in zip(layers, before, strict=True))
    assert all(p.requires_grad for p in policy.parameters())


def test_guidance_skips_the_backward_pass_only_where_its_gradient_is_zero():
    """At pure noise every guided entry of the clipped x_0 estimate is clipped, so its
    gradient is exactly zero and the backward pass is skipped: the guided eps equals the one
    autograd computes through the clamp, and the network ran once, without a backward."""
    policy = _policy()
    policy.net = TwoModesWithError(policy.schedule.alphas_cumprod)
    K = policy.cfg.num_train_timesteps
    t = torch.tensor([K - 1])
    B, T, Da = 4, 8, 2
    x = 50 * torch.randn(B, T, Da, generator=torch.Generator().manual_seed(0))  # far out
    y = torch.full((B, T, Da), -0.5)
    w = torch.tensor([1.0, 1.0, 0.5, 0, 0, 0, 0, 0])
    prefix = Prefix(y, w, "guidance")
    cond = torch.zeros(B, 4)

    xg = x.clone().requires_grad_(True)
    eps = policy.net(xg, t, cond)
    x0 = policy.schedule.predict_x0(eps, t, xg)
    assert (x0.abs() > 1)[:, :3].all()  # every guided entry is clipped here
    x0c = x0.clamp(-1, 1)
    (vjp,) = torch.autograd.grad(x0c, xg, grad_outputs=prefix.w * (y - x0c.detach()))
    ab = policy.schedule.alphas_cumprod[t].reshape(-1, 1, 1)
    move = ab.rsqrt().clamp(max=prefix.max_guidance) * vjp
    expected = eps.detach() - (ab / (1 - ab)).sqrt() * move

    backward_runs = []
    hook = policy.net.register_full_backward_hook(lambda *a: backward_runs.append(1))
    try:
        got = prefix.guided_eps(policy, x, t, cond)
        assert not backward_runs
        prefix.guided_eps(policy, x / 100, torch.tensor([0]), cond)  # near the data: live
        assert backward_runs  # the hook does see a backward pass when one runs
    finally:
        hook.remove()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
