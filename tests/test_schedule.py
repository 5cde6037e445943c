"""Tests for policy/schedule.py: diffusers' DDPMScheduler / DDIMScheduler as the oracle, values
derived by hand from the papers, and the identities of DDPM (Ho et al. 2020, eq. 4, 7, 15) and
DDIM (Song et al. 2021, eq. 12).

Step-for-step comparisons run in float64 with the oracle's own betas promoted to float64: stock
diffusers keeps alpha_bar in float32, and near t = 0 of the linear schedule 1 - alpha_bar ~ 1e-4
then carries a relative error ~1e-3, so stock diffusers itself drifts ~7e-5 from exact
arithmetic over 100 steps (test_float32_sampling_is_at_least_as_accurate_as_diffusers shows it).
"""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.schedulers import scheduling_ddpm

from dplite.policy.schedule import NoiseSchedule

SCHEDULES = ("linear", "squaredcos_cap_v2")
B, T, DA = 3, 4, 2  # tiny (B, T, Da) samples
F64 = torch.float64


def _ours(K, beta_schedule, clip=True, variance_type="fixed_small"):
    return NoiseSchedule(
        num_train_timesteps=K,
        beta_schedule=beta_schedule,
        clip_sample=clip,
        variance_type=variance_type,
    )


def _oracle(cls, K, beta_schedule, clip=True, f64=True, timestep_spacing="leading", **kw):
    ref = cls(
        num_train_timesteps=K,
        beta_schedule=beta_schedule,
        beta_start=1e-4,
        beta_end=2e-2,
        clip_sample=clip,
        clip_sample_range=1.0,
        prediction_type="epsilon",
        steps_offset=0,
        timestep_spacing=timestep_spacing,
        **kw,
    )
    if f64:  # the oracle's own betas, with the products taken in float64
        betas = ref.betas.to(F64)  # (K,)
        # the cosine cap 0.999 stored in float32 is 1.3e-8 off, which 1 / sqrt(alpha_bar_{K-1})
        # ~ 2e3 amplifies to ~1e-5 relative in unclipped samples: put back the exact cap
        betas[ref.betas == torch.tensor(0.999)] = 0.999
        ref.alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        ref.one = ref.final_alpha_cumprod = torch.tensor(1.0, dtype=F64)
    return ref


def _eps_fn(K):
    """Deterministic stand-in for the network: eps(x, t) = tanh(x W + b) + (t / K) c."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(DA, DA, generator=g, dtype=F64) * 0.8
    b, c = torch.randn(2, DA, generator=g, dtype=F64) * 0.4

    def eps(x, t):
        x64 = x.to(F64)
        return (torch.tanh(x64 @ W + b) + t / K * c).to(x.dtype)  # (B, T, Da)

    return eps


def _close(a, b, what, tol=1e-5):
    # rtol matters only unclipped, where samples grow to ~1e3 (x_0 estimates ~ x / 2e-3)
    err = (a - b).abs().max().item()
    assert torch.allclose(a, b, atol=tol, rtol=tol), f"{what}: max abs err {err:.3g}"


def _patch_ddpm_noise(monkeypatch):
    """diffusers' DDPMScheduler.step draws its noise with randn_tensor: hand it ours instead."""
    box = {}
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda *a, **kw: box["z"])
    return box


# ---------------------------------------------------------------------- tables
@pytest.mark.parametrize("beta_schedule", SCHEDULES)
@pytest.mark.parametrize("K", [100, 1000])
def test_tables_match_diffusers(beta_schedule, K):
    ours, ref = _ours(K, beta_schedule), _oracle(DDPMScheduler, K, beta_schedule, f64=False)
    assert ours.betas.shape == ours.alphas.shape == ours.alphas_cumprod.shape == (K,)
    for name in ("betas", "alphas", "alphas_cumprod"):
        assert torch.allclose(getattr(ours, name), getattr(ref, name), atol=1e-6, rtol=0), name


@pytest.mark.parametrize("beta_schedule", SCHEDULES)
@pytest.mark.parametrize("K", [100, 1000])
def test_alpha_bar_strictly_decreasing_in_unit_interval(beta_schedule, K):
    ab = _ours(K, beta_schedule).alphas_cumprod
    assert (ab > 0).all() and (ab <= 1).all()
    assert (ab[1:] < ab[:-1]).all()


def test_linear_alpha_bar_by_hand():
    K = 100
    b = [1e-4 + i * (2e-2 - 1e-4) / (K - 1) for i in range(3)]  # torch.linspace's first entries
    expected = (1 - b[0]) * (1 - b[1]) * (1 - b[2])
    sched = _ours(K, "linear")
    assert sched.betas[1].item() == pytest.approx(b[1], rel=1e-6)
    assert sched.alphas_cumprod[2].item() == pytest.approx(expected, abs=1e-7)


