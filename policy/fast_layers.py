"""CPU inference fast paths for the layers of ConditionalUnet1D, and the life of their caches.

Why. At batch 1 PyTorch runs Conv1d / ConvTranspose1d through its generic `slow_conv2d` /
`slow_conv_transpose2d` kernels, which read the weights at about 6 GB/s on a 2-core machine:
85-90 % of a UNet forward pass. The layers here are the nn layers (same parameters, same
state_dict, same outputs to float rounding; tests check it) with faster no-grad paths:

- big convolution weights (>= PACKED_MIN_WEIGHT elements) run through oneDNN on a copy of the
  weight re-laid out into oneDNN's blocked format (the internal ops PyTorch's inductor uses for
  frozen CPU models); this streams the weights near memory bandwidth, 5-10x faster than
  `slow_conv2d`;
- small ones run as im2col (unfold along time) + one GEMM against a contiguous copy of weight.T,
  which costs less call overhead than oneDNN;
- every residual block's FiLM Linear reads the same Mish(cond), so BatchedFiLM runs them all as
  one matmul against their stacked weights.

When. A layer takes its fast path only in eval mode, when no gradient is needed (no_grad /
inference_mode), for fp32 CPU tensors, no autocast and a small input (batch x time <=
FAST_MAX_ROWS; BatchedFiLM: any size and device, no autocast). Otherwise it is exactly its nn
parent, so training never runs the code below.

Cache lifecycle. A fast path reads a derived copy of the weights (packed, transposed or
stacked). It is built on the layer's first fast call and then kept until one of these explicit
events drops it, never by watching the weights' version counters:

- `train()` / `eval()`: entering eval mode always starts from the current weights;
- `load_state_dict` (a post hook; it also runs when a parent module loads);
- `.to()`, `.float()`, `.cpu()`... (every `_apply`, as nn.RNN re-flattens its weights there);
- a forward pass that needs the weights' gradients: they are being trained, so a normal
  optimizer loop never finds an old copy, even in eval mode. A pass that needs only the input's
  gradient (real-time chunking's guidance runs with the weights frozen) takes the nn path and
  keeps the cache;
- `refresh_fast_paths(module)`: EMA.update calls it after averaging in place.

Off switch. Inside `fast_paths_disabled()` every layer is exactly its nn parent, whatever the
mode: the plain-network baseline of scripts.benchmark, and the CUDA graph capture of
policy/cuda_graphs.py (a graph must read the parameters themselves, which in-place writes
update, not a derived copy that a refresh would free under it).

A cache also remembers the Parameter objects it came from, so assigning a new Parameter
(`conv.weight = nn.Parameter(w)`, torch.func.functional_call) takes it out of use. What no
module can see is an in-place write to the weights of an eval-mode model from outside
(`p.data.copy_(w)`, `p.mul_(2)` under no_grad, torch._foreach_*): after such a write, call
`refresh_fast_paths(model)` (ConditionalUnet1D.refresh_fast_paths(), or `model.eval()`) before
the next no-grad call, or that call still uses the weights of the last build.
"""

from __future__ import annotations

import contextlib
import logging
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

# Fast paths apply up to this many rows (batch x time); above it PyTorch's own choice (oneDNN
# for large batches) is as good. Weights with at least PACKED_MIN_WEIGHT elements go to packed
# oneDNN (it reads big weights near memory bandwidth but costs a fixed ~40 us a call); smaller
# ones to im2col + one GEMM. Both thresholds measured on a 2-core AVX-512 CPU.
FAST_MAX_ROWS = 64
PACKED_MIN_WEIGHT = 150_000
_switch = {"on": True, "convs_2d": False}


@contextlib.contextmanager
def fast_paths_disabled() -> Iterator[None]:
    """Run every fast layer as its plain nn parent inside the block (nestable)."""
    was = _switch["on"]
    _switch["on"] = False
    try:
        yield
    finally:
        _switch["on"] = was


