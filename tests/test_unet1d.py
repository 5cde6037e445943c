"""Tests for policy/unet1d.py: the architecture of Diffusion Policy's ConditionalUnet1D (Chi et al.
2023) pinned by exact parameter counts and the reference state_dict layout, shape and input
contracts, FiLM / timestep wiring, batch independence, and the packed-oneDNN inference layers
checked against plain nn.Conv1d / nn.ConvTranspose1d (outputs and gradients).
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from policy import unet1d
from policy.unet1d import ConditionalUnet1D, FastConv1d, FastConvTranspose1d

DA, DC = 2, 40  # action size, global cond size

needs_packed = pytest.mark.skipif(
    not unet1d._packed_ops_available(), reason="this torch build has no packed oneDNN ops"
)


def _tiny(**kw) -> ConditionalUnet1D:
    torch.manual_seed(0)
    args = dict(down_dims=(8, 16), kernel_size=3, n_groups=4, diffusion_step_embed_dim=16)
    return ConditionalUnet1D(DA, DC, **{**args, **kw})


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


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
    net = ConditionalUnet1D(DA, DC, (64, 128, 256), 5, 8, 64)
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
    net = ConditionalUnet1D(DA, DC, (64, 128, 256), 5, 8, 64)
    x, g = torch.randn(1, 16, DA), torch.randn(1, DC)
    with torch.inference_mode():
        out = net(x, 5, g)
    twin = copy.deepcopy(net)
    with torch.inference_mode():
        torch.testing.assert_close(twin(x, 5, g), out, rtol=0, atol=0)
    assert twin.state_dict().keys() == net.state_dict().keys()


def test_inference_path_equals_training_path_and_gradients_flow():
    net = ConditionalUnet1D(DA, DC, (64, 128, 256), 5, 8, 64)
    x, t, g = torch.randn(2, 16, DA), torch.tensor([4, 70]), torch.randn(2, DC)
    with torch.inference_mode():
        fast = net(x, t, g)
    out = net(x, t, g)  # grad enabled: every layer is the standard nn module
    torch.testing.assert_close(fast, out.detach(), rtol=1e-5, atol=1e-5)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_weight_update_invalidates_the_inference_cache():
    net = ConditionalUnet1D(DA, DC, (64, 128, 256), 5, 8, 64)
    x, g = torch.randn(1, 16, DA), torch.randn(1, DC)
    with torch.inference_mode():
        before = net(x, 5, g)
    with torch.no_grad():  # an optimizer step / EMA update / load_state_dict: in-place writes
        for p in net.parameters():
            p.mul_(1.1)
    with torch.inference_mode():
        after = net(x, 5, g)
    net.set_fast_inference(False)
    with torch.inference_mode():
        plain = net(x, 5, g)
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, plain, rtol=1e-5, atol=1e-5)


# ---- the packed inference layers against the plain torch layers ---------------------------------


def _copy_into(dst: nn.Module, src: nn.Module) -> nn.Module:
    dst.load_state_dict(src.state_dict())
    return dst


def _assert_same_autograd(ref: nn.Module, fast: nn.Module, x: torch.Tensor) -> None:
    """With autograd on: same output and same gradients for input, weight and bias."""
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yf = ref(xr), fast(xf)
    upstream = torch.randn_like(yr)
    (yr * upstream).sum().backward()
    (yf * upstream).sum().backward()
    torch.testing.assert_close(yf, yr)
    torch.testing.assert_close(xf.grad, xr.grad)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad)
    torch.testing.assert_close(fast.bias.grad, ref.bias.grad)


@pytest.mark.parametrize(
    ("conv_args", "B", "T", "packed"),
    [
        # big weights take packed oneDNN
        pytest.param(
            dict(in_channels=128, out_channels=96, kernel_size=5, padding=2),
            1,
            16,
            True,
            marks=needs_packed,
        ),
        pytest.param(
            dict(in_channels=128, out_channels=160, kernel_size=3, stride=2, padding=1),
            2,
            8,
            True,
            marks=needs_packed,
        ),
        pytest.param(
            dict(in_channels=256, out_channels=256, kernel_size=1), 1, 4, True, marks=needs_packed
        ),
        # small weights take im2col + one GEMM (no oneDNN needed)
        (dict(in_channels=8, out_channels=12, kernel_size=5, padding=2), 2, 16, False),
        (dict(in_channels=8, out_channels=8, kernel_size=3, stride=2, padding=1), 3, 6, False),
        (dict(in_channels=16, out_channels=4, kernel_size=1), 1, 8, False),
    ],
)
def test_fast_conv1d_matches_nn_conv1d(conv_args, B, T, packed):
    torch.manual_seed(0)
    ref = nn.Conv1d(**conv_args)
    fast = _copy_into(FastConv1d(**conv_args), ref)
    x = torch.randn(B, conv_args["in_channels"], T)
    with torch.inference_mode():
        y = fast(x)
    assert fast._cache.value is not None  # a fast path really ran
    if not packed:
        assert not fast._cache.value.is_mkldnn
    torch.testing.assert_close(y, F.conv1d(x, ref.weight, ref.bias, ref.stride, ref.padding))
    _assert_same_autograd(ref, fast, x)


@needs_packed
@pytest.mark.parametrize(("B", "T"), [(1, 4), (3, 8)])
def test_fast_conv_transpose1d_matches_nn(B, T):
    torch.manual_seed(0)
    ref = nn.ConvTranspose1d(128, 128, 4, stride=2, padding=1)
    fast = _copy_into(FastConvTranspose1d(128, 128, 4, stride=2, padding=1), ref)
    x = torch.randn(B, 128, T)
    with torch.inference_mode():
        y = fast(x)
    assert fast._cache.value is not None
    assert y.shape == (B, 128, 2 * T)
    torch.testing.assert_close(y, F.conv_transpose1d(x, ref.weight, ref.bias, 2, 1))
    _assert_same_autograd(ref, fast, x)


def test_fast_layers_step_aside_for_large_inputs_and_autograd():
    torch.manual_seed(0)
    conv = FastConv1d(256, 256, 5, padding=2)
    with torch.inference_mode():
        conv(torch.randn(8, 256, 16))  # 128 rows > FAST_MAX_ROWS: PyTorch's own kernel
    conv(torch.randn(1, 256, 16))  # autograd on: the standard nn.Conv1d graph
    assert conv._cache.value is None
