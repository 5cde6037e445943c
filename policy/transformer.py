"""TransformerForDiffusion: the time-series diffusion transformer, the second denoiser.

Follows Diffusion Policy (Chi et al. 2023, arXiv 2303.04137, sec. III-B "Transformer-based"
and appendix): a minGPT-style decoder over the noisy action chunk whose conditioning arrives by
cross-attention, not FiLM.

- Action tokens: each of the T noisy actions goes through a Linear to n_emb, plus a learned
  position embedding (one per chunk index), then dropout p_drop_emb.
- Conditioning tokens (the decoder's memory): the sinusoidal embedding of the diffusion step
  k (one token) followed by one token per observation step (a Linear of that step's encoded
  features, Do -> n_emb), plus their own learned position embedding, then dropout; then an MLP
  applied to each token alone (Linear 4 n_emb, Mish, Linear) or, with n_cond_layers > 0, that
  many transformer encoder blocks over the 1 + To tokens.
- n_layer pre-LayerNorm decoder blocks: causal self-attention over the action tokens (chunk
  index i sees indices <= i), cross-attention into the memory, a GELU MLP of width 4 n_emb.
  With causal_attn the cross-attention is causal in time too: chunk index i sees the time
  token and the observation steps 0 ... i (the reference's mask; index i of the chunk is
  the time of observation step i, see policy/diffusion.py's timing diagram, so index 0 sees
  only the oldest observation). Dropout p_drop_attn on the attention weights, on each
  residual branch and inside the MLP, as in torch.nn.TransformerDecoderLayer.
- A final LayerNorm and a Linear head back to Da.

The reference's published hyperparameters for PushT low-dim are the defaults here: n_layer 8,
n_head 4, n_emb 256, p_drop_emb 0.0, p_drop_attn 0.01, causal_attn, time and observations as
conditioning tokens, n_cond_layers 0 (8.97 M parameters with its 20-dimensional keypoint
observation). It is trained with AdamW whose weight decay (0.1 in the reference) falls only on
the weights of Linear layers (attention projections included); biases, LayerNorm weights and
the position embeddings are not decayed: ``optim_groups``.

Initialization as the reference (GPT-2's): Linear weights and position embeddings
N(0, 0.02), biases 0, LayerNorm 1 / 0.

Call signature of ConditionalUnet1D, so that every sampler, the MSE objective and consistency
distillation use it unchanged: ``net(sample (B, T, Da), timestep int | () | (1,) | (B,),
global_cond (B, To * Do)) -> (B, T, Da)``; the flat condition is read as To steps of Do
features, oldest first (policy/encoders.py flattens it so). The forward pass does device work
only (no host reads), so a CUDA graph can capture it; the Linear layers are policy.fast_layers'
FastLinear (the same parameters and state_dict as nn.Linear, with a faster no-grad CPU path and
the same cache lifecycle as the UNet's layers).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from dplite.policy.fast_layers import FastLinear, refresh_fast_paths
from dplite.policy.unet1d import SinusoidalPosEmb, batch_timesteps

logger = logging.getLogger(__name__)


def _linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """layer over the last axis of x (B, N, I) -> (B, N, O), as one 2D matmul (FastLinear's
    fast path takes 2D inputs)."""
    return layer(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], -1)


class Attention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017, sec. 3.2.2).

    Self-attention (`cross=False`) projects queries, keys and values with one Linear (the
    layout of nn.MultiheadAttention's in_proj); cross-attention takes queries from the tokens
    and keys and values from the memory. Dropout p_drop on the attention weights in training.
    """

    def __init__(self, n_emb: int, n_head: int, p_drop: float, cross: bool) -> None:
        super().__init__()
        self.n_head, self.p_drop, self.cross = n_head, p_drop, cross
        if cross:
            self.q_proj = FastLinear(n_emb, n_emb)
            self.kv_proj = FastLinear(n_emb, 2 * n_emb)
        else:
            self.qkv_proj = FastLinear(n_emb, 3 * n_emb)
        self.out_proj = FastLinear(n_emb, n_emb)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        return x.view(B, N, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, N, C/H)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """x (B, N, C), memory (B, S, C) (cross) or None, mask (N, S) bool (True: may attend)
        or None -> (B, N, C)."""
        if self.cross:
            q = _linear(self.q_proj, x)  # (B, N, C)
            k, v = _linear(self.kv_proj, memory).chunk(2, dim=-1)  # (B, S, C) each
        else:
            q, k, v = _linear(self.qkv_proj, x).chunk(3, dim=-1)  # (B, N, C) each
        p = self.p_drop if self.training else 0.0
        y = F.scaled_dot_product_attention(
            self._heads(q), self._heads(k), self._heads(v), attn_mask=mask, dropout_p=p
        )  # (B, H, N, C/H)
        y = y.transpose(1, 2).reshape(x.shape)  # (B, N, C)
        return _linear(self.out_proj, y)  # (B, N, C)