@contextlib.contextmanager
def convs_as_2d() -> Iterator[None]:
    """Run every FastConv1d / FastConvTranspose1d as F.conv2d / F.conv_transpose2d over a
    (B, C, 1, T) view inside the block, whatever the mode (the same values to float rounding).

    For policy/onnx_denoiser.py's export: a traced 1D convolution becomes a 1D ONNX Conv, which
    ONNX Runtime's CPU provider runs one sample at a time (im2col + GEMM per sample), while a 2D
    one is rewritten into its blocked-layout (NCHWc) kernels: for the 5.4 M UNet 1.4x faster at
    batch 1 and 2x at batch 50 (1 thread, the 2-core AMD EPYC)."""
    was = _switch["convs_2d"]
    _switch["convs_2d"] = True
    try:
        yield
    finally:
        _switch["convs_2d"] = was


# ---- the cache and its lifecycle ---------------------------------------------------------------


class _Derived(NamedTuple):
    sources: tuple[torch.Tensor, ...]  # the Parameter objects it was built from
    value: Any  # a tensor or a tuple of tensors


class FastPath(nn.Module):
    """Base of the fast layers: holds their derived weights and drops them on the events above."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._fast: _Derived | None = None
        self.register_load_state_dict_post_hook(_refresh_after_load)

    def refresh_fast_path(self) -> None:
        """Drop the derived weights: the next fast call rebuilds them from the current ones."""
        self._fast = None

    def derived(self, sources: Sequence[torch.Tensor], build: Callable[[], Any]) -> Any:
        """build()'s result for these Parameter objects: built once, kept until dropped."""
        fast = self._fast
        if fast is None or not all(map(operator.is_, fast.sources, sources)):
            with torch.no_grad():
                fast = self._fast = _Derived(tuple(sources), build())
        return fast.value

    def train(self, mode: bool = True) -> FastPath:
        # eval(): start from the weights as they are now; train(): free the copies, unused there
        self.refresh_fast_path()
        return super().train(mode)

    def _apply(self, *args, **kwargs) -> FastPath:
        # .to() / .float() / .cpu() replace the parameters' data (nn.RNNBase re-syncs here too)
        self.refresh_fast_path()
        return super()._apply(*args, **kwargs)

    def __getstate__(self) -> dict:
        # deepcopy and pickle start without a cache (oneDNN tensors have no storage to copy)
        state = super().__getstate__()  # a copy of __dict__
        state["_fast"] = None
        return state


def _refresh_after_load(module: FastPath, incompatible_keys: Any) -> None:
    module.refresh_fast_path()


def refresh_fast_paths(module: nn.Module) -> None:
    """Drop the derived weights of every fast layer in `module` (call after in-place writes)."""
    for m in module.modules():
        if isinstance(m, FastPath):
            m.refresh_fast_path()


def _fast_call_ok(layer: nn.Module, x: torch.Tensor, rows: int) -> bool:
    """Whether `layer` (a conv or linear FastPath) may take its fast path for input x.

    A call that needs the weights' gradients also drops the layer's cache (module docstring).
    """
    w = layer.weight
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
        if w.requires_grad:
            layer.refresh_fast_path()  # being trained: a kept copy would miss the next step
        return False  # the fast paths have no backward
    return (
        _switch["on"]
        and not layer.training
        and rows <= FAST_MAX_ROWS
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and w.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


# ---- packed oneDNN convolutions ----------------------------------------------------------------

_mkldnn_ops = torch.ops.mkldnn
_packed_ops_state: dict[str, bool | None] = {"ok": None}


def packed_ops_available() -> bool:
    """Whether this torch build runs the packed oneDNN conv ops correctly (probed once).

    The ops are internal to PyTorch (torch.ops.mkldnn, used by inductor's freezing pass), so we
    probe them on a tiny input against F.conv1d instead of trusting the version number; if they
    fail, the big layers use im2col + GEMM instead, only slower.
    """
    if _packed_ops_state["ok"] is None:
        _packed_ops_state["ok"] = _probe_packed_ops()
    return bool(_packed_ops_state["ok"])


def _probe_packed_ops() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 6, generator=gen)  # (B, C, T)
    w = torch.randn(4, 3, 3, generator=gen)  # (O, C, k)
    wt = torch.randn(3, 4, 4, generator=gen)  # (C, O, k)
    b = torch.randn(4, generator=gen)
    try:
        with torch.no_grad():
            conv = _packed_conv(x, _pack_conv(w, (1,), (1,), x.shape), b, (1,), (1,))
            packed_t = _pack_conv_transpose(wt, (1,), (0,), (2,), x.shape)
            conv_t = _packed_conv_transpose(x, packed_t, b, (1,), (0,), (2,))
    except (RuntimeError, AttributeError, TypeError) as err:  # op missing or signature changed
        logger.warning("packed oneDNN conv unavailable (%s); using im2col + GEMM", err)
        return False
    ok = torch.allclose(conv, F.conv1d(x, w, b, 1, 1), atol=1e-5) and torch.allclose(
        conv_t, F.conv_transpose1d(x, wt, b, 2, 1), atol=1e-5
    )
    if not ok:
        logger.warning("packed oneDNN conv disagrees with F.conv1d; using im2col + GEMM")
    return ok


