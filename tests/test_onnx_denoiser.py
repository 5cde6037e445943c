"""The "onnx" inference backend (policy/onnx_denoiser.py, DiffusionPolicy.use_backend) against
its oracle, the eager network: the same outputs to float rounding for both UNet sizes of the
benchmark at batch 1 and 50, every sampler, the transformer; a fresh export after every kind of
weight change; the refusals. Needs onnxruntime (the "onnx" extra); those tests skip without it.

Tolerances. One network evaluation: within 1e-5 absolute + 1e-4 relative of eager (ONNX
Runtime sums the same products in another order). A whole chunk, in normalized action units
([-1, 1]): within 1e-3, since the x_0 estimate divides eps by sqrt(alpha_bar_t) (about 0.006 at
t = 99 of the cosine schedule), which magnifies the first step's rounding ~150x.
"""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro

from dplite.policy.actor import PolicyActor
from dplite.policy.diffusion import DiffusionPolicy, PolicyConfig
from dplite.scripts import eval as eval_script

EVAL_TOL = dict(atol=1e-5, rtol=1e-4)
CHUNK_TOL = dict(atol=1e-3, rtol=0)
OBS_SHAPES = {"keypoint": (9, 2), "agent_pos": (2,)}  # the benchmark's PushT shapes, cond 40
TINY = dict(down_dims=(16, 32, 64), diffusion_step_embed_dim=32)


@pytest.fixture
def ort():
    pytest.importorskip("onnx")  # torch's exporter imports it
    return pytest.importorskip("onnxruntime")


def _policy(seed: int = 0, **kwargs) -> DiffusionPolicy:
    torch.manual_seed(seed)
    cfg = PolicyConfig(obs_shapes=OBS_SHAPES, action_dim=2, **{**TINY, **kwargs})
    return DiffusionPolicy(cfg).eval()


def _obs(batch: int, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(batch, 2, *s, generator=gen) for k, s in OBS_SHAPES.items()}


def _chunks(policy: DiffusionPolicy, backend: str, obs, sampler="ddim", k=5, **kwargs):
    """predict_action's normalized chunk under `backend`, from fixed noise."""
    policy.use_backend(backend)
    B = next(iter(obs.values())).shape[0]
    gens = [torch.Generator().manual_seed(i) for i in range(B)]
    out = policy.predict_action(obs, sampler, k, generator=gens, **kwargs)["action_pred"]
    return out  # (B, T, Da); the normalizer is the identity here


def _eval_pair(policy: DiffusionPolicy, batch: int, t: int = 37):
    """One network evaluation through the onnx backend and by the eager net itself:
    (onnx, eager), each (B, T, Da). The backend stays "onnx", so its export is kept."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(batch, policy.cfg.horizon, policy.cfg.action_dim, generator=gen)
    cond = torch.randn(batch, policy.cfg.global_cond_dim, generator=gen)
    with torch.inference_mode():
        eager = policy.net(x, torch.tensor([t]), cond)
        onnx = policy.use_backend("onnx").denoise(x, torch.tensor([t]), cond)
    return onnx, eager


# ------------------------------------------------------------------ the oracle: eager
@pytest.mark.parametrize(
    "dims",
    [(64, 128, 256), pytest.param((256, 512, 1024), marks=pytest.mark.slow)],
    ids=["5.4M", "65.8M"],
)
def test_benchmark_unets_match_eager_at_batch_1_and_50(ort, dims):
    """The two UNets of dp-benchmark (5.4 M and 65.8 M parameters), one export each."""
    policy = _policy(down_dims=dims, diffusion_step_embed_dim=256)
    for batch in (1, 50):
        onnx, eager = _eval_pair(policy, batch)
        torch.testing.assert_close(onnx, eager, **EVAL_TOL)
        obs = _obs(batch)
        onnx_chunk = _chunks(policy, "onnx", obs)
        torch.testing.assert_close(onnx_chunk, _chunks(policy, "eager", obs), **CHUNK_TOL)


@pytest.mark.parametrize(
    "sampler, k, kwargs",
    [
        ("ddpm", 10, {}),
        ("ddim", 3, {}),
        ("consistency", 2, dict(consistency_timesteps=(90, 60, 30, 0), sampler="consistency",
                                num_inference_steps=1)),
        ("mse", 1, dict(objective="mse")),
    ],
)  # fmt: skip
def test_every_sampler_matches_eager(ort, sampler, k, kwargs):
    policy = _policy(**kwargs)
    obs = _obs(3)
    torch.testing.assert_close(
        _chunks(policy, "onnx", obs, sampler, k), _chunks(policy, "eager", obs, sampler, k),
        **CHUNK_TOL,
    )  # fmt: skip


def test_transformer_matches_eager(ort):
    policy = _policy(backbone="transformer", n_layer=2, n_head=2, n_emb=32)
    for batch in (1, 4):
        onnx, eager = _eval_pair(policy, batch)
        torch.testing.assert_close(onnx, eager, **EVAL_TOL)
    obs = _obs(4)
    torch.testing.assert_close(
        _chunks(policy, "onnx", obs), _chunks(policy, "eager", obs), **CHUNK_TOL
    )


def test_guidance_needs_a_gradient_and_runs_eagerly(ort):
    """Real-time chunking's guidance backpropagates through the net: eager, under onnx too."""
    policy = _policy()
    obs, prefix = _obs(2), torch.full((2, 3, 2), 0.3)
    kw = dict(prefix=prefix, prefix_mode="guidance")
    torch.testing.assert_close(
        _chunks(policy, "onnx", obs, **kw), _chunks(policy, "eager", obs, **kw), **CHUNK_TOL
    )