def test_cosine_alpha_bar_telescopes_to_the_closed_form():
    # Nichol & Dhariwal eq. 17: prod_{i<=t} (1 - beta_i) = f((t + 1) / K) / f(0) wherever
    # the 0.999 cap is not hit (only the last step for K = 100)
    K, s = 100, 0.008

    def f(u):
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    ab = _ours(K, "squaredcos_cap_v2").alphas_cumprod
    for t in (0, 1, 50, 97, 98):
        assert ab[t].item() == pytest.approx(f((t + 1) / K) / f(0), rel=1e-6, abs=1e-9)
    assert _ours(K, "squaredcos_cap_v2").betas[-1].item() == pytest.approx(0.999)


# ---------------------------------------------------------------------- forward process
def test_add_noise_matches_diffusers():
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(2, 8, T, DA, generator=g)  # (B, T, Da) each
    t = torch.randint(0, 100, (8,), generator=g)  # (B,)
    for beta_schedule in SCHEDULES:
        ref = _oracle(DDPMScheduler, 100, beta_schedule, f64=False)
        ours = _ours(100, beta_schedule).add_noise(x0, noise, t)
        assert ours.dtype == torch.float32
        _close(ours, ref.add_noise(x0, noise, t), beta_schedule, tol=1e-6)


# ---------------------------------------------------------------------- DDPM sampling
@pytest.mark.parametrize(
    "beta_schedule, clip, variance_type, k",
    [
        ("squaredcos_cap_v2", True, "fixed_small", 100),
        ("squaredcos_cap_v2", False, "fixed_small", 100),
        ("linear", True, "fixed_small", 100),
        ("linear", False, "fixed_small", 100),
        ("squaredcos_cap_v2", True, "fixed_large", 100),
        ("linear", False, "fixed_large", 100),
        ("squaredcos_cap_v2", True, "fixed_small", 20),  # strided: prev_t = t - K // k
    ],
)
def test_ddpm_sampling_matches_diffusers_step_for_step(
    monkeypatch, beta_schedule, clip, variance_type, k
):
    K = 100
    ours = _ours(K, beta_schedule, clip, variance_type)
    ref = _oracle(DDPMScheduler, K, beta_schedule, clip, variance_type=variance_type)
    ref.set_timesteps(k)
    ts = ours.inference_timesteps(k, sampler="ddpm")
    assert ts.tolist() == ref.timesteps.tolist()
    if k == K:
        assert ts.tolist() == list(range(K - 1, -1, -1))

    box = _patch_ddpm_noise(monkeypatch)
    g = torch.Generator().manual_seed(1)
    noises = torch.randn(k, B, T, DA, generator=g, dtype=F64)  # (k, B, T, Da), one per step
    eps_fn = _eps_fn(K)
    x = y = torch.randn(B, T, DA, generator=g, dtype=F64)  # (B, T, Da)
    for i, t in enumerate(ts.tolist()):
        box["z"] = noises[i]
        x = ours.ddpm_step(eps_fn(x, t), t, x, noises[i], prev_t=t - K // k)
        y = ref.step(eps_fn(y, t), t, y).prev_sample
        _close(x, y, f"step {i} (t={t})")


@pytest.mark.parametrize("beta_schedule", SCHEDULES)
def test_float32_sampling_is_at_least_as_accurate_as_diffusers(monkeypatch, beta_schedule):
    """Ours in float32 stays within 2e-6 of exact (float64) DDPM; stock diffusers does not beat it."""
    K = 100
    ours, ref32 = _ours(K, beta_schedule), _oracle(DDPMScheduler, K, beta_schedule, f64=False)
    ref64 = _oracle(DDPMScheduler, K, beta_schedule)
    box = _patch_ddpm_noise(monkeypatch)
    g = torch.Generator().manual_seed(3)
    noises = torch.randn(K, B, T, DA, generator=g, dtype=F64)  # (K, B, T, Da)
    eps_fn = _eps_fn(K)
    x = y = torch.randn(B, T, DA, generator=g, dtype=F64)  # (B, T, Da)
    x32 = y32 = x.float()
    err_ours = err_ref = 0.0
    for i in range(K):
        t = K - 1 - i
        box["z"] = noises[i]
        y = ref64.step(eps_fn(y, t), t, y).prev_sample
        box["z"] = noises[i].float()
        y32 = ref32.step(eps_fn(y32, t), t, y32).prev_sample
        x32 = ours.ddpm_step(eps_fn(x32, t), t, x32, noises[i].float())
        assert x32.dtype == torch.float32
        err_ours = max(err_ours, (x32.double() - y).abs().max().item())
        err_ref = max(err_ref, (y32.double() - y).abs().max().item())
    assert err_ours < 2e-6 and err_ours <= err_ref, (err_ours, err_ref)


def test_ddpm_step_vectorized_over_per_sample_timesteps():
    for variance_type in ("fixed_small", "fixed_large"):
        sched = _ours(100, "linear", True, variance_type)
        g = torch.Generator().manual_seed(4)
        x, eps, z = torch.randn(3, 4, T, DA, generator=g)  # (B, T, Da) each
        t = torch.tensor([0, 37, 99, 1])  # (B,) includes the noise-free last step
        batched = sched.ddpm_step(eps, t, x, z)
        for b in range(4):
            one = sched.ddpm_step(eps[b : b + 1], int(t[b]), x[b : b + 1], z[b : b + 1])
            _close(batched[b : b + 1], one, f"{variance_type} sample {b}", tol=1e-6)


def test_last_step_adds_no_noise():
    g = torch.Generator().manual_seed(5)
    x, eps, z = torch.randn(3, B, T, DA, generator=g)
    for variance_type in ("fixed_small", "fixed_large"):
        sched = _ours(100, "squaredcos_cap_v2", True, variance_type)
        assert torch.equal(sched.ddpm_step(eps, 0, x, z), sched.ddpm_step(eps, 0, x, 100 * z))
    _, var = _ours(100, "linear").posterior(x, x, torch.zeros(B, dtype=torch.long))
    assert torch.equal(var, torch.zeros_like(var))


# ---------------------------------------------------------------------- DDPM identities
@pytest.mark.parametrize("beta_schedule", SCHEDULES)
def test_true_noise_recovers_x0_and_the_exact_posterior(beta_schedule):
    K = 100
    sched = _ours(K, beta_schedule, clip=False)
    ab = _ours(K, beta_schedule).alphas_cumprod.to(F64)
    g = torch.Generator().manual_seed(6)
    x0, noise, z = torch.randn(3, K, T, DA, generator=g, dtype=F64)  # (B = K, T, Da) each
    t = torch.arange(K)  # (B,) every timestep once
    x_t = sched.add_noise(x0, noise, t)  # (B, T, Da)
    _close(sched.predict_x0(noise, t, x_t), x0, "x0 from true eps", tol=1e-9)

    mean, var = sched.posterior(x0, x_t, t)  # (B, T, Da), (B, 1, 1)
    # independent truth, Bayes' rule as a product of Gaussians in x_{t-1}:
    # q(x_{t-1} | x_0) = N(sqrt(ab_{t-1}) x_0, 1 - ab_{t-1}), q(x_t | x_{t-1}) = N(sqrt(a_t) x_{t-1}, b_t)
    ab_t, ab_prev = ab[1:].view(-1, 1, 1), ab[:-1].view(-1, 1, 1)  # t = 1 .. K-1
    a_t = ab_t / ab_prev
    precision = 1 / (1 - ab_prev) + a_t / (1 - a_t)
    bayes_mean = (
        ab_prev.sqrt() * x0[1:] / (1 - ab_prev) + a_t.sqrt() * x_t[1:] / (1 - a_t)
    ) / precision
    _close(mean[1:], bayes_mean, "posterior mean", tol=1e-5)
    _close(var[1:], (1 / precision).expand_as(var[1:]), "posterior variance", tol=1e-7)
    _close(mean[:1], x0[:1], "posterior mean at t=0 is x_0", tol=1e-12)

    # an ancestral step fed the true eps samples exactly this posterior (fixed_small)
    step = sched.ddpm_step(noise, t, x_t, z)
    _close(step, mean + var.sqrt() * z, "ddpm_step with true eps", tol=1e-9)


# ---------------------------------------------------------------------- DDIM
@pytest.mark.parametrize("beta_schedule", SCHEDULES)
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_matches_diffusers_step_for_step(beta_schedule, clip, eta):
    K, k = 100, 10
    ours = _ours(K, beta_schedule, clip)
    ref = _oracle(DDIMScheduler, K, beta_schedule, clip, set_alpha_to_one=True)
    ref.set_timesteps(k)
    ts = ours.inference_timesteps(k, sampler="ddim")
    assert ts.tolist() == ref.timesteps.tolist() == list(range(90, -1, -10))

    g = torch.Generator().manual_seed(7)
    noises = torch.randn(k, B, T, DA, generator=g, dtype=F64)  # (k, B, T, Da)
    eps_fn = _eps_fn(K)
    x = y = torch.randn(B, T, DA, generator=g, dtype=F64)  # (B, T, Da)
    for i, t in enumerate(ts.tolist()):
        noise = noises[i] if eta > 0 else None
        x = ours.ddim_step(eps_fn(x, t), t, t - K // k, x, eta=eta, noise=noise)
        y = ref.step(eps_fn(y, t), t, y, eta=eta, variance_noise=noise).prev_sample
        _close(x, y, f"step {i} (t={t})")


def test_ddim_with_true_noise_moves_along_the_forward_process():
    # DDIM eq. 12 with eta = 0 and the true eps lands exactly on q_sample(x_0, eps, prev_t)
    sched = _ours(100, "squaredcos_cap_v2", clip=False)
    g = torch.Generator().manual_seed(8)
    x0, noise = torch.randn(2, B, T, DA, generator=g, dtype=F64)
    x_t = sched.add_noise(x0, noise, 90)
    _close(sched.ddim_step(noise, 90, 40, x_t), sched.add_noise(x0, noise, 40), "to 40", tol=1e-9)
    _close(sched.ddim_step(noise, 90, -1, x_t), x0, "to x_0", tol=1e-9)


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"beta_schedule": "cosine"}, ["'cosine'", "squaredcos_cap_v2", "linear"]),
        ({"variance_type": "learned"}, ["'learned'", "fixed_small", "fixed_large"]),
        ({"num_train_timesteps": 0}, ["num_train_timesteps=0", ">= 1"]),
    ],
)
def test_bad_config_raises(kwargs, words):
    with pytest.raises(ValueError) as info:
        NoiseSchedule(**kwargs)
    assert all(w in str(info.value) for w in words), str(info.value)