# The 1D convolutions run as 2D ones over a (B, C, 1, T) view: oneDNN's packing ops take 2D.
# The packing is told the input shape of the first call; other shapes still give exact results.
def _pack_conv(w, padding, stride, in_shape) -> torch.Tensor:
    return _mkldnn_ops._reorder_convolution_weight(
        w.unsqueeze(2), [0, padding[0]], [1, stride[0]], [1, 1], 1,
        [in_shape[0], in_shape[1], 1, in_shape[2]],
    )  # fmt: skip


def _packed_conv(x, packed, b, padding, stride) -> torch.Tensor:
    y = _mkldnn_ops._convolution_pointwise(
        x.unsqueeze(2), packed, b, [0, padding[0]], [1, stride[0]], [1, 1], 1, "none", [], ""
    )  # (B, O, 1, T')
    return y.squeeze(2)  # (B, O, T')


def _pack_conv_transpose(w, padding, output_padding, stride, in_shape) -> torch.Tensor:
    return _mkldnn_ops._reorder_convolution_transpose_weight(
        w.unsqueeze(2), [0, padding[0]], [0, output_padding[0]], [1, stride[0]], [1, 1], 1,
        [in_shape[0], in_shape[1], 1, in_shape[2]],
    )  # fmt: skip


def _packed_conv_transpose(x, packed, b, padding, output_padding, stride) -> torch.Tensor:
    y = _mkldnn_ops._convolution_transpose_pointwise(
        x.unsqueeze(2),
        packed,
        b,
        [0, padding[0]],
        [0, output_padding[0]],
        [1, stride[0]],
        [1, 1],
        1,
        "none",
        [],
        "",
    )  # (B, O, 1, T')
    return y.squeeze(2)  # (B, O, T')


# ---- im2col + GEMM -----------------------------------------------------------------------------


def _im2col_conv(x, w_t, b, kernel_size, padding, stride) -> torch.Tensor:
    """Conv1d as one GEMM: each output step's receptive field becomes a row of C * k values.

    w_t is weight.reshape(O, C * k).T made contiguous once: MKL's GEMM with a transposed
    right-hand side is several times slower for these skinny (few rows) products.
    """
    B = x.shape[0]
    x = F.pad(x, (padding, padding))  # (B, C, T + 2p)
    cols = x.unfold(2, kernel_size, stride)  # (B, C, T', k), a view
    T_out = cols.shape[2]
    # Plain permute/reshape rather than einops here: this runs ~25 times per forward at batch 1,
    # where einops' per-call overhead is a measurable share. (c, j) order within a row matches
    # weight.reshape(O, C * k).
    cols = cols.permute(0, 2, 1, 3).reshape(B * T_out, -1)  # (B T', C k)
    y = torch.addmm(b, cols, w_t) if b is not None else cols @ w_t  # (B T', O)
    return y.view(B, T_out, -1).transpose(1, 2)  # (B, O, T'), a view


# ---- the layers --------------------------------------------------------------------------------


