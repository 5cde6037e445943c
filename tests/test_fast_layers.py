"""Tests for policy/fast_layers.py: the fast paths against the plain torch layers (outputs and
gradients), when they are taken, and the cache lifecycle: every event that changes the weights
through the module (eval/train, load_state_dict, .to(), a new Parameter, an autograd pass) or
the documented refresh call makes the next fast call use the new weights, and train mode never
uses a cache.
"""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dplite.policy.fast_layers import (
    BatchedFiLM,
    FastConv1d,
    FastConvTranspose1d,
    FastLinear,
    FastPath,
    convs_as_2d,
    packed_ops_available,
    refresh_fast_paths,
)

needs_packed = pytest.mark.skipif(
    not packed_ops_available(), reason="this torch build has no packed oneDNN ops"
)

BIG = dict(in_channels=256, out_channels=192, kernel_size=5, padding=2)  # packed oneDNN
SMALL = dict(in_channels=8, out_channels=12, kernel_size=5, padding=2)  # im2col + GEMM


def _copy_into(dst: nn.Module, src: nn.Module) -> nn.Module:
    dst.load_state_dict(src.state_dict())
    return dst


def _conv(layer: nn.Conv1d, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The reference result: F.conv1d with the layer's current (or the given) weight."""
    w = layer.weight if weight is None else weight
    return F.conv1d(x, w, layer.bias, layer.stride, layer.padding)  # (B, O, T')


def _fast_call(layer: FastPath, x: torch.Tensor) -> torch.Tensor:
    """Run layer(x) under inference_mode and check that its fast path really ran."""
    with torch.inference_mode():
        y = layer(x)
    assert layer._fast is not None, "the fast path did not run"
    return y


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


# ---- the fast paths against the plain torch layers ---------------------------------------------


@pytest.mark.parametrize(
    ("conv_args", "B", "T", "packed"),
    [
        # big weights take packed oneDNN
        pytest.param(BIG, 1, 16, True, marks=needs_packed),
        pytest.param(
            dict(in_channels=256, out_channels=320, kernel_size=3, stride=2, padding=1),
            2,
            8,
            True,
            marks=needs_packed,
        ),
        pytest.param(
            dict(in_channels=512, out_channels=384, kernel_size=1), 1, 4, True, marks=needs_packed
        ),
        # small weights take im2col + one GEMM (no oneDNN needed)
        (SMALL, 2, 16, False),
        (dict(in_channels=8, out_channels=8, kernel_size=3, stride=2, padding=1), 3, 6, False),
        (dict(in_channels=16, out_channels=4, kernel_size=1), 1, 8, False),
    ],
)
def test_fast_conv1d_matches_nn_conv1d(conv_args, B, T, packed):
    torch.manual_seed(0)
    ref = nn.Conv1d(**conv_args)
    fast = _copy_into(FastConv1d(**conv_args), ref).eval()
    x = torch.randn(B, conv_args["in_channels"], T)
    y = _fast_call(fast, x)
    assert fast._fast.value.is_mkldnn == packed  # the intended path ran
    torch.testing.assert_close(y, _conv(ref, x))
    _assert_same_autograd(ref, fast, x)


@needs_packed
@pytest.mark.parametrize(("B", "T"), [(1, 4), (3, 8)])
def test_fast_conv_transpose1d_matches_nn(B, T):
    torch.manual_seed(0)
    ref = nn.ConvTranspose1d(128, 128, 4, stride=2, padding=1)
    fast = _copy_into(FastConvTranspose1d(128, 128, 4, stride=2, padding=1), ref).eval()
    x = torch.randn(B, 128, T)
    y = _fast_call(fast, x)
    assert y.shape == (B, 128, 2 * T)
    torch.testing.assert_close(y, F.conv_transpose1d(x, ref.weight, ref.bias, 2, 1))
    _assert_same_autograd(ref, fast, x)


def test_convs_as_2d_compute_the_1d_convolutions():
    """The form policy/onnx_denoiser.py traces: the same values as F.conv1d and
    F.conv_transpose1d (a stride-2 down- and up-sampling included), in either mode."""
    torch.manual_seed(0)
    x = torch.randn(3, 8, 8)
    convs = [
        (FastConv1d(**SMALL), lambda m: F.conv1d(x, m.weight, m.bias, 1, 2)),
        (FastConv1d(8, 8, 3, stride=2, padding=1), lambda m: F.conv1d(x, m.weight, m.bias, 2, 1)),
        (
            FastConvTranspose1d(8, 6, 4, stride=2, padding=1),
            lambda m: F.conv_transpose1d(x, m.weight, m.bias, 2, 1),
        ),
    ]
    for layer, reference in convs:
        for mode in (True, False):
            with torch.no_grad(), convs_as_2d():
                y = layer.train(mode)(x)
            torch.testing.assert_close(y, reference(layer))


def test_fast_linear_matches_nn_linear():
    torch.manual_seed(0)
    ref = nn.Linear(32, 128)
    fast = _copy_into(FastLinear(32, 128), ref).eval()
    x = torch.randn(3, 32)
    torch.testing.assert_close(_fast_call(fast, x), ref(x).detach())
    _assert_same_autograd(ref, fast, x)


def test_batched_film_matches_each_linear_and_steps_aside_for_training():
    torch.manual_seed(0)
    linears = [nn.Linear(24, o) for o in (16, 8, 32)]
    film = BatchedFiLM(linears).eval()
    cond = torch.randn(2, 24)
    outs = _fast_call(film, cond)
    assert [o.shape for o in outs] == [(2, 16), (2, 8), (2, 32)]
    for out, lin in zip(outs, linears, strict=True):
        torch.testing.assert_close(out, lin(F.mish(cond)).detach())
    # with autograd on the caller runs its own Linears (the standard training graph)
    assert film(cond) == [None, None, None]
    assert film._fast is None
    with torch.inference_mode():
        assert film.train()(cond) == [None, None, None]


# ---- when the fast paths are taken -------------------------------------------------------------


def test_train_mode_never_uses_a_cache():
    torch.manual_seed(0)
    conv = FastConv1d(**SMALL).eval()
    x = torch.randn(1, 8, 16)
    _fast_call(conv, x)
    conv.train()
    assert conv._fast is None  # switching to train mode drops it
    with torch.inference_mode():
        y = conv(x)
    assert conv._fast is None  # and no-grad calls in train mode do not build one
    torch.testing.assert_close(y, _conv(conv, x))


def test_fast_layers_step_aside_for_large_inputs_autograd_and_other_dtypes():
    torch.manual_seed(0)
    conv = FastConv1d(256, 256, 5, padding=2).eval()
    with torch.inference_mode():
        conv(torch.randn(8, 256, 16))  # 128 rows > FAST_MAX_ROWS: PyTorch's own kernel
    conv(torch.randn(1, 256, 16))  # autograd on: the standard nn.Conv1d graph
    with torch.inference_mode():
        conv.double()(torch.randn(1, 256, 16, dtype=torch.float64))  # fp32 only
    assert conv._fast is None


def test_an_autograd_pass_drops_the_cache():
    # training an eval-mode layer: the next no-grad call must see the optimizer's step
    torch.manual_seed(0)
    conv = FastConv1d(**SMALL).eval()
    x = torch.randn(1, 8, 16)
    _fast_call(conv, x)
    opt = torch.optim.SGD(conv.parameters(), lr=1.0)
    conv(x).square().sum().backward()
    assert conv._fast is None
    opt.step()
    torch.testing.assert_close(_fast_call(conv, x), _conv(conv, x).detach())


# ---- the cache lifecycle: each event makes the fast path use the new weights -------------------


def _refresh(layer, w):
    layer.weight.data.copy_(w)
    refresh_fast_paths(layer)


def _eval_again(layer, w):
    layer.weight.data.copy_(w)
    layer.eval()


def _load_state_dict(layer, w):
    layer.load_state_dict({"weight": w, "bias": layer.bias.detach().clone()})


def _parent_load_state_dict(layer, w):
    parent = nn.Sequential(layer)  # the post hook also runs when a parent module loads
    parent.load_state_dict({"0.weight": w, "0.bias": layer.bias.detach().clone()})


def _new_parameter(layer, w):
    layer.weight = nn.Parameter(w)


@pytest.mark.parametrize(
    "write", [_refresh, _eval_again, _load_state_dict, _parent_load_state_dict, _new_parameter]
)
@pytest.mark.parametrize(
    "conv_args", [pytest.param(BIG, marks=needs_packed), SMALL], ids=["packed", "im2col"]
)
def test_the_fast_path_uses_the_new_weights_after(write, conv_args):
    torch.manual_seed(0)
    conv = FastConv1d(**conv_args).eval()
    x = torch.randn(1, conv_args["in_channels"], 16)
    before = _fast_call(conv, x)
    new_w = torch.randn_like(conv.weight) / conv.weight[0].numel() ** 0.5  # outputs ~ N(0, 1)
    write(conv, new_w.clone())
    after = _fast_call(conv, x)
    torch.testing.assert_close(after, _conv(conv, x, new_w))
    assert (after - before).abs().max() > 1e-2


def test_module_conversions_drop_the_cache():
    # .half().float() rounds the weights: a kept copy of the old ones would differ by ~1e-3
    torch.manual_seed(0)
    conv = FastConv1d(**SMALL).eval()
    x = torch.randn(1, 8, 16)
    _fast_call(conv, x)
    conv.half().float()
    assert conv._fast is None
    torch.testing.assert_close(_fast_call(conv, x), _conv(conv, x), rtol=0, atol=1e-5)


@needs_packed
def test_deepcopy_and_pickle_start_without_a_cache():
    torch.manual_seed(0)
    conv = FastConv1d(**BIG).eval()
    x = torch.randn(1, 256, 16)
    y = _fast_call(conv, x)  # holds a oneDNN tensor, which cannot be copied
    for twin in (copy.deepcopy(conv), pickle.loads(pickle.dumps(conv))):
        assert twin._fast is None
        torch.testing.assert_close(_fast_call(twin, x), y, rtol=0, atol=0)
    assert conv._fast is not None  # the original keeps its own