@pytest.mark.parametrize("k, sampler", [(0, "ddim"), (101, "ddpm"), (10, "dpm")])
def test_bad_inference_steps_raise(k, sampler):
    with pytest.raises(ValueError, match=str(k) if sampler != "dpm" else "'dpm'"):
        _ours(100, "linear").inference_timesteps(k, sampler=sampler)


def test_ddim_eta_without_noise_raises():
    x = torch.zeros(B, T, DA)
    with pytest.raises(ValueError, match="eta=0.5"):
        _ours(100, "linear").ddim_step(x, 50, 40, x, eta=0.5)


# ---------------------------------------------------------------------- timestep spacing
@pytest.mark.parametrize("k", [1, 2, 3, 5, 7, 8, 10, 20, 33, 100])
def test_trailing_timesteps_equal_diffusers(k):
    K = 100
    ref = _oracle(DDIMScheduler, K, "squaredcos_cap_v2", timestep_spacing="trailing")
    ref.set_timesteps(k)
    ours = _ours(K, "squaredcos_cap_v2").inference_timesteps(k, "ddim", spacing="trailing")
    assert ours.tolist() == ref.timesteps.tolist()
    assert ours[0] == K - 1  # every k starts from pure noise
    lead = _ours(K, "squaredcos_cap_v2").inference_timesteps(k, "ddim", spacing="leading")
    assert lead.tolist() == [i * (K // k) for i in range(k - 1, -1, -1)]


def test_trailing_hand_values():
    ours = _ours(100, "linear")
    assert ours.inference_timesteps(2, spacing="trailing").tolist() == [99, 49]
    assert ours.inference_timesteps(1, spacing="trailing").tolist() == [99]
    assert ours.inference_timesteps(10, spacing="trailing").tolist() == list(range(99, 0, -10))
    assert ours.inference_timesteps(100, spacing="trailing").tolist() == list(range(99, -1, -1))
    with pytest.raises(ValueError, match="timestep spacing 'middle'"):
        ours.inference_timesteps(2, spacing="middle")


@pytest.mark.parametrize("k", [1, 2, 5, 10])
@pytest.mark.parametrize("clip", [True, False])
def test_trailing_ddim_matches_diffusers_step_for_step(k, clip):
    """diffusers' DDIMScheduler(timestep_spacing="trailing") steps from t to t - K // k; the
    samplers step to the next visited timestep. Where k divides K the two are the same step,
    so the samples must agree (for k = 3 diffusers would step 66 -> 33 and then start its next
    step from 32, the samplers go 66 -> 32)."""
    K = 100
    ours = _ours(K, "squaredcos_cap_v2", clip)
    ref = _oracle(
        DDIMScheduler,
        K,
        "squaredcos_cap_v2",
        clip,
        timestep_spacing="trailing",
        set_alpha_to_one=True,
    )
    ref.set_timesteps(k)
    ts = ours.inference_timesteps(k, "ddim", spacing="trailing").tolist()
    assert ts == ref.timesteps.tolist()
    eps_fn = _eps_fn(K)
    g = torch.Generator().manual_seed(3)
    x = y = torch.randn(B, T, DA, generator=g, dtype=F64)  # (B, T, Da)
    for i, t in enumerate(ts):
        prev = ts[i + 1] if i + 1 < k else -1
        x = ours.ddim_step(eps_fn(x, t), t, prev, x)
        y = ref.step(eps_fn(y, t), t, y, eta=0.0).prev_sample
        _close(x, y, f"k={k} step {i} (t={t})")