class Block(nn.Module):
    """One pre-LayerNorm transformer block: self-attention, cross-attention into `memory`
    (decoder blocks only), and a GELU MLP of width 4 n_emb, each on a residual branch with
    dropout (the layout of nn.TransformerDecoderLayer / EncoderLayer with norm_first=True)."""

    def __init__(self, n_emb: int, n_head: int, p_drop: float, cross: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(n_emb)
        self.self_attn = Attention(n_emb, n_head, p_drop, cross=False)
        if cross:
            self.norm2 = nn.LayerNorm(n_emb)
            self.cross_attn = Attention(n_emb, n_head, p_drop, cross=True)
        self.norm3 = nn.LayerNorm(n_emb)
        self.fc1 = FastLinear(n_emb, 4 * n_emb)
        self.fc2 = FastLinear(4 * n_emb, n_emb)
        self.drop = nn.Dropout(p_drop)
        self.cross = cross

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, N, C), memory (B, S, C); masks (N, N) and (N, S) bool or None -> (B, N, C)."""
        x = x + self.drop(self.self_attn(self.norm1(x), None, mask))  # (B, N, C)
        if self.cross:
            x = x + self.drop(self.cross_attn(self.norm2(x), memory, memory_mask))  # (B, N, C)
        h = F.gelu(_linear(self.fc1, self.norm3(x)))  # (B, N, 4C)
        return x + self.drop(_linear(self.fc2, self.drop(h)))  # (B, N, C)


class TransformerForDiffusion(nn.Module):
    """Epsilon network with the call signature of ConditionalUnet1D (see the module docstring).

    Args:
        input_dim: Da, the action size.
        cond_dim: Do, the encoded features of one observation step (>= 1).
        horizon: T, the chunk length (the action position embedding has T rows).
        n_obs_steps: To, observation steps in the condition (global_cond is (B, To * Do)).
        n_layer, n_head, n_emb: decoder blocks, attention heads, token width (n_head | n_emb).
        p_drop_emb: dropout on the token + position embeddings.
        p_drop_attn: dropout on attention weights, residual branches and MLP hidden units.
        causal_attn: chunk index i attends only to indices <= i and to observation steps
            <= i (False: every token sees every token).
        n_cond_layers: 0: the memory tokens go through an MLP each; > 0: through that many
            transformer encoder blocks.
    """

    def __init__(
        self,
        input_dim: int,
        cond_dim: int,
        horizon: int,
        n_obs_steps: int,
        n_layer: int = 8,
        n_head: int = 4,
        n_emb: int = 256,
        p_drop_emb: float = 0.0,
        p_drop_attn: float = 0.01,
        causal_attn: bool = True,
        n_cond_layers: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("input_dim", input_dim),
            ("cond_dim", cond_dim),
            ("horizon", horizon),
            ("n_obs_steps", n_obs_steps),
            ("n_layer", n_layer),
            ("n_head", n_head),
        ):
            if value < 1:
                raise ValueError(f"TransformerForDiffusion: {name}={value}, expected >= 1")
        if n_emb < 4 or n_emb % 2 or n_emb % n_head:
            raise ValueError(
                f"TransformerForDiffusion: n_emb={n_emb} must be an even number >= 4 "
                f"divisible by n_head={n_head}"
            )
        if n_cond_layers < 0:
            raise ValueError(
                f"TransformerForDiffusion: n_cond_layers={n_cond_layers}, expected >= 0"
            )
        for name, p in (("p_drop_emb", p_drop_emb), ("p_drop_attn", p_drop_attn)):
            if not 0 <= p < 1:
                raise ValueError(f"TransformerForDiffusion: {name}={p}, expected 0 <= p < 1")
        self.input_dim, self.cond_dim = input_dim, cond_dim
        self.horizon, self.n_obs_steps = horizon, n_obs_steps
        self.global_cond_dim = n_obs_steps * cond_dim
        n_cond = 1 + n_obs_steps  # the time token, then one token per observation step

        # action tokens
        self.input_emb = FastLinear(input_dim, n_emb)
        self.pos_emb = nn.Parameter(torch.zeros(1, horizon, n_emb))
        self.drop = nn.Dropout(p_drop_emb)
        # conditioning tokens
        self.time_emb = SinusoidalPosEmb(n_emb)
        self.cond_obs_emb = FastLinear(cond_dim, n_emb)
        self.cond_pos_emb = nn.Parameter(torch.zeros(1, n_cond, n_emb))
        if n_cond_layers > 0:
            self.encoder = nn.ModuleList(
                Block(n_emb, n_head, p_drop_attn, cross=False) for _ in range(n_cond_layers)
            )
        else:
            self.encoder = nn.Sequential(
                FastLinear(n_emb, 4 * n_emb), nn.Mish(), FastLinear(4 * n_emb, n_emb)
            )
        self.decoder = nn.ModuleList(
            Block(n_emb, n_head, p_drop_attn, cross=True) for _ in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(n_emb)
        self.head = FastLinear(n_emb, input_dim)

        # boolean masks, True where attention is allowed; derived from the config, so not saved
        self.causal_attn = causal_attn
        if causal_attn:
            i = torch.arange(horizon)
            s = torch.arange(n_cond)
            self.register_buffer("mask", i[:, None] >= i[None, :], persistent=False)  # (T, T)
            # memory token s: 0 the time, s >= 1 observation step s - 1, visible to i >= s - 1
            memory_mask = i[:, None] >= s[None, :] - 1  # (T, 1 + To)
            self.register_buffer("memory_mask", memory_mask, persistent=False)
        else:
            self.mask = self.memory_mask = None
        self._init_weights()
        logger.debug(
            "TransformerForDiffusion: %d parameters", sum(p.numel() for p in self.parameters())
        )

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.pos_emb, mean=0.0, std=0.02)
        nn.init.normal_(self.cond_pos_emb, mean=0.0, std=0.02)

    def optim_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups of the reference: `weight_decay` on the weights of every
        Linear layer (attention projections included), 0 on biases, LayerNorm weights and the
        position embeddings. Every parameter is in exactly one group."""
        # the matmul weights: every Linear, the attention projections included
        decay = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear)}
        params = list(self.parameters())
        return [
            {"params": [p for p in params if id(p) in decay], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) not in decay], "weight_decay": 0.0},
        ]

    def refresh_fast_paths(self) -> None:
        """Make the Linear layers' inference fast paths use the current weights (needed only
        after writing the weights of an eval-mode net in place; see policy/fast_layers.py)."""
        refresh_fast_paths(self)

    def _check_inputs(
        self, sample: torch.Tensor, timestep: int | torch.Tensor, global_cond: torch.Tensor | None
    ) -> torch.Tensor:
        """Validate shapes and return the timestep as a (B,) tensor on the sample's device."""
        name = "TransformerForDiffusion"
        if sample.dim() != 3 or sample.shape[1:] != (self.horizon, self.input_dim):
            raise ValueError(
                f"{name}: sample has shape {tuple(sample.shape)}, expected "
                f"(B, {self.horizon}, {self.input_dim}) (horizon, input_dim)"
            )
        B = sample.shape[0]
        if global_cond is None or global_cond.shape != (B, self.global_cond_dim):
            got = None if global_cond is None else tuple(global_cond.shape)
            raise ValueError(
                f"{name}: global_cond has shape {got}, expected ({B}, {self.global_cond_dim}) "
                f"(n_obs_steps={self.n_obs_steps} x cond_dim={self.cond_dim})"
            )
        return batch_timesteps(timestep, B, sample.device, name)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: int | torch.Tensor,
        global_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """sample (B, T, Da), timestep int | () | (1,) | (B,), global_cond (B, To * Do)
        -> eps (B, T, Da)."""
        t = self._check_inputs(sample, timestep, global_cond)  # (B,)
        B = sample.shape[0]
        # 1. memory: the time token, then one token per observation step
        time_tok = self.time_emb(t).to(sample.dtype).unsqueeze(1)  # (B, 1, C)
        obs = global_cond.to(sample.dtype).view(B, self.n_obs_steps, self.cond_dim)  # (B, To, Do)
        obs_tok = _linear(self.cond_obs_emb, obs)  # (B, To, C)
        memory = self.drop(torch.cat([time_tok, obs_tok], dim=1) + self.cond_pos_emb)  # (B, S, C)
        if isinstance(self.encoder, nn.Sequential):
            memory = _linear(self.encoder, memory)  # (B, S, C), each token alone
        else:
            for block in self.encoder:
                memory = block(memory)  # (B, S, C)
        # 2. action tokens through the decoder blocks
        x = self.drop(_linear(self.input_emb, sample) + self.pos_emb)  # (B, T, C)
        for block in self.decoder:
            x = block(x, memory, self.mask, self.memory_mask)  # (B, T, C)
        # 3. head
        return _linear(self.head, self.ln_f(x))  # (B, T, Da)


__all__ = ["Attention", "Block", "TransformerForDiffusion"]
