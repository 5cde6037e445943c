"""ConditionalUnet1D: the temporal UNet that predicts the noise on an action chunk.

Follows Diffusion Policy (Chi et al. 2023, arXiv 2303.04137, the CNN-based variant), which
builds on the temporal UNet of Diffuser (Janner et al. 2022, arXiv 2205.09991):

- the diffusion step k goes through a sinusoidal embedding and a small MLP; its feature is
  concatenated with the global condition (the encoded observations) into one vector `cond`;
- residual blocks of two Conv1d -> GroupNorm -> Mish layers over the time axis, the first one
  modulated by FiLM (Perez et al. 2018): `cond` -> Mish -> Linear gives a per-channel scale and
  bias (or only a bias when `cond_predict_scale=False`);
- a UNet over time: two residual blocks per level, stride-2 down-sampling, two middle blocks,
  then up-sampling levels that concatenate the skip of the same resolution.

Parameter names and shapes are those of plain nn.Conv1d / nn.Linear / nn.GroupNorm (and the
module layout of the public reference implementation), so a state_dict is an ordinary one.

Speed on the CPU. At batch 1 PyTorch runs Conv1d / ConvTranspose1d through its generic
`slow_conv2d` / `slow_conv_transpose2d` kernels, which read the weights at about 6 GB/s on a
2-core machine: 85-90 % of a forward pass. So `FastConv1d`, `FastConvTranspose1d` and
`FastLinear` are the nn layers (same parameters, same state_dict) with a fast path taken only
when no gradient is needed (no_grad / inference_mode), the tensors are fp32 on the CPU and the
input is small (batch x time <= FAST_MAX_ROWS):

- big convolution weights run through oneDNN on a copy of the weight re-laid out once into
  oneDNN's blocked format (the internal ops PyTorch's inductor uses for frozen CPU models);
  this streams the weights near memory bandwidth, 5-10x faster than `slow_conv2d`;
- small ones run as im2col (unfold along time) + one GEMM against a cached contiguous
  weight.T, which costs less call overhead than oneDNN;
- every block's FiLM Linear reads the same Mish(cond), so the UNet does them as one matmul.

The math is the same (outputs agree with nn.Conv1d to float rounding; tests check it) and
training never takes these paths: with autograd on, every layer is the standard nn module. The
cached layouts are rebuilt when a parameter is replaced or changed in place (tensor version
counter), never saved in a state_dict, and dropped on deepcopy / pickle. Parameters created
under inference_mode (no version counter) take the standard path.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import einops
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

# Inference fast paths apply up to this many rows (batch x time); above it PyTorch's own choice
# (oneDNN for large batches) is as good. Weights with at least PACKED_MIN_WEIGHT elements go to
# packed oneDNN (it reads big weights near memory bandwidth but costs a fixed ~40 us a call);
# smaller ones to im2col + one GEMM. Both thresholds measured on a 2-core AVX-512 CPU.
FAST_MAX_ROWS = 64
PACKED_MIN_WEIGHT = 150_000

_mkldnn_ops = torch.ops.mkldnn
_packed_ops_state: dict[str, bool | None] = {"ok": None}


class _DerivedWeights:
    """A tensor derived from parameters (re-laid-out copy), rebuilt when any of them changes.

    Keeps the source tensors themselves plus their version counters, so an optimizer step, an
    EMA update, load_state_dict or `.to()` all invalidate it. Never copied: deepcopy and pickle
    give an empty cache (oneDNN tensors have no storage to copy; rebuilding is cheap).
    """

    def __init__(self) -> None:
        self.key: list[tuple[torch.Tensor, int]] = []
        self.value = None

    def get(self, params: list[torch.Tensor], build: Callable[[], Any]) -> Any:
        key = [(p, p._version) for p in params]
        stale = len(key) != len(self.key) or any(
            p is not q or v != u for (p, v), (q, u) in zip(key, self.key, strict=True)
        )
        if stale or self.value is None:
            with torch.no_grad():
                self.value = build()
            self.key = key
        return self.value

    def clear(self) -> None:
        self.key, self.value = [], None

    def __deepcopy__(self, memo: dict) -> _DerivedWeights:
        return _DerivedWeights()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()


def _packed_ops_available() -> bool:
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


def _fast_path_ok(module: nn.Module, x: torch.Tensor, rows: int) -> bool:
    """Inference layouts only where they are exact and faster: no autograd, fp32 CPU, small."""
    w = module.weight
    return (
        module.fast_inference
        and rows <= FAST_MAX_ROWS
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and w.dtype == torch.float32
        and not w.is_inference()  # made under inference_mode: no version counter to watch
        and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
        and not torch.is_autocast_enabled("cpu")
    )


# The 1D convolutions run as 2D ones over a (B, C, 1, T) view: oneDNN's packing ops take 2D.
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


class FastConv1d(nn.Conv1d):
    """nn.Conv1d (same parameters, same result) with no-grad CPU fast paths for small inputs."""

    fast_inference: bool = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.dilation != (1,) or self.padding_mode != "zeros":
            raise ValueError("FastConv1d supports groups=1, dilation=1, zero padding only")
        if isinstance(self.padding, str):
            raise ValueError(f"FastConv1d: padding={self.padding!r}, expected an int")
        self._cache = _DerivedWeights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or not _fast_path_ok(self, x, x.shape[0] * x.shape[2]):
            return super().forward(x)
        w = self.weight
        if w.numel() >= PACKED_MIN_WEIGHT and _packed_ops_available():
            packed = self._cache.get([w], lambda: _pack_conv(w, self.padding, self.stride, x.shape))
            return _packed_conv(x, packed, self.bias, self.padding, self.stride)  # (B, O, T')
        w_t = self._cache.get([w], lambda: w.reshape(w.shape[0], -1).T.contiguous())  # (C k, O)
        k, p, s = self.kernel_size[0], self.padding[0], self.stride[0]
        return _im2col_conv(x, w_t, self.bias, k, p, s)  # (B, O, T')


class FastConvTranspose1d(nn.ConvTranspose1d):
    """nn.ConvTranspose1d (same parameters, same result) with a packed-oneDNN no-grad path."""

    fast_inference: bool = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.dilation != (1,) or self.padding_mode != "zeros":
            raise ValueError("FastConvTranspose1d supports groups=1, dilation=1 only")
        self._cache = _DerivedWeights()

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if (
            output_size is not None
            or x.dim() != 3
            or not _fast_path_ok(self, x, x.shape[0] * x.shape[2])
            or not _packed_ops_available()
        ):
            return super().forward(x, output_size)
        args = (self.padding, self.output_padding, self.stride)
        packed = self._cache.get(
            [self.weight], lambda: _pack_conv_transpose(self.weight, *args, x.shape)
        )
        return _packed_conv_transpose(x, packed, self.bias, *args)  # (B, O, T')


class FastLinear(nn.Linear):
    """nn.Linear (same parameters, same result); no-grad small batches use a cached weight.T."""

    fast_inference: bool = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._cache = _DerivedWeights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or not _fast_path_ok(self, x, x.shape[0]):
            return super().forward(x)
        w_t = self._cache.get([self.weight], lambda: self.weight.T.contiguous())  # (I, O)
        return torch.addmm(self.bias, x, w_t) if self.bias is not None else x @ w_t  # (B, O)


class SinusoidalPosEmb(nn.Module):
    """Transformer sinusoidal embedding of the diffusion step (Vaswani et al. 2017, sec. 3.5)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"diffusion_step_embed_dim={dim}: expected an even number >= 4")
        half = dim // 2
        freqs = torch.exp(torch.arange(half) * (-math.log(10000.0) / (half - 1)))  # (dim/2,)
        # Not persistent: derived from dim, so checkpoints stay the reference's plain layout.
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = t.to(self.freqs.dtype)[:, None] * self.freqs[None, :]  # (B, dim/2)
        return torch.cat([arg.sin(), arg.cos()], dim=-1)  # (B, dim)


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish, length-preserving (padding k // 2, odd k)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        if out_ch % n_groups:
            raise ValueError(f"channels {out_ch} not divisible by n_groups={n_groups}")
        self.block = nn.Sequential(
            FastConv1d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_ch),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, norm, _ = self.block
        return F.mish(norm(conv(x)))  # (B, O, T)


class ConditionalResidualBlock1D(nn.Module):
    """Two Conv1dBlocks with FiLM conditioning after the first and a residual connection."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        cond_dim: int,
        kernel_size: int,
        n_groups: int,
        cond_predict_scale: bool,
    ) -> None:
        super().__init__()
        self.out_channels = out_ch
        self.cond_predict_scale = cond_predict_scale
        self.blocks = nn.ModuleList(
            [
                Conv1dBlock(in_ch, out_ch, kernel_size, n_groups),
                Conv1dBlock(out_ch, out_ch, kernel_size, n_groups),
            ]
        )
        film_dim = 2 * out_ch if cond_predict_scale else out_ch
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, film_dim))
        self.residual_conv = FastConv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, film: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, C_in, T), cond (B, cond_dim) -> (B, C_out, T).

        `film` (B, 2 O or O), when given, is this block's cond_encoder(cond) computed by the
        caller (the UNet batches every block's FiLM into one matmul at inference).
        """
        h = self.blocks[0](x)  # (B, O, T)
        if film is None:
            film = self.cond_encoder(cond)  # (B, 2O or O)
        film = film[:, :, None]  # (B, 2O or O, 1)
        if self.cond_predict_scale:
            # first half scale, second half bias, as in the reference's (B, 2, O, 1) reshape
            scale, bias = film[:, : self.out_channels], film[:, self.out_channels :]
            h = torch.addcmul(bias, scale, h)  # (B, O, T)
        else:
            h = h + film  # (B, O, T)
        h = self.blocks[1](h)  # (B, O, T)
        return h + self.residual_conv(x)  # (B, O, T)


class ConditionalUnet1D(nn.Module):
    """Epsilon network of Diffusion Policy: (noisy chunk, step, global cond) -> predicted noise.

    Args:
        input_dim: Da, the action size (channels of the denoised sequence).
        global_cond_dim: Dc, size of the flattened observation features (0 for none).
        down_dims: channels per UNet level; T must be divisible by 2 ** (len(down_dims) - 1).
        kernel_size: odd temporal kernel of the residual blocks.
        n_groups: GroupNorm groups (must divide every entry of down_dims).
        diffusion_step_embed_dim: size of the step embedding (dsed).
        cond_predict_scale: FiLM with scale and bias (True) or bias only (False).
    """

    def __init__(
        self,
        input_dim: int,
        global_cond_dim: int,
        down_dims: tuple[int, ...] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        diffusion_step_embed_dim: int = 256,
        cond_predict_scale: bool = True,
    ) -> None:
        super().__init__()
        if input_dim < 1:
            raise ValueError(f"input_dim={input_dim}: expected >= 1")
        if global_cond_dim < 0:
            raise ValueError(f"global_cond_dim={global_cond_dim}: expected >= 0")
        if len(down_dims) < 1 or any(d < 1 for d in down_dims):
            raise ValueError(f"down_dims={down_dims}: expected a non-empty tuple of positive ints")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size}: expected odd (length-preserving)")
        self.input_dim = input_dim
        self.global_cond_dim = global_cond_dim
        self.down_dims = tuple(down_dims)
        self.horizon_multiple = 2 ** (len(down_dims) - 1)

        dsed = diffusion_step_embed_dim
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(dsed),
            FastLinear(dsed, dsed * 4),
            nn.Mish(),
            FastLinear(dsed * 4, dsed),
        )
        cond_dim = dsed + global_cond_dim

        def res(i: int, o: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(
                i, o, cond_dim, kernel_size, n_groups, cond_predict_scale
            )

        dims = [input_dim, *down_dims]
        in_out = list(zip(dims[:-1], dims[1:], strict=True))
        self.down_modules = nn.ModuleList()
        for level, (d_in, d_out) in enumerate(in_out):
            is_last = level == len(in_out) - 1
            down = nn.Identity() if is_last else FastConv1d(d_out, d_out, 3, stride=2, padding=1)
            self.down_modules.append(nn.ModuleList([res(d_in, d_out), res(d_out, d_out), down]))
        self.mid_modules = nn.ModuleList([res(down_dims[-1], down_dims[-1]) for _ in range(2)])
        # One up level per down-sampling, so every one of them up-samples and T comes back whole;
        # the skip of the finest level is (as in the reference) never concatenated.
        self.up_modules = nn.ModuleList()
        for d_in, d_out in reversed(in_out[1:]):
            up = FastConvTranspose1d(d_in, d_in, 4, stride=2, padding=1)
            self.up_modules.append(nn.ModuleList([res(2 * d_out, d_in), res(d_in, d_in), up]))
        self.final_conv = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
            FastConv1d(down_dims[0], input_dim, 1),
        )
        # Blocks in the order forward uses them, for the batched inference FiLM.
        self._res_blocks = [
            *(b for level in self.down_modules for b in level[:2]),
            *self.mid_modules,
            *(b for level in self.up_modules for b in level[:2]),
        ]
        self._film_cache = _DerivedWeights()
        self._fast_film = True
        logger.debug("ConditionalUnet1D: %d parameters", sum(p.numel() for p in self.parameters()))

    def _batched_film(self, cond: torch.Tensor) -> list[torch.Tensor | None]:
        """Every block's FiLM cond_encoder(cond), in one matmul when no gradient is needed.

        All blocks read the same Mish(cond), so stacking their Linear weights gives one
        (B, cond_dim) @ (cond_dim, sum O) product instead of 2 ops per block: at batch 1 these
        small ops cost more in call overhead than in arithmetic. With autograd on, each block
        uses its own nn.Linear (the standard training graph), signalled by None.
        """
        linears = [b.cond_encoder[1] for b in self._res_blocks]
        params = [p for lin in linears for p in (lin.weight, lin.bias)]
        if not self._fast_film:
            return [None] * len(linears)
        needs_grad = cond.requires_grad or any(p.requires_grad for p in params)
        if (torch.is_grad_enabled() and needs_grad) or any(p.is_inference() for p in params):
            return [None] * len(linears)
        w_t, b = self._film_cache.get(
            params,
            lambda: (
                torch.cat([lin.weight for lin in linears]).T.contiguous(),
                torch.cat(params[1::2]),
            ),
        )  # (cond_dim, sum O), (sum O,)
        film = torch.addmm(b, F.mish(cond), w_t)  # (B, sum O)
        return list(film.split([lin.out_features for lin in linears], dim=1))

    def set_fast_inference(self, enabled: bool) -> None:
        """Turn the no-grad CPU fast paths on or off (off = plain nn layers everywhere)."""
        for m in self.modules():
            if isinstance(m, FastConv1d | FastConvTranspose1d | FastLinear):
                m.fast_inference = enabled
                m._cache.clear()
        self._film_cache.clear()
        self._fast_film = enabled

    def _check_inputs(
        self, sample: torch.Tensor, timestep: int | torch.Tensor, global_cond: torch.Tensor | None
    ) -> torch.Tensor:
        """Validate shapes and return the timestep as a (B,) tensor on the sample's device."""
        if sample.dim() != 3 or sample.shape[-1] != self.input_dim:
            raise ValueError(
                f"ConditionalUnet1D: sample has shape {tuple(sample.shape)}, "
                f"expected (B, T, {self.input_dim}) (input_dim={self.input_dim})"
            )
        B, T, _ = sample.shape
        if T % self.horizon_multiple:
            raise ValueError(
                f"ConditionalUnet1D: horizon T={T} must be divisible by {self.horizon_multiple} "
                f"= 2 ** (len(down_dims) - 1) for down_dims={self.down_dims}"
            )
        if self.global_cond_dim > 0:
            if global_cond is None or global_cond.shape != (B, self.global_cond_dim):
                got = None if global_cond is None else tuple(global_cond.shape)
                raise ValueError(
                    f"ConditionalUnet1D: global_cond has shape {got}, "
                    f"expected ({B}, {self.global_cond_dim}) (global_cond_dim={self.global_cond_dim})"
                )
        elif global_cond is not None and global_cond.numel() > 0:
            raise ValueError(
                f"ConditionalUnet1D: global_cond of shape {tuple(global_cond.shape)} given "
                f"but the network was built with global_cond_dim=0"
            )
        if not torch.is_tensor(timestep):
            return torch.full((B,), timestep, dtype=torch.long, device=sample.device)  # (B,)
        if timestep.dim() == 0 or timestep.shape == (1,):
            return timestep.reshape(1).to(sample.device).expand(B)  # (B,)
        if timestep.shape != (B,):
            raise ValueError(
                f"ConditionalUnet1D: timestep has shape {tuple(timestep.shape)}, "
                f"expected a python int, a 0-d tensor or ({B},)"
            )
        return timestep.to(sample.device)  # (B,)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: int | torch.Tensor,
        global_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """sample (B, T, Da), timestep int | () | (B,), global_cond (B, Dc) -> eps (B, T, Da)."""
        t = self._check_inputs(sample, timestep, global_cond)  # (B,)
        x = einops.rearrange(sample, "B T Da -> B Da T")
        cond = self.diffusion_step_encoder(t)  # (B, dsed)
        if self.global_cond_dim > 0:
            cond = torch.cat([cond, global_cond.to(cond.dtype)], dim=-1)  # (B, dsed + Dc)

        films = iter(self._batched_film(cond))  # per block (B, 2 O) or None
        skips = []
        for res1, res2, down in self.down_modules:
            x = res1(x, cond, next(films))  # (B, C_level, T_level)
            x = res2(x, cond, next(films))  # (B, C_level, T_level)
            skips.append(x)
            x = down(x)  # (B, C_level, T_level / 2), or unchanged at the last level
        for mid in self.mid_modules:
            x = mid(x, cond, next(films))  # (B, C_last, T_last)
        for res1, res2, up in self.up_modules:
            x = torch.cat([x, skips.pop()], dim=1)  # (B, 2 C_level, T_level)
            x = res1(x, cond, next(films))  # (B, C_prev, T_level)
            x = res2(x, cond, next(films))  # (B, C_prev, T_level)
            x = up(x)  # (B, C_prev, 2 T_level)
        x = self.final_conv(x)  # (B, Da, T)
        return einops.rearrange(x, "B Da T -> B T Da")


__all__ = [
    "FAST_MAX_ROWS",
    "PACKED_MIN_WEIGHT",
    "ConditionalResidualBlock1D",
    "ConditionalUnet1D",
    "Conv1dBlock",
    "FastConv1d",
    "FastConvTranspose1d",
    "FastLinear",
    "SinusoidalPosEmb",
]
