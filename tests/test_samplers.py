"""The samplers of policy/samplers.py against truths written out here: DDIM (eta = 0) from the
closed-form update of Song et al. 2021 eq. 12, DDPM from the posterior mean plus sigma z of
Ho et al. 2020 eq. 6-7, the 1-step consistency sample from the consistency function at the top
grid timestep, the one-shot call as one network evaluation; their draw counts and draw order;
and a toy sampler that works through predict_action once it has its one registry entry."""

import pytest
import torch

from dplite.policy.diffusion import DiffusionPolicy, PolicyConfig
from dplite.policy.samplers import (
    DDIM,
    DDPM,
    SAMPLERS,
    BaseSampler,
    Consistency,
    OneShot,
    get_sampler,
    next_timestep,
)

B, T, DA = 3, 8, 2
GRID = (90, 70, 50, 30, 10)
F64 = torch.float64


def _policy(K: int = 100, variance_type: str = "fixed_small", **kw) -> DiffusionPolicy:
    """A tiny policy; leading spacing unless asked (the hand-written loops below list leading
    timesteps; the spacing section tests trailing)."""
    kw.setdefault("timestep_spacing", "leading")
    torch.manual_seed(0)
    cfg = PolicyConfig(
        obs_shapes={"s": (3,)}, action_dim=DA, horizon=T, n_action_steps=4,
        num_train_timesteps=K, variance_type=variance_type, down_dims=(8, 16),
        diffusion_step_embed_dim=8, **kw,
    )  # fmt: skip
    return DiffusionPolicy(cfg).eval()  # identity normalizer: chunks are normalized units


def _distilled() -> DiffusionPolicy:
    return _policy(consistency_timesteps=GRID, sampler="consistency", num_inference_steps=1)


OBS = {"s": torch.randn(B, 2, 3, generator=torch.Generator().manual_seed(1))}


