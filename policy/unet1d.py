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

Speed. The convolutions and the step MLP's Linears are the `policy.fast_layers` versions of
the nn layers (same parameters, same state_dict, same outputs to float rounding) with faster CPU
paths for inference (eval mode, no gradient, small batches), and `BatchedFiLM` runs every
block's FiLM Linear as one matmul. Their caches of re-laid-out weights are dropped, and rebuilt
on the next fast call, by train() / eval(), load_state_dict, .to() and EMA.update. After writing
the weights of an eval-mode net in place yourself (`p.data.copy_(w)`), call
`net.refresh_fast_paths()` (or `net.eval()`); fast_layers' docstring has the rules.
"""

from __future__ import annotations

import logging
import math

import einops
import torch
import torch.nn.functional as F
from torch import nn

from dplite.policy.fast_layers import (
    BatchedFiLM,
    FastConv1d,
    FastConvTranspose1d,
    FastLinear,
    refresh_fast_paths,
)

logger = logging.getLogger(__name__)


def batch_timesteps(
    timestep: int | torch.Tensor, B: int, device: torch.device, name: str
) -> torch.Tensor:
    """A denoiser's timestep argument as (B,): a python int, a 0-d or (1,) tensor (one t for
    the batch) or a (B,) tensor; anything else is refused, naming the network `name`."""
    if not torch.is_tensor(timestep):
        return torch.full((B,), timestep, dtype=torch.long, device=device)  # (B,)
    if timestep.dim() == 0 or timestep.shape == (1,):
        return timestep.reshape(1).to(device).expand(B)  # (B,)
    if timestep.shape != (B,):
        raise ValueError(
            f"{name}: timestep has shape {tuple(timestep.shape)}, "
            f"expected a python int, a 0-d tensor, (1,) or ({B},)"
        )
    return timestep.to(device)  # (B,)


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
        # without autograd, Mish overwrites the fresh GroupNorm output instead of allocating
        # another (B, O, T) tensor: the same values, 0-6 % less time at batch 50 on a CPU
        # (docs/benchmarks.md); autograd needs Mish's input kept, so training is unchanged
        return F.mish(norm(conv(x)), inplace=not torch.is_grad_enabled())  # (B, O, T)


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
        # Blocks in the order forward uses them; at inference one matmul gives all their FiLMs.
        self._res_blocks = [
            *(b for level in self.down_modules for b in level[:2]),
            *self.mid_modules,
            *(b for level in self.up_modules for b in level[:2]),
        ]
        self.batched_film = BatchedFiLM([b.cond_encoder[1] for b in self._res_blocks])
        logger.debug("ConditionalUnet1D: %d parameters", sum(p.numel() for p in self.parameters()))

    def refresh_fast_paths(self) -> None:
        """Make the inference fast paths use the current weights (rebuilt on the next fast call).

        Needed only after writing the weights of an eval-mode net in place yourself.
        """
        refresh_fast_paths(self)

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
        return batch_timesteps(timestep, B, sample.device, "ConditionalUnet1D")

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

        films = iter(self.batched_film(cond))  # per block (B, 2 O), or None: the block's own
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
    "ConditionalResidualBlock1D",
    "ConditionalUnet1D",
    "Conv1dBlock",
    "SinusoidalPosEmb",
]
