"""Tests for policy/unet1d.py: the architecture of Diffusion Policy's ConditionalUnet1D (Chi et al.
2023) pinned by exact parameter counts and the reference state_dict layout, shape and input
contracts, FiLM / timestep wiring, batch independence, and the whole net's inference fast paths
(policy/fast_layers.py, tested layer by layer in test_fast_layers.py): equal to the standard
path, and never serving old weights after load_state_dict, or after an in-place write followed
by the documented refresh.
"""

import copy

import pytest
import torch
from torch import nn

from dplite.policy.fast_layers import FastConvTranspose1d, FastPath, packed_ops_available
from dplite.policy.unet1d import ConditionalUnet1D

DA, DC = 2, 40  # action size, global cond size


def _tiny(**kw) -> ConditionalUnet1D:
    torch.manual_seed(0)
    args = dict(down_dims=(8, 16), kernel_size=3, n_groups=4, diffusion_step_embed_dim=16)
    return ConditionalUnet1D(DA, DC, **{**args, **kw})


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _medium() -> ConditionalUnet1D:
    """In eval mode; big enough for every fast path: packed oneDNN, im2col, FastLinear, FiLM."""
    return ConditionalUnet1D(DA, DC, (64, 128, 256), 5, 8, 64).eval()


def _fast_run(net: ConditionalUnet1D, *args) -> torch.Tensor:
    """net(*args) under inference_mode (net in eval mode), checking that every fast path ran."""
    assert not net.training
    with torch.inference_mode():
        out = net(*args)
    layers = [m for m in net.modules() if isinstance(m, FastPath)]
    skipped = [] if packed_ops_available() else [FastConvTranspose1d]
    assert len(layers) > 10
    assert all(m._fast is not None for m in layers if type(m) not in skipped)
    return out


def _standard_run(net: ConditionalUnet1D, *args) -> torch.Tensor:
    """net(*args) through the plain nn layers (train mode: no fast path), then back to eval."""
    with torch.no_grad():
        out = net.train()(*args)
    net.eval()
    return out


@pytest.mark.parametrize(
    ("down_dims", "expected"), [((256, 512, 1024), 65_783_298), ((64, 128, 256), 5_412_162)]
)
def test_parameter_count_matches_reference(down_dims, expected):
    net = ConditionalUnet1D(DA, DC, down_dims, 5, 8, 256, cond_predict_scale=True)
    assert _n_params(net) == expected


def test_film_without_scale_drops_exactly_the_scale_rows():
    # bias-only FiLM: every residual block's Linear(cond_dim, 2 O) becomes Linear(cond_dim, O)
    with_scale, bias_only = _tiny(cond_predict_scale=True), _tiny(cond_predict_scale=False)
    cond_dim = 16 + DC
    outs = [b.out_channels for b in with_scale._res_blocks]  # 8, 8, 16, 16, 16, 16, 8, 8
    assert outs == [8, 8, 16, 16, 16, 16, 8, 8]
    assert _n_params(with_scale) - _n_params(bias_only) == sum(o * (cond_dim + 1) for o in outs)