def _draws(seed: int, n: int) -> list[torch.Tensor]:
    """The first n (B, T, Da) draws of a generator seeded `seed`, as predict_action takes them."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, DA, generator=g) for _ in range(n)]


def _eps(policy: DiffusionPolicy, x: torch.Tensor, t: int, cond: torch.Tensor) -> torch.Tensor:
    return policy.net(x.float(), t, cond).double()  # (B, T, Da)


def _predict(policy, sampler, k, seed=7) -> torch.Tensor:
    out = policy.predict_action(OBS, sampler, k, generator=torch.Generator().manual_seed(seed))
    return out["action_pred"]


# ---------------------------------------------------------------- against the papers
@torch.no_grad()
@pytest.mark.parametrize("k", [1, 4, 10])
def test_ddim_is_the_closed_form_update(k):
    policy = _policy()
    ab = policy.schedule.alphas_cumprod.double()  # (K,)
    cond = policy.encode_obs(OBS)
    x = _draws(7, 1)[0].double()
    ts = list(range(100 - 100 // k, -1, -(100 // k)))  # leading spacing: 100 // k apart, down to 0
    assert len(ts) == k
    for t, prev in zip(ts, [*ts[1:], -1], strict=True):
        eps = _eps(policy, x, t, cond)
        a_prev = ab[prev] if prev >= 0 else torch.tensor(1.0, dtype=F64)  # alpha_bar_{-1} = 1
        x0 = ((x - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()).clamp(-1, 1)  # "predicted x_0"
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps  # eq. 12 with sigma = 0
    torch.testing.assert_close(_predict(policy, "ddim", k), x.float(), rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize(
    "k, variance_type", [(10, "fixed_small"), (5, "fixed_small"), (5, "fixed_large")]
)
def test_ddpm_is_the_posterior_mean_plus_sigma_z(k, variance_type):
    K = 10
    policy = _policy(K, variance_type)
    ab = policy.schedule.alphas_cumprod.double()
    cond = policy.encode_obs(OBS)
    x, *zs = (d.double() for d in _draws(7, 1 + k))  # the initial noise, then one z per step
    ts = list(range(K - K // k, -1, -(K // k)))
    for t, prev, z in zip(ts, [*ts[1:], -1], zs, strict=True):
        a_t, a_prev = ab[t], (ab[prev] if prev >= 0 else torch.tensor(1.0, dtype=F64))
        alpha = a_t / a_prev  # the (strided) step's alpha_t
        eps = _eps(policy, x, t, cond)
        x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)  # eq. 15
        mean = (
            a_prev.sqrt() * (1 - alpha) / (1 - a_t) * x0
            + alpha.sqrt() * (1 - a_prev) / (1 - a_t) * x
        )  # eq. 7
        var = (
            (1 - a_prev) / (1 - a_t) * (1 - alpha) if variance_type == "fixed_small" else 1 - alpha
        )
        x = mean + (var.sqrt() * z if t > 0 else 0)  # eq. 6; no noise onto x_0
    torch.testing.assert_close(_predict(policy, "ddpm", k), x.float(), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_consistency_samples_are_the_consistency_function_at_grid_points():
    policy = _distilled()
    ab = policy.schedule.alphas_cumprod.double()
    cond = policy.encode_obs(OBS)
    z0, z1 = (d.double() for d in _draws(7, 2))

    def f(x, t):  # f(x, t) = sqrt(ab_t) x - sqrt(1 - ab_t) v(x, t), clipped by the sampler
        return (ab[t].sqrt() * x - (1 - ab[t]).sqrt() * _eps(policy, x, t, cond)).clamp(-1, 1)

    one = f(z0, GRID[0])  # k = 1: one jump from pure noise at the top grid timestep
    torch.testing.assert_close(_predict(policy, None, 1), one.float(), rtol=1e-5, atol=1e-5)
    # k = 2: re-noise the jump to grid point 5 // 2 = 2 (t = 50) with the second draw, jump again
    t = GRID[len(GRID) // 2]
    two = f(ab[t].sqrt() * one + (1 - ab[t]).sqrt() * z1, t)
    torch.testing.assert_close(_predict(policy, None, 2), two.float(), rtol=1e-5, atol=1e-5)
    assert Consistency(2).timesteps(policy).tolist() == [90, 50]
    assert Consistency(5).timesteps(policy).tolist() == list(GRID)


def test_one_shot_calls_the_network_once_on_a_zero_chunk_at_timestep_0():
    policy = _policy(objective="mse")
    calls = []
    policy.net.register_forward_hook(lambda m, args, out: calls.append((args, out)))
    out = policy.predict_action(OBS, "ddpm", 50, return_trajectory=True)
    assert len(calls) == 1
    (x, t, cond), pred = calls[0]
    assert torch.equal(x, torch.zeros(B, T, DA)) and t.tolist() == [0]
    torch.testing.assert_close(out["action_pred"], pred)
    assert len(out["trajectory"]) == 1  # that one chunk, no initial noise


# ---------------------------------------------------------------- draws and timesteps
@pytest.mark.parametrize(
    "distilled, name, k, n_step_draws",
    [
        (False, "ddpm", 4, 4),
        (False, "ddim", 4, 0),
        (True, "consistency", 3, 2),
        (False, "mse", 1, 0),
    ],
)
def test_draw_counts_and_order(distilled, name, k, n_step_draws):
    policy = (
        _distilled() if distilled else _policy(objective="mse" if name == "mse" else "diffusion")
    )
    sampler = get_sampler(policy.cfg, name, k)
    assert (sampler.name, sampler.k, sampler.num_draws) == (name, k, n_step_draws)
    n_initial = 1 if sampler.starts_from_noise else 0

    def drawn(**kw) -> int:  # how many (B, T, Da) draws a call took from its generator
        g = torch.Generator().manual_seed(3)
        policy.predict_action(OBS, name, k, generator=g, **kw)
        for n in range(10):
            ref = torch.Generator().manual_seed(3)
            for _ in range(n):
                torch.randn(B, T, DA, generator=ref)
            if torch.equal(ref.get_state(), g.get_state()):
                return n
        raise AssertionError("more than 9 draws")

    assert drawn() == n_initial + n_step_draws
    assert drawn(noise=torch.zeros(B, T, DA)) == n_step_draws  # given noise replaces the first
    # the order: the initial noise first, then step i's draw in step_noise[i]
    draws = _draws(5, n_initial + n_step_draws)
    x = draws[0] if n_initial else torch.zeros(B, T, DA)
    step_noise = torch.stack(draws[n_initial:]) if n_step_draws else torch.zeros(0, B, T, DA)
    with torch.no_grad():
        cond = policy.encode_obs(OBS)
        by_hand = sampler.sample(policy, x, cond, step_noise, sampler.timesteps(policy))
    torch.testing.assert_close(_predict(policy, name, k, seed=5), by_hand, rtol=0, atol=0)


def test_timesteps_and_their_successors():
    policy = _policy()
    assert DDIM(10).timesteps(policy).tolist() == list(range(90, -1, -10))
    assert DDPM(100).timesteps(policy).tolist() == list(range(99, -1, -1))
    assert DDIM(3).timesteps(policy).tolist() == [66, 33, 0]  # "leading": K // k apart from 0
    assert OneShot(1).timesteps(policy).tolist() == [0]
    times = DDIM(3).timesteps(policy)
    assert [next_timestep(times, i).tolist() for i in range(3)] == [[33], [0], [-1]]


# ---------------------------------------------------------------- choosing
def test_get_sampler_defaults_and_refusals():
    policy = _policy(num_inference_steps=5)
    assert policy.sampler_settings() == ("ddim", 5)  # the config's k for the config's sampler
    assert policy.sampler_settings("ddpm") == ("ddpm", 100)
    assert _distilled().sampler_settings(None, 3) == ("consistency", 3)
    assert _policy(objective="mse").sampler_settings("ddim", 7) == ("mse", 1)
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        policy.sampler_settings("euler")
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        _policy(objective="mse").sampler_settings("euler")  # refused even where ignored
    with pytest.raises(ValueError, match="samples with 'ddpm' or 'ddim'"):
        policy.sampler_settings("consistency")
    with pytest.raises(ValueError, match="consistency-distilled.*samples with 'consistency'"):
        _distilled().sampler_settings("ddpm")
    with pytest.raises(ValueError, match="objective 'mse'"):
        policy.sampler_settings("mse")
    with pytest.raises(ValueError, match=r"k=6 must be in \[1, 5\]"):
        _distilled().sampler_settings(None, 6)


# ---------------------------------------------------------------- a new sampler is one class
class X0Jump(BaseSampler):
    """A toy: at each step jump to the clipped x_0 estimate and re-noise it to the next
    timestep with a fresh draw (the last step returns the estimate)."""

    name = "x0jump"

    @property
    def num_draws(self) -> int:
        return self.k - 1

    def step(self, policy, i, x, cond, times, step_noise):
        t, prev_t = times[i : i + 1], next_timestep(times, i)
        x0 = policy.schedule.predict_x0(policy.net(x, t, cond), t, x).clamp(-1, 1)
        if i == times.shape[0] - 1:
            return x0
        return policy.schedule.add_noise(x0, step_noise[i], prev_t)


def test_a_new_sampler_is_one_class_and_one_registry_entry(monkeypatch):
    monkeypatch.setitem(SAMPLERS, X0Jump.name, X0Jump)
    policy = _policy()
    assert policy.sampler_settings("x0jump") == ("x0jump", 100)  # the base default: k = K
    out = policy.predict_action(
        OBS, "x0jump", 3, generator=torch.Generator().manual_seed(7), return_trajectory=True
    )
    assert len(out["trajectory"]) == 4
    with torch.no_grad():
        cond = policy.encode_obs(OBS)
        x, z1, z2 = _draws(7, 3)
        sched = policy.schedule
        for t, z in ((66, z1), (33, z2)):
            x = sched.add_noise(
                sched.predict_x0(policy.net(x, t, cond), t, x).clamp(-1, 1), z, t - 33
            )
        x = sched.predict_x0(policy.net(x, 0, cond), 0, x).clamp(-1, 1)
    torch.testing.assert_close(out["action_pred"], x, rtol=1e-5, atol=1e-5)
    # the base class's fit: a distilled policy refuses it and names its own sampler
    with pytest.raises(ValueError, match="'x0jump' does not fit.*samples with 'consistency'"):
        _distilled().sampler_settings("x0jump")


# ---------------------------------------------------------------- timestep spacing
@pytest.mark.parametrize(
    "spacing, k, visited",
    [("trailing", 2, [99, 49]), ("leading", 2, [50, 0]), ("trailing", 1, [99]),
     ("leading", 1, [0]), ("trailing", 3, [99, 66, 32])],
)  # fmt: skip
@torch.no_grad()
def test_ddim_visits_the_configured_spacing(spacing, k, visited):
    """predict_action's DDIM equals DDIM steps over the hand-listed timesteps, each step going
    to the next visited one (the clean chunk after the last)."""
    policy = _policy(timestep_spacing=spacing)
    cond = policy.encode_obs(OBS)
    (x,) = _draws(7, 1)
    for i, t in enumerate(visited):
        prev = visited[i + 1] if i + 1 < len(visited) else -1
        x = policy.schedule.ddim_step(policy.net(x, t, cond), t, prev, x)
    torch.testing.assert_close(_predict(policy, "ddim", k), x, atol=1e-6, rtol=0)


def test_configs_saved_before_spacing_existed_load_as_leading():
    saved = PolicyConfig().to_dict()
    del saved["timestep_spacing"]
    assert PolicyConfig.from_dict(saved).timestep_spacing == "leading"
    trailing = {**saved, "timestep_spacing": "trailing"}
    assert PolicyConfig.from_dict(trailing).timestep_spacing == "trailing"
    with pytest.raises(ValueError, match="unknown timestep_spacing 'middle'"):
        PolicyConfig(timestep_spacing="middle")