# ------------------------------------------------------------------ stale weights
def _assert_onnx_follows(policy: DiffusionPolicy) -> None:
    onnx, eager = _eval_pair(policy, 2)
    torch.testing.assert_close(onnx, eager, **EVAL_TOL)


def _scale_weights(policy: DiffusionPolicy) -> None:
    with torch.no_grad():
        for p in policy.net.parameters():
            p.mul_(1.5)


def test_export_is_kept_while_the_weights_stay(ort):
    policy = _policy()
    _assert_onnx_follows(policy)
    exported = policy._onnx
    _assert_onnx_follows(policy)
    policy.predict_action(_obs(1))
    assert policy._onnx is exported
    policy.use_backend("eager")  # frees it
    assert policy._onnx is None


@pytest.mark.parametrize(
    "change",
    ["in_place_no_grad", "load_state_dict", "optimizer_step", "data_write_then_eval", "copy"],
)
def test_a_weight_change_is_never_served_stale(ort, change):
    policy = _policy()
    _assert_onnx_follows(policy)
    before, _ = _eval_pair(policy, 2)
    if change == "in_place_no_grad":
        _scale_weights(policy)
    elif change == "load_state_dict":
        policy.load_state_dict(_policy(seed=5).state_dict())
    elif change == "optimizer_step":  # in eval mode: no train() / eval() to refresh it
        opt = torch.optim.SGD(policy.parameters(), lr=0.5)
        batch = {"obs": _obs(4), "action": torch.rand(4, 16, 2) * 2 - 1}
        policy.compute_loss(batch).backward()
        opt.step()
    elif change == "data_write_then_eval":  # invisible to version counters: eval() refreshes
        for p in policy.net.parameters():
            p.data.copy_(p.data * 1.5)
        policy.eval()
    else:  # a deep copy (as EMA makes) exports its own weights, which then change
        policy = copy.deepcopy(policy)
        _assert_onnx_follows(policy)
        before, _ = _eval_pair(policy, 2)
        _scale_weights(policy)
    after, _ = _eval_pair(policy, 2)
    assert not torch.allclose(before, after, **EVAL_TOL), "the weights did not change the output"
    _assert_onnx_follows(policy)


def test_refresh_backend_after_a_data_write(ort):
    policy = _policy()
    _assert_onnx_follows(policy)
    for p in policy.net.parameters():
        p.data.mul_(1.5)  # the one write no version counter sees (use_backend's docstring)
    policy.refresh_backend()
    _assert_onnx_follows(policy)


def test_the_export_leaves_the_mode_as_it_was(ort):
    """The graph is the eval-mode network; exporting it does not switch a training net."""
    policy = _policy().use_backend("onnx").train()
    x, cond = torch.zeros(1, 16, 2), torch.zeros(1, 40)
    with torch.inference_mode():
        policy.denoise(x, 5, cond)
    assert policy._onnx is not None and policy.training and policy.net.training


# ------------------------------------------------------------------ refusals
def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'; use one of"):
        _policy().use_backend("tensorrt")


def test_missing_onnxruntime_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(
        ValueError, match=r"install the 'onnx' extra: pip install -e \"\.\[onnx\]\""
    ):
        _policy().use_backend("onnx")


def test_onnx_off_the_cpu_is_refused(ort):
    policy = _policy().use_backend("onnx")
    x, cond = torch.zeros(1, 16, 2, device="meta"), torch.zeros(1, 40, device="meta")
    with torch.inference_mode(), pytest.raises(ValueError, match="runs on the CPU"):
        policy.denoise(x, 5, cond)


# ------------------------------------------------------------------ dp-eval
LEGACY_POLICY = Path(__file__).parent / "fixtures" / "legacy_79d1b22" / "policy"


def test_dp_eval_runs_the_onnx_backend(ort, tmp_path):
    """dp-eval --backend onnx: the actor's chunks are the eager ones to float rounding, and the
    results record the backend."""
    policy = DiffusionPolicy.from_pretrained(LEGACY_POLICY)
    rng = np.random.default_rng(0)
    obs = {k: rng.uniform(0, 512, (3, 2, *s)).astype(np.float32) for k, s in OBS_SHAPES.items()}
    seeds = np.arange(3)
    eager = PolicyActor(policy, "ddim", 3)(obs, seeds)
    onnx = PolicyActor(policy.use_backend("onnx"), "ddim", 3)(obs, seeds)
    # raw units (px): CHUNK_TOL in normalized units times the half-range of the actions
    half_range = 256
    np.testing.assert_allclose(onnx, eager, atol=CHUNK_TOL["atol"] * half_range, rtol=0)
    args = ["--checkpoint", LEGACY_POLICY, "--episodes", 1, "--videos", 0, "--device", "cpu",
            "--inference-steps", 2, "--no-progress", "--backend", "onnx"]  # fmt: skip
    summary = eval_script.main(tyro.cli(eval_script.Config, args=[str(a) for a in args]))
    assert summary["backend"] == "onnx" and summary["episodes"] == 1