def test_state_dict_has_the_reference_layout():
    # plain nn parameter names/shapes (checkpoints of the public implementation load by name)
    sd = _tiny().state_dict()
    expected = {
        "diffusion_step_encoder.1.weight": (64, 16),
        "diffusion_step_encoder.3.weight": (16, 64),
        "down_modules.0.0.blocks.0.block.0.weight": (8, DA, 3),
        "down_modules.0.0.blocks.0.block.1.weight": (8,),
        "down_modules.0.0.cond_encoder.1.weight": (16, 16 + DC),
        "down_modules.0.0.residual_conv.weight": (8, DA, 1),
        "down_modules.0.2.weight": (8, 8, 3),
        "mid_modules.1.blocks.1.block.0.weight": (16, 16, 3),
        "up_modules.0.0.blocks.0.block.0.weight": (8, 32, 3),
        "up_modules.0.2.weight": (8, 8, 4),  # ConvTranspose1d: (in, out, k)
        "final_conv.0.block.0.weight": (8, 8, 3),
        "final_conv.1.weight": (DA, 8, 1),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any("freqs" in k or "packed" in k for k in sd)


@pytest.mark.parametrize(("B", "T"), [(1, 2), (3, 8), (5, 16)])
def test_output_shape(B, T):
    net = _tiny()
    out = net(torch.randn(B, T, DA), torch.randint(0, 100, (B,)), torch.randn(B, DC))
    assert out.shape == (B, T, DA)
    assert torch.isfinite(out).all()


def test_int_0d_and_batched_timesteps_agree():
    net, B = _tiny(), 3
    x, g = torch.randn(B, 8, DA), torch.randn(B, DC)
    with torch.no_grad():
        ref = net(x, torch.full((B,), 7, dtype=torch.long), g)
        for t in (7, torch.tensor(7), torch.tensor([7]), torch.full((B,), 7.0)):
            torch.testing.assert_close(net(x, t, g), ref, rtol=0, atol=0)


def test_global_cond_and_timestep_change_the_output():
    net, B = _tiny(), 2
    x, g = torch.randn(B, 8, DA), torch.randn(B, DC)
    with torch.no_grad():
        base = net(x, 10, g)
        assert (net(x, 10, g + 1.0) - base).abs().max() > 1e-3  # FiLM is wired
        assert (net(x, 60, g) - base).abs().max() > 1e-3  # step embedding is wired
        torch.testing.assert_close(net(x, 10, g), base, rtol=0, atol=0)  # deterministic


def test_samples_in_a_batch_do_not_interact():
    # GroupNorm normalizes per sample and FiLM is per sample, so each row is its own function
    net = _medium()  # the fast paths at batch 4 and batch 1
    x, t, g = torch.randn(4, 16, DA), torch.tensor([3, 50, 99, 0]), torch.randn(4, DC)
    with torch.inference_mode():
        whole = net(x, t, g)
        for i in range(4):
            torch.testing.assert_close(
                net(x[i : i + 1], t[i : i + 1], g[i : i + 1]), whole[i : i + 1]
            )


@pytest.mark.parametrize(
    ("sample_shape", "cond_shape", "match"),
    [
        ((2, 5, DA), (2, DC), "divisible by 2"),
        ((2, 8, DA + 1), (2, DC), "input_dim"),
        ((2, 8), (2, DC), "input_dim"),
        ((2, 8, DA), (2, DC + 1), "global_cond_dim"),
        ((2, 8, DA), (3, DC), "global_cond"),
    ],
)
def test_bad_shapes_raise(sample_shape, cond_shape, match):
    net = _tiny()
    x, g = torch.randn(sample_shape), torch.randn(cond_shape)
    with pytest.raises(ValueError, match=match):
        net(x, 1, g)


def test_horizon_must_divide_by_two_per_down_sampling():
    x, g = torch.randn(2, 6, DA), torch.randn(2, DC)
    assert _tiny(down_dims=(8, 16))(x, 1, g).shape == (2, 6, DA)  # one down-sampling: T % 2
    three_levels = _tiny(down_dims=(8, 8, 16))  # two down-samplings: T % 4
    with pytest.raises(ValueError, match="divisible by 4"):
        three_levels(x, 1, g)
    assert three_levels(torch.randn(2, 12, DA), 1, g).shape == (2, 12, DA)


def test_bad_timestep_shape_and_missing_cond_raise():
    net = _tiny()
    x, g = torch.randn(2, 8, DA), torch.randn(2, DC)
    with pytest.raises(ValueError, match="timestep"):
        net(x, torch.zeros(3, dtype=torch.long), g)
    with pytest.raises(ValueError, match="global_cond"):
        net(x, 1, None)


def test_deepcopy_after_inference_gives_an_identical_network():
    # EMA keeps a deepcopy: the packed caches must not be copied, the results must be
    net = _medium()
    x, g = torch.randn(1, 16, DA), torch.randn(1, DC)
    out = _fast_run(net, x, 5, g)
    twin = copy.deepcopy(net)
    torch.testing.assert_close(_fast_run(twin, x, 5, g), out, rtol=0, atol=0)
    assert twin.state_dict().keys() == net.state_dict().keys()


def test_inference_path_equals_training_path_and_gradients_flow():
    net = _medium()
    x, t, g = torch.randn(2, 16, DA), torch.tensor([4, 70]), torch.randn(2, DC)
    fast = _fast_run(net, x, t, g)
    out = net.train()(x, t, g)  # grad enabled: every layer is the standard nn module
    torch.testing.assert_close(fast, out.detach(), rtol=1e-5, atol=1e-5)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_train_mode_never_uses_the_caches():
    net = _medium()
    x, g = torch.randn(1, 16, DA), torch.randn(1, DC)
    fast = _fast_run(net, x, 5, g)
    net.train()
    with torch.inference_mode():
        plain = net(x, 5, g)
    assert all(m._fast is None for m in net.modules() if isinstance(m, FastPath))
    torch.testing.assert_close(plain, fast, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("refresh", ["refresh_fast_paths", "eval"])
def test_in_place_weight_copy_then_refresh_serves_the_new_weights(refresh):
    # The documented contract: after writing an eval-mode net's weights in place (p.data.copy_,
    # which no module can see), net.refresh_fast_paths() or net.eval() before the next call.
    net, donor = _medium(), _medium()
    x, g = torch.randn(1, 16, DA), torch.randn(1, DC)
    old = _fast_run(net, x, 5, g)
    for p, w in zip(net.parameters(), donor.parameters(), strict=True):
        p.data.copy_(w)
    getattr(net, refresh)()
    new = _fast_run(net, x, 5, g)
    torch.testing.assert_close(new, _standard_run(donor, x, 5, g), rtol=1e-5, atol=1e-5)
    assert (new - old).abs().max() > 1e-2


def test_load_state_dict_serves_the_new_weights_without_a_call():
    # from_pretrained and EMA.load_state_dict load through a parent module: its hooks must run
    net, donor = _medium(), _medium()
    x, g = torch.randn(1, 16, DA), torch.randn(1, DC)
    old = _fast_run(net, x, 5, g)
    nn.ModuleDict({"net": net}).load_state_dict(
        {f"net.{k}": v for k, v in donor.state_dict().items()}
    )
    new = _fast_run(net, x, 5, g)
    torch.testing.assert_close(new, _standard_run(donor, x, 5, g), rtol=1e-5, atol=1e-5)
    assert (new - old).abs().max() > 1e-2