class FastConv1d(FastPath, nn.Conv1d):
    """nn.Conv1d with the packed-oneDNN (big weights) or im2col (small ones) fast path."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.dilation != (1,) or self.padding_mode != "zeros":
            raise ValueError("FastConv1d supports groups=1, dilation=1, zero padding only")
        if isinstance(self.padding, str):
            raise ValueError(f"FastConv1d: padding={self.padding!r}, expected an int")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _switch["convs_2d"]:
            w, b = self.weight.unsqueeze(2), self.bias  # (O, C, 1, k)
            y = F.conv2d(x.unsqueeze(2), w, b, (1, self.stride[0]), (0, self.padding[0]))
            return y.squeeze(2)  # (B, O, T')
        if x.dim() != 3 or not _fast_call_ok(self, x, x.shape[0] * x.shape[2]):
            return super().forward(x)
        w = self.weight
        if w.numel() >= PACKED_MIN_WEIGHT and packed_ops_available():
            packed = self.derived([w], lambda: _pack_conv(w, self.padding, self.stride, x.shape))
            return _packed_conv(x, packed, self.bias, self.padding, self.stride)  # (B, O, T')
        w_t = self.derived([w], lambda: w.reshape(w.shape[0], -1).T.contiguous())  # (C k, O)
        k, p, s = self.kernel_size[0], self.padding[0], self.stride[0]
        return _im2col_conv(x, w_t, self.bias, k, p, s)  # (B, O, T')


class FastConvTranspose1d(FastPath, nn.ConvTranspose1d):
    """nn.ConvTranspose1d with a packed-oneDNN fast path."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.dilation != (1,) or self.padding_mode != "zeros":
            raise ValueError("FastConvTranspose1d supports groups=1, dilation=1 only")

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if _switch["convs_2d"] and output_size is None:
            w, b = self.weight.unsqueeze(2), self.bias  # (C, O, 1, k)
            stride, pad, out_pad = (
                (1, self.stride[0]),
                (0, self.padding[0]),
                (0, self.output_padding[0]),
            )
            return F.conv_transpose2d(x.unsqueeze(2), w, b, stride, pad, out_pad).squeeze(2)
        if (
            output_size is not None
            or x.dim() != 3
            or not _fast_call_ok(self, x, x.shape[0] * x.shape[2])
            or not packed_ops_available()
        ):
            return super().forward(x, output_size)
        w, args = self.weight, (self.padding, self.output_padding, self.stride)
        packed = self.derived([w], lambda: _pack_conv_transpose(w, *args, x.shape))
        return _packed_conv_transpose(x, packed, self.bias, *args)  # (B, O, T')


class FastLinear(FastPath, nn.Linear):
    """nn.Linear whose fast path multiplies by a contiguous copy of weight.T (faster GEMM)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or not _fast_call_ok(self, x, x.shape[0]):
            return super().forward(x)
        w = self.weight
        w_t = self.derived([w], lambda: w.T.contiguous())  # (I, O)
        return torch.addmm(self.bias, x, w_t) if self.bias is not None else x @ w_t  # (B, O)


class BatchedFiLM(FastPath):
    """Linear(Mish(cond)) for many Linears at once: one matmul against their stacked weights.

    The Linears stay parameters of their own modules (held here in a plain list, so the
    state_dict is unchanged). With autograd on, or in train mode, forward returns None for each
    Linear and the caller runs its own nn.Linear: the standard training graph.
    """

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        super().__init__()
        if any(lin.bias is None for lin in linears):
            raise ValueError("BatchedFiLM: every Linear needs a bias")
        self.linears = list(linears)  # not registered: their parameters have one owner
        self.sizes = [lin.out_features for lin in linears]

    def forward(self, cond: torch.Tensor) -> list[torch.Tensor | None]:
        """cond (B, cond_dim) -> per Linear its output on Mish(cond), (B, O_i), or None."""
        params = [p for lin in self.linears for p in (lin.weight, lin.bias)]
        if torch.is_grad_enabled() and (cond.requires_grad or any(p.requires_grad for p in params)):
            if any(p.requires_grad for p in params):
                self.refresh_fast_path()  # being trained: a kept copy would miss the next step
            return [None] * len(self.linears)  # the fast path has no backward
        if self.training or not _switch["on"] or torch.is_autocast_enabled(cond.device.type):
            return [None] * len(self.linears)  # under autocast the Linears run in its dtype
        w_t, b = self.derived(
            params,
            lambda: (torch.cat(params[0::2]).T.contiguous(), torch.cat(params[1::2])),
        )  # (cond_dim, sum O), (sum O,)
        film = torch.addmm(b, F.mish(cond), w_t)  # (B, sum O)
        return list(film.split(self.sizes, dim=1))  # each (B, O_i)


__all__ = [
    "FAST_MAX_ROWS",
    "PACKED_MIN_WEIGHT",
    "BatchedFiLM",
    "FastConv1d",
    "FastConvTranspose1d",
    "FastLinear",
    "FastPath",
    "convs_as_2d",
    "fast_paths_disabled",
    "packed_ops_available",
    "refresh_fast_paths",
]
