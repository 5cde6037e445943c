"""DiffusionPolicy: a DDPM over action chunks, conditioned on recent observations.

Chi et al. 2023 (Diffusion Policy, arXiv 2303.04137), CNN variant: the last To observations
are normalized, flattened into one global condition vector, and a ConditionalUnet1D learns to
predict the noise added to a normalized action chunk of length T (the epsilon objective of
Ho et al. 2020). At inference the chunk is denoised from pure noise with DDPM (k = K) or
DDIM (k << K) steps (policy/samplers.py, one class per sampler), and the Ta actions aligned
with the newest observation are executed:

    time      t-To+1 ... t ............... t-To+T
    obs       |-- To --|
    chunk     |------------- T ---------------|
    executed           |-- Ta --|   (indices To-1 ... To+Ta-2 of the chunk)

Observations are encoded by policy/encoders.py: low-dim keys are normalized and flattened as
above; each camera key of ``PolicyConfig.cameras`` (uint8 (H, W, C) images, not normalized)
goes through its own CNN (ResNet-18 with GroupNorm, or a small CNN) with a spatial softmax
head, trained end to end with the UNet, and its features join the low-dim ones per step.

A policy distilled by policy/consistency.py (``PolicyConfig.consistency_timesteps`` set) has
this network, but its output is a consistency function (``consistency_fn``) and it is sampled with
``sampler="consistency"``: one network evaluation maps noise straight to a chunk, and a second one
(re-noised to a lower timestep) refines it.

``PolicyConfig.objective = "mse"`` is the regression baseline with the same network, data and
conditioning: the UNet maps a zero chunk at timestep 0 straight to the normalized chunk, is fit
by plain MSE, and predicts with one network evaluation. It can only return the conditional
mean, which is what a multimodal task punishes (tests/test_diffusion.py).

``PolicyConfig.backbone = "transformer"`` swaps the UNet for the paper's other denoiser,
policy/transformer.py's TransformerForDiffusion (action tokens, causal self-attention, the
diffusion step and the To observation steps as cross-attention tokens). It has the UNet's call
signature, so everything above (samplers, the "mse" objective, distillation, CUDA graphs) is
the same for both.

Every sampler evaluates the network through ``denoise``: self.net by default, or, after
``use_backend("onnx")``, the same network exported to ONNX and run by ONNX Runtime on the CPU
(policy/onnx_denoiser.py, the optional "onnx" extra), re-exported whenever the weights change;
after ``use_backend("bf16")``, self.net under bfloat16 autocast.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dplite.policy.checkpoint import (
    CheckpointError,
    atomic_write,
    config_from_dict,
    load_tensors,
    save_tensors,
)
from dplite.policy.cuda_graphs import GraphedCall
from dplite.policy.encoders import CameraConfig, ObsEncoder
from dplite.policy.normalizer import Normalizer
from dplite.policy.onnx_denoiser import OnnxDenoiser, import_onnxruntime
from dplite.policy.samplers import (
    PREFIX_MODES,
    RTC_MAX_GUIDANCE,
    BaseSampler,
    Consistency,
    Prefix,
    PrefixMode,
    SamplerName,
    get_sampler,
    sampler_class,
)
from dplite.policy.schedule import SPACINGS, NoiseSchedule, Spacing
from dplite.policy.transformer import TransformerForDiffusion
from dplite.policy.unet1d import ConditionalUnet1D

Sampler = SamplerName  # a sampler's name (policy/samplers.py); "mse" only names OneShot
Objective = Literal["diffusion", "mse"]
Backbone = Literal["unet", "transformer"]
Backend = Literal["eager", "onnx", "bf16"]  # what evaluates the denoiser at inference
BACKENDS: tuple[str, ...] = ("eager", "onnx", "bf16")
# the spacing new policies get (docs/benchmarks.md has the measurement behind the choice)
DEFAULT_SPACING: Spacing = "trailing"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class PolicyConfig:
    """Everything needed to rebuild a DiffusionPolicy; saved as JSON beside its weights."""

    obs_shapes: dict[str, tuple[int, ...]] = field(default_factory=lambda: {"state": (5,)})
    """Observation keys and their per-step feature shapes; a camera key's is (H, W, C)."""
    cameras: dict[str, CameraConfig] = field(default_factory=dict)
    """Keys of obs_shapes that are images (stored uint8, channel-last), each with the CNN that
    encodes it; they are scaled to [0, 1] by their encoder, not min-max normalized. The other
    keys are low-dim. Empty (the default, and what configs saved before cameras load as):
    a low-dim policy."""
    action_dim: int = 2
    """Da, the size of one action."""
    horizon: int = 16
    """T, the length of the denoised action chunk."""
    n_obs_steps: int = 2
    """To, how many recent observations condition the chunk."""
    n_action_steps: int = 8
    """Ta, how many actions are executed before re-planning."""
    num_train_timesteps: int = 100
    """K, diffusion steps of the forward process."""
    beta_schedule: Literal["squaredcos_cap_v2", "linear"] = "squaredcos_cap_v2"
    clip_sample: bool = True
    """Clip the x_0 estimate to [-1, 1] (the normalized action range) in every step."""
    variance_type: Literal["fixed_small", "fixed_large"] = "fixed_small"
    down_dims: tuple[int, ...] = (256, 512, 1024)
    """UNet channel widths per level; T must be divisible by 2^(levels-1)."""
    kernel_size: int = 5
    n_groups: int = 8
    diffusion_step_embed_dim: int = 256
    cond_predict_scale: bool = True
    backbone: Backbone = "unet"
    """The denoising network: "unet" (ConditionalUnet1D: down_dims, kernel_size, n_groups,
    diffusion_step_embed_dim, cond_predict_scale) or "transformer" (TransformerForDiffusion:
    the n_layer ... n_cond_layers fields below). A config saved before this field existed loads
    as "unet", the only network there was then."""
    n_layer: int = 8
    """Transformer decoder blocks (defaults n_layer ... n_cond_layers: the reference's PushT
    low-dim transformer)."""
    n_head: int = 4
    """Transformer attention heads; must divide n_emb."""
    n_emb: int = 256
    """Transformer token width."""
    p_drop_emb: float = 0.0
    """Transformer dropout on the token + position embeddings."""
    p_drop_attn: float = 0.01
    """Transformer dropout on attention weights, residual branches and MLP hidden units."""
    causal_attn: bool = True
    """Transformer: chunk index i attends to chunk indices <= i and observation steps <= i."""
    n_cond_layers: int = 0
    """Transformer: 0 gives each conditioning token an MLP; N > 0 runs N encoder blocks over them."""
    action_anchor: str | None = None
    """Observation key (same size as an action, e.g. "agent_pos") whose newest value is
    subtracted from the whole chunk: the network then models actions relative to where the
    robot is now, normalized per chunk index, which makes the executed steps far more precise
    for position-target actions. None: absolute actions, one min-max range per dimension."""
    sampler: Sampler = "ddim"
    """Default sampler for predict_action (policy/samplers.py; "consistency" only for a
    distilled policy)."""
    num_inference_steps: int = 5
    """Default k for predict_action (k = K for full DDPM). 5: with trailing spacing, DDIM 5
    matched DDIM 10's PushT success within 0.02 on two training seeds (docs/benchmarks.md)."""
    consistency_timesteps: tuple[int, ...] | None = None
    """Set by consistency distillation (scripts.distill): the descending teacher timesteps the
    student was distilled on. Such a policy's network output is read as a velocity (see
    consistency_fn) and it is sampled only with sampler "consistency", in 1 to
    len(consistency_timesteps) network evaluations. None: a diffusion policy (DDPM / DDIM)."""
    objective: Objective = "diffusion"
    """"diffusion": epsilon prediction, sampled with DDPM / DDIM. "mse": the same network
    regresses the normalized chunk directly (input a zero chunk, timestep 0) and predicts with
    one evaluation; the schedule and sampler settings are then unused."""
    timestep_spacing: Spacing = DEFAULT_SPACING
    """Which k of the K timesteps a DDPM / DDIM sample with k < K visits (schedule.
    spaced_timesteps): "trailing" starts every k at t = K - 1 (Lin et al. 2024); "leading"
    starts at (k - 1) K // k. A config saved before this field existed loads as "leading", the
    only spacing there was then, so old policies sample as they always did."""

    train_max_delay: int = 0
    """Training-time real-time chunking: each training chunk gets a committed prefix of
    d ~ U{0, ..., N} actions at chunk rows To - 1 ... To - 2 + d (what an inference delay of d
    steps executes while the chunk is sampled), held clean in the network's noisy input and
    left out of the loss (training-time RTC, Black et al. 2025, arXiv 2512.05964, with one
    diffusion step for the whole chunk). Such a policy takes a prefix with prefix_mode
    "conditioned" (no guidance, no extra network work). 0: plain training (and configs saved
    before this field)."""

    def __post_init__(self) -> None:
        self.obs_shapes = {k: tuple(int(d) for d in v) for k, v in self.obs_shapes.items()}
        self.down_dims = tuple(int(d) for d in self.down_dims)
        self.cameras = {
            k: c if isinstance(c, CameraConfig) else CameraConfig.from_dict(c)
            for k, c in self.cameras.items()
        }
        if not self.obs_shapes:
            raise ValueError("obs_shapes must name at least one observation key")
        for key, cam in self.cameras.items():
            shape = self.obs_shapes.get(key)
            if shape is None:
                raise ValueError(
                    f"camera {key!r} is not an observation key; obs_shapes are {self.obs_shapes}"
                )
            if len(shape) != 3:
                raise ValueError(
                    f"camera {key!r} has per-step shape {shape}; expected (H, W, C), channel-last"
                )
            if cam.crop_size is not None and (
                cam.crop_size[0] > shape[0] or cam.crop_size[1] > shape[1]
            ):
                raise ValueError(
                    f"camera {key!r}: crop_size {cam.crop_size} exceeds its image (H, W) = {shape[:2]}"
                )
        for name in (
            "action_dim",
            "horizon",
            "n_obs_steps",
            "n_action_steps",
            "num_train_timesteps",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.backbone not in ("unet", "transformer"):
            raise ValueError(f"unknown backbone {self.backbone!r}; use 'unet' or 'transformer'")
        if self.backbone == "transformer":
            for name in ("n_layer", "n_head"):
                if getattr(self, name) < 1:
                    raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
            if self.n_emb < 4 or self.n_emb % 2 or self.n_emb % self.n_head:
                raise ValueError(
                    f"n_emb={self.n_emb} must be an even number >= 4 divisible by "
                    f"n_head={self.n_head}"
                )
            if self.n_cond_layers < 0:
                raise ValueError(f"n_cond_layers must be >= 0, got {self.n_cond_layers}")
            for name in ("p_drop_emb", "p_drop_attn"):
                if not 0 <= getattr(self, name) < 1:
                    raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        levels = len(self.down_dims)
        if self.backbone == "unet" and self.horizon % 2 ** (levels - 1):
            raise ValueError(
                f"horizon T={self.horizon} must be divisible by 2^(levels-1)={2 ** (levels - 1)} "
                f"for down_dims={self.down_dims}"
            )
        if self.n_action_steps > self.horizon - self.n_obs_steps + 1:
            raise ValueError(
                f"n_action_steps Ta={self.n_action_steps} must be <= T - To + 1 = "
                f"{self.horizon - self.n_obs_steps + 1} (horizon={self.horizon}, n_obs_steps={self.n_obs_steps})"
            )
        if self.beta_schedule not in ("squaredcos_cap_v2", "linear"):
            raise ValueError(
                f"unknown beta_schedule {self.beta_schedule!r}; use 'squaredcos_cap_v2' or 'linear'"
            )
        if self.variance_type not in ("fixed_small", "fixed_large"):
            raise ValueError(
                f"unknown variance_type {self.variance_type!r}; use 'fixed_small' or 'fixed_large'"
            )
        if self.timestep_spacing not in SPACINGS:
            raise ValueError(
                f"unknown timestep_spacing {self.timestep_spacing!r}; use one of {SPACINGS}"
            )
        if self.consistency_timesteps is not None:
            grid = self.consistency_timesteps = tuple(int(t) for t in self.consistency_timesteps)
            K = self.num_train_timesteps
            descending = all(a > b for a, b in zip(grid, grid[1:], strict=False))
            if not grid or not descending or not 0 <= grid[-1] <= grid[0] < K:
                raise ValueError(
                    f"consistency_timesteps {grid}: expected distinct timesteps in [0, {K - 1}], "
                    "in descending order"
                )
        if self.objective not in ("diffusion", "mse"):
            raise ValueError(f"unknown objective {self.objective!r}; use 'diffusion' or 'mse'")
        if not 0 <= self.train_max_delay <= self.horizon - self.n_obs_steps:
            raise ValueError(
                f"train_max_delay={self.train_max_delay} must be in [0, T - To = "
                f"{self.horizon - self.n_obs_steps}]: the committed rows start at To - 1 and at "
                "least one row must stay free"
            )
        if self.train_max_delay and self.objective != "diffusion":
            raise ValueError(
                "train_max_delay needs objective 'diffusion' (it conditions denoising)"
            )
        # the default sampler must exist and fit (a distilled policy <-> "consistency"), and
        # so must its default k, whatever the objective
        sampler = sampler_class(self.sampler)
        sampler.check_fits(self)
        sampler.check_steps(self, self.num_inference_steps)
        if self.action_anchor is not None and self.low_dim_shapes.get(self.action_anchor) != (
            self.action_dim,
        ):
            raise ValueError(
                f"action_anchor {self.action_anchor!r} must be an observation key of shape "
                f"({self.action_dim},); obs_shapes are {self.obs_shapes}"
            )

    @property
    def action_stats_shape(self) -> tuple[int, ...]:
        """Shape of the action normalizer's statistics: per chunk index when anchored."""
        return (self.horizon, self.action_dim) if self.action_anchor else (self.action_dim,)

    @property
    def low_dim_shapes(self) -> dict[str, tuple[int, ...]]:
        """The observation keys that are not cameras (the ones the normalizer covers)."""
        return {k: s for k, s in self.obs_shapes.items() if k not in self.cameras}

    @property
    def obs_dim(self) -> int:
        """Do, the size of one encoded observation step: low-dim values flattened, plus each
        camera's feature_dim."""
        return sum(math.prod(s) for s in self.low_dim_shapes.values()) + sum(
            c.feature_dim for c in self.cameras.values()
        )

    @property
    def global_cond_dim(self) -> int:
        return self.n_obs_steps * self.obs_dim

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> PolicyConfig:
        d = dict(d)
        d.setdefault("timestep_spacing", "leading")  # saved before the field: leading only
        d.setdefault("backbone", "unet")  # saved before the field: the UNet was the only one
        return config_from_dict(cls, d)


class DiffusionPolicy(nn.Module):
    def __init__(self, cfg: PolicyConfig, normalizer: Normalizer | None = None):
        super().__init__()
        self.cfg = cfg
        keys = {**cfg.low_dim_shapes, "action": cfg.action_stats_shape}
        if normalizer is None:
            normalizer = Normalizer(keys)  # identity until fitted; from_pretrained loads real stats
        missing = set(keys) - set(normalizer.keys)
        if missing:
            raise ValueError(f"normalizer lacks statistics for {sorted(missing)}")
        cameras = sorted(set(cfg.cameras) & set(normalizer.keys))
        if cameras:
            raise ValueError(
                f"normalizer has statistics for camera keys {cameras}: images are scaled to "
                "[0, 1] by their encoder; fit the normalizer on the low-dim keys and the action only"
            )
        self.normalizer = normalizer
        self.obs_encoder = ObsEncoder(cfg.obs_shapes, cfg.cameras, cfg.n_obs_steps)
        self.schedule = NoiseSchedule(
            num_train_timesteps=cfg.num_train_timesteps,
            beta_schedule=cfg.beta_schedule,
            clip_sample=cfg.clip_sample,
            variance_type=cfg.variance_type,
        )
        self.net: ConditionalUnet1D | TransformerForDiffusion
        if cfg.backbone == "transformer":
            self.net = TransformerForDiffusion(
                input_dim=cfg.action_dim,
                cond_dim=cfg.obs_dim,
                horizon=cfg.horizon,
                n_obs_steps=cfg.n_obs_steps,
                n_layer=cfg.n_layer,
                n_head=cfg.n_head,
                n_emb=cfg.n_emb,
                p_drop_emb=cfg.p_drop_emb,
                p_drop_attn=cfg.p_drop_attn,
                causal_attn=cfg.causal_attn,
                n_cond_layers=cfg.n_cond_layers,
            )
        else:
            self.net = ConditionalUnet1D(
                input_dim=cfg.action_dim,
                global_cond_dim=cfg.global_cond_dim,
                down_dims=cfg.down_dims,
                kernel_size=cfg.kernel_size,
                n_groups=cfg.n_groups,
                diffusion_step_embed_dim=cfg.diffusion_step_embed_dim,
                cond_predict_scale=cfg.cond_predict_scale,
            )
        self._graphs: dict | None = None  # captured sampling loops, see use_cuda_graphs
        self.backend: Backend = "eager"
        self._onnx: OnnxDenoiser | None = None  # the "onnx" backend's export, see use_backend

    def __getstate__(self) -> dict:
        # deepcopy (EMA) and pickle start without captured graphs: they hold this copy's memory;
        # nor with an ONNX Runtime session (not picklable; re-exported on first use)
        state = super().__getstate__()
        state["_graphs"] = {} if state.get("_graphs") is not None else None
        state["_onnx"] = None
        return state

    def train(self, mode: bool = True) -> DiffusionPolicy:
        # as the fast layers: eval() starts from the weights as they are now
        self.refresh_backend()
        return super().train(mode)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    # ---------------------------------------------------------------- conditioning
    def encode_obs(
        self,
        obs: Mapping[str, torch.Tensor],
        crop_offsets: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The newest To steps of each key, encoded and flattened: -> (B, To * Do).

        obs = {key: (B, >= To, ...)}, oldest first; a longer history is cut to its last To.
        Low-dim keys are normalized; camera keys (uint8 (B, >= To, H, W, C)) go through their
        CNN, cropped in train mode at crop_offsets {key: (B, To, 2)} (default: at random) and
        centered in eval mode.
        """
        normalize, dev = self.normalizer.normalize, self.device
        return self.obs_encoder(obs, normalize, dev, crop_offsets)  # (B, To * Do)

    def anchor(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor | float:
        """What actions are relative to: the newest anchor observation (B, 1, Da), or 0."""
        if self.cfg.action_anchor is None:
            return 0.0
        x = torch.as_tensor(obs[self.cfg.action_anchor], device=self.device, dtype=torch.float32)
        return x[:, -1].unsqueeze(1)  # (B, 1, Da), the newest observation

    # ---------------------------------------------------------------- training
    def forward(self, batch: Mapping, **kwargs) -> torch.Tensor:
        """= compute_loss, so that DistributedDataParallel can wrap the policy."""
        return self.compute_loss(batch, **kwargs)

    def compute_loss(
        self,
        batch: Mapping,
        noise: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        delays: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Epsilon-prediction MSE (Ho et al. 2020, eq. 14) on a batch of windows; with
        objective "mse", the MSE between the network's chunk and the normalized target chunk.

        batch = {"obs": {key: (B, >=To, ...)}, "action": (B, T, Da)} in raw units (camera keys
        uint8 (B, >=To, H, W, C)), optionally "crop_offsets" {camera key: (B, To, 2)}. The window's
        first To observation steps condition the chunk (the timing convention). `noise`
        (B, T, Da) and `timesteps` (B,) may be given (default: drawn from torch's global RNG);
        the "mse" objective ignores them. With cfg.train_max_delay N > 0, `delays` (B,) in
        [0, N] (default: drawn likewise; not range-checked, which would cost a device sync)
        give each chunk its committed prefix: rows To - 1 ... To - 2 + d enter the network
        clean, and each chunk's mean runs over its other rows only, then the batch's over the
        chunks (so that DDP's average of per-rank means is one process's mean). Without
        train_max_delay, `delays` is ignored.
        """
        cfg = self.cfg
        obs, x0 = self.training_chunk(batch)
        cond = self.encode_obs(obs, batch.get("crop_offsets"))  # (B, To * Do)
        if cfg.objective == "mse":  # predict_action's one call (samplers.OneShot), fit by MSE
            return F.mse_loss(self.net(torch.zeros_like(x0), 0, cond), x0)
        noise = torch.randn_like(x0) if noise is None else noise  # (B, T, Da)
        t = (
            torch.randint(0, cfg.num_train_timesteps, (x0.shape[0],), device=x0.device)
            if timesteps is None
            else timesteps
        )  # (B,)
        x_t = self.schedule.add_noise(x0, noise, t)  # (B, T, Da)
        if not cfg.train_max_delay:
            return F.mse_loss(self.net(x_t, t, cond), noise)
        if delays is None:
            delays = torch.randint(0, cfg.train_max_delay + 1, t.shape, device=x0.device)
        committed = self.committed_rows(delays.to(x0.device))  # (B, T, 1)
        x_t = torch.where(committed, x0, x_t)  # the executed actions, known exactly
        free = (~committed).to(x0.dtype)  # (B, T, 1)
        sq = (self.net(x_t, t, cond) - noise).square() * free  # (B, T, Da)
        per_chunk = sq.sum(dim=(1, 2)) / (free.sum(dim=(1, 2)) * cfg.action_dim)  # (B,)
        return per_chunk.mean()

    def committed_rows(self, delays: torch.Tensor) -> torch.Tensor:
        """(B, T, 1) bool: chunk rows To - 1 ... To - 2 + d of each chunk, for delays d (B,)."""
        rows = torch.arange(self.cfg.horizon, device=delays.device) - (self.cfg.n_obs_steps - 1)
        return ((rows >= 0) & (rows < delays.reshape(-1, 1))).unsqueeze(-1)  # (B, T, 1)

    def training_chunk(self, batch: Mapping) -> tuple[dict, torch.Tensor]:
        """A training batch's conditioning steps and target chunk: (obs cut to its first To
        steps, the action chunk relative to the anchor and normalized, (B, T, Da))."""
        cfg = self.cfg
        obs = {k: v[:, : cfg.n_obs_steps] for k, v in batch["obs"].items()}  # (B, To, ...)
        action = torch.as_tensor(batch["action"], device=self.device, dtype=torch.float32)
        if action.shape[1:] != (cfg.horizon, cfg.action_dim):
            raise ValueError(
                f"batch['action'] has shape {tuple(action.shape)}; "
                f"expected (B, {cfg.horizon}, {cfg.action_dim})"
            )
        return obs, self.normalizer.normalize("action", action - self.anchor(obs))

    # ---------------------------------------------------------------- inference
    def sampler_settings(
        self, sampler: Sampler | None = None, k: int | None = None
    ) -> tuple[str, int]:
        """The (sampler, k) predict_action uses: the config's defaults for what is None
        (k = K for DDPM, 10 for DDIM when the sampler is not the configured one). A distilled
        policy takes only "consistency", with 1 <= k <= len(consistency_timesteps). The "mse"
        objective ignores both and reports ("mse", 1): one network evaluation. The choice is
        samplers.get_sampler's."""
        chosen = get_sampler(self.cfg, sampler, k)
        return chosen.name, chosen.k

    def consistency_fn(
        self, x: torch.Tensor, t: int | torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        """A distilled policy's consistency function f(x_t, t) -> clean chunk (B, T, Da),
        normalized, not clipped. Its network output is read as a velocity v (Salimans & Ho 2022):
        f = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v, well conditioned from t = 0 (nearly
        the identity, as a consistency function must be near the data) up to pure noise."""
        return self.schedule.predict_x0_from_v(self.denoise(x, t, cond), t, x)

    def consistency_timesteps(self, k: int) -> list[int]:
        """The k timesteps a k-step consistency sample visits (samplers.Consistency.timesteps):
        the grid's top one, then evenly spaced grid points below it (90, ..., 0: k=2 -> 90, 40)."""
        return Consistency(k).timesteps(self).tolist()

    def use_backend(self, backend: Backend = "eager") -> DiffusionPolicy:
        """Choose what evaluates the denoiser in predict_action; returns self.

        "eager" (the default): self.net, with the fast layers' CPU paths (policy/fast_layers.py).
        "onnx": the net exported to ONNX and run by ONNX Runtime on the CPU
        (policy/onnx_denoiser.py), for both backbones; it needs the optional extra "onnx" and a
        policy on the CPU. The export happens on the first call and again whenever the weights
        have changed since (an optimizer step, load_state_dict, EMA, in-place writes under
        no_grad, .to(), eval() / train()); only writes through ``p.data`` need
        refresh_backend(). The chunks equal eager ones to float rounding.
        "bf16": self.net under torch.autocast(bfloat16) on the policy's device: matmuls and
        convolutions in bfloat16 (8 mantissa bits; on the CPU the UNet's GroupNorm and Mish
        then also see bfloat16 activations), the output in float32; nothing is cached, so it
        never reads old weights. Fast on CPUs with native bf16 (AVX512-BF16, AMX) at large
        batches; one network evaluation is within about 1 % of float32's (tests/
        test_bf16_backend.py), and docs/benchmarks.md has its speed and a PushT success check.
        Calls that need a gradient (real-time chunking's guidance) run self.net in float32
        whatever the backend.
        """
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")
        if self._graphs:
            self._graphs = {}  # captured under the old backend
        if backend == "onnx":
            import_onnxruntime()  # refuses now, naming the extra, rather than at the first call
            if self.device.type != "cpu":
                raise ValueError(
                    f"the onnx backend runs on the CPU; this policy is on {self.device} "
                    "(use the eager backend there, or CUDA graphs)"
                )
        self.backend = backend
        if backend == "eager":
            self.refresh_backend()  # frees the session's copy of the weights
        return self

    def refresh_backend(self) -> None:
        """Drop the "onnx" backend's export: the next call exports the current weights. Needed
        only after writing weights through ``p.data`` (use_backend)."""
        self._onnx = None

    def denoise(self, x: torch.Tensor, t: int | torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The network's output for x (B, T, Da) at timestep t given cond (B, Dc), by the
        chosen backend (use_backend); with autograd on, always self.net. Samplers call this."""
        if self.backend == "eager" or torch.is_grad_enabled():
            return self.net(x, t, cond)  # (B, T, Da)
        if self.backend == "bf16":
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return self.net(x, t, cond).float()  # (B, T, Da)
        if x.device.type != "cpu":
            raise ValueError(
                f"the onnx backend runs on the CPU; the policy is on {x.device} "
                "(call use_backend('eager'))"
            )
        if self._onnx is None or not self._onnx.matches(self.net):
            cfg = self.cfg
            self._onnx = OnnxDenoiser(self.net, cfg.horizon, cfg.action_dim, cfg.global_cond_dim)
        return self._onnx(x, t, cond)  # (B, T, Da)

    def use_cuda_graphs(self, enabled: bool = True) -> DiffusionPolicy:
        """Replay predict_action's denoising loop as a CUDA graph (policy/cuda_graphs.py).

        The sampler's loop (samplers.BaseSampler.sample) is captured on the first call for each
        (sampler, k) and replayed after that: one launch instead of ~150 per network evaluation. A smaller batch than the captured one
        (a rollout whose episodes finish) is padded to it, since rows never mix; a larger one is
        captured again. The chunks equal eager ones to float rounding. Needs the policy on a
        CUDA device. Calls with return_trajectory run eagerly. The config (clip_sample, K) and
        the backend flags (TF32) are those of the capture. Returns self."""
        if not enabled:
            self._graphs = None
        elif self._graphs is None:
            self._graphs = {}
        return self

    def _graphed_denoise(
        self,
        sampler: BaseSampler,
        x: torch.Tensor,
        cond: torch.Tensor,
        step_noise: torch.Tensor,
        times: torch.Tensor,
    ) -> torch.Tensor:
        if x.device.type != "cuda":
            raise ValueError(
                f"use_cuda_graphs: the policy is on {x.device}; CUDA graphs need a CUDA device "
                "(call use_cuda_graphs(False) to sample eagerly)"
            )
        self.schedule.to(x.device)  # its tables move on first use: before the capture, not in it
        # what the loop reads (the normalizer is applied outside it)
        params = [*self.net.parameters(), *self.net.buffers(), *self.schedule.tables]
        key = (sampler.name, times.shape[0], tuple(x.shape[1:]), cond.shape[1], cond.dtype)
        b = x.shape[0]
        graphed = self._graphs.get(key)
        if graphed is None or not graphed.matches(params) or graphed.batch < b:
            graphed = self._graphs[key] = GraphedCall(
                lambda *a: sampler.sample(self, *a), (x, cond, step_noise, times), params
            )
        pad = graphed.batch - b  # zero rows; each row's chunk depends on that row alone

        def padded(t: torch.Tensor, dim: int = 0) -> torch.Tensor:
            if not pad:
                return t
            return torch.cat([t, t.new_zeros(*t.shape[:dim], pad, *t.shape[dim + 1 :])], dim=dim)

        return graphed(padded(x), padded(cond), padded(step_noise, dim=1), times)[:b]

    @torch.inference_mode()
    def predict_action(
        self,
        obs: Mapping[str, torch.Tensor | np.ndarray],
        sampler: Sampler | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        noise: torch.Tensor | None = None,
        return_trajectory: bool = False,
        prefix: torch.Tensor | np.ndarray | None = None,
        prefix_weights: torch.Tensor | np.ndarray | Sequence[float] | None = None,
        prefix_mode: PrefixMode = "guidance",
        max_guidance: float = RTC_MAX_GUIDANCE,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Denoise an action chunk for each batch element of obs = {key: (B, >= To, ...)}.

        Returns {"action": (B, Ta, Da) to execute, "action_pred": (B, T, Da) whole chunk}, raw
        units. `noise` (B, T, Da) fixes the initial sample; `generator` drives the rest: one
        generator for the batch, or a sequence of B, one per row (then each row's sample depends
        only on its own generator, not on the other rows of the batch). `return_trajectory`
        adds "trajectory": k + 1 chunks (B, T, Da) in raw units, the initial noise and the
        sample after each denoising step (the last equals "action_pred"). The "mse" objective
        ignores sampler, k, generator and noise: one network evaluation, whose trajectory is
        that one chunk. Which sampler and k run is samplers.get_sampler's choice.

        Real-time chunking (Black et al. 2025): `prefix` (B, P, Da), raw units, P <= T, gives
        actions the chunk must start with, row i constraining action_pred[:, i] (index To - 1
        is the newest observation's step); `prefix_weights` (P,) or (T,) in [0, 1] says how
        firmly (default all 1; a (T,) vector must be 0 from P on). Rows of weight 1 are
        returned exactly as given; the others are pulled toward their target by
        `prefix_mode` "guidance" (pseudoinverse guidance of the x_0 estimate, its weight
        clipped at `max_guidance`, one extra backward pass per step) or "inpaint"
        (replacement by the target noised to each step's timestep); "conditioned", for a
        policy trained with train_max_delay, gives the network the rows of weight 1 clean and
        leaves the others free: samplers.Prefix. The
        "mse" objective only overwrites the rows of weight 1. Calls with a prefix run
        eagerly, also under use_cuda_graphs.
        """
        cfg = self.cfg
        chosen = get_sampler(cfg, sampler, num_inference_steps)

        cond = self.encode_obs(obs)  # (B, To * Do)
        anchor = self.anchor(obs)  # (B, 1, Da) or 0
        shape = (cond.shape[0], cfg.horizon, cfg.action_dim)
        dev = self.device
        trajectory: list[torch.Tensor] = []

        def record(x: torch.Tensor) -> None:  # x: (B, T, Da) normalized
            trajectory.append(self.normalizer.unnormalize("action", x) + anchor)

        # every draw up front, in the order the steps use them: the loop itself does no host
        # work, so that a CUDA graph can replay it (policy/cuda_graphs.py)
        if not chosen.starts_from_noise:
            x = torch.zeros(shape, device=dev)  # (B, T, Da): the one-shot call's fixed input
        elif noise is not None:
            x = noise.to(dev, torch.float32)  # (B, T, Da)
        else:
            x = _randn(shape, generator, dev)  # (B, T, Da)
        draws = [_randn(shape, generator, dev) for _ in range(chosen.num_draws)]
        step_noise = torch.stack(draws) if draws else x.new_zeros((0, *shape))  # (n, B, T, Da)
        frozen = None
        if prefix is not None:
            raw, w = self._prefix_rows(prefix, prefix_weights, shape)  # (B, T, Da), (T,)
            if prefix_mode not in PREFIX_MODES:
                raise ValueError(f"unknown prefix_mode {prefix_mode!r}; use one of {PREFIX_MODES}")
            if not max_guidance > 0:
                raise ValueError(f"max_guidance must be > 0, got {max_guidance}")
            target = self.normalizer.normalize("action", raw - anchor)  # (B, T, Da)
            inpaint_noise = None
            if prefix_mode == "inpaint" and chosen.starts_from_noise:  # drawn after the rest
                inpaint_noise = torch.stack(
                    [_randn(shape, generator, dev) for _ in range(chosen.k)]
                )
            if prefix_mode == "conditioned":
                self._check_conditioned(chosen.name, w)
            chosen.prefix = Prefix(target, w, prefix_mode, max_guidance, inpaint_noise)
            frozen = (w == 1).reshape(1, -1, 1), raw  # rows returned exactly as given
        times = chosen.timesteps(self)  # (k,) on dev
        if self._graphs is not None and not return_trajectory and prefix is None:
            x = self._graphed_denoise(chosen, x, cond, step_noise, times)
        else:
            if return_trajectory and chosen.starts_from_noise:
                record(x)  # the initial noise
            x = chosen.sample(
                self, x, cond, step_noise, times, record if return_trajectory else None
            )
        action_pred = self.normalizer.unnormalize("action", x) + anchor  # (B, T, Da)
        if frozen is not None:  # exact, not to float rounding of (un)normalizing
            action_pred = torch.where(frozen[0], frozen[1], action_pred)  # (B, T, Da)
        start = cfg.n_obs_steps - 1
        out: dict[str, torch.Tensor | list[torch.Tensor]] = {
            "action": action_pred[:, start : start + cfg.n_action_steps],
            "action_pred": action_pred,
        }
        if return_trajectory:
            out["trajectory"] = [*trajectory, action_pred]
        return out

    def check_conditioned(self, sampler: str, delay: int = 0) -> None:
        """Refuse prefix_mode "conditioned" where this policy cannot serve it: it needs
        train_max_delay > 0 (>= `delay`, the committed rows a rollout will pass) and the
        DDPM / DDIM sampler. Callers check this before a rollout starts."""
        cfg = self.cfg
        if not cfg.train_max_delay:
            raise ValueError(
                "prefix_mode 'conditioned' needs a policy trained with committed prefixes "
                "(train_max_delay > 0, dp-train --train-max-delay); use 'guidance' or 'inpaint'"
            )
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(
                f"prefix_mode 'conditioned' samples with ddpm or ddim, not {sampler!r}"
            )
        if delay > cfg.train_max_delay:
            raise ValueError(
                f"prefix_mode 'conditioned': a delay of {delay} steps commits more rows than "
                f"the policy was trained with (train_max_delay={cfg.train_max_delay})"
            )

    def _check_conditioned(self, sampler: str, weights: torch.Tensor) -> None:
        """check_conditioned, and rows of weight 1 that are exactly To - 1 ... To - 2 + d with
        d <= train_max_delay (the prefixes training showed)."""
        cfg = self.cfg
        self.check_conditioned(sampler)
        frozen = weights == 1  # (T,)
        d = int(frozen.sum())
        if d > cfg.train_max_delay or not torch.equal(
            frozen, self.committed_rows(torch.tensor([d], device=weights.device)).flatten()
        ):
            raise ValueError(
                f"prefix_mode 'conditioned': the rows of weight 1 must be chunk rows To - 1 = "
                f"{cfg.n_obs_steps - 1} onward, at most train_max_delay={cfg.train_max_delay} "
                f"of them; got rows {torch.nonzero(frozen).flatten().tolist()}"
            )

    def _prefix_rows(
        self,
        prefix: torch.Tensor | np.ndarray,
        weights: torch.Tensor | np.ndarray | Sequence[float] | None,
        shape: tuple[int, int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """predict_action's prefix checked and padded to the chunk: (raw (B, T, Da) with zero
        rows from P on, weights (T,) with zeros from P on)."""
        B, T, Da = shape
        raw = torch.as_tensor(prefix, dtype=torch.float32, device=self.device)
        if raw.ndim != 3 or raw.shape[0] != B or raw.shape[2] != Da or not 1 <= raw.shape[1] <= T:
            raise ValueError(
                f"prefix has shape {tuple(raw.shape)}; expected ({B}, P, {Da}) with 1 <= P <= T={T}"
            )
        if not torch.isfinite(raw).all():
            raise ValueError("prefix has non-finite values")
        P = raw.shape[1]
        if weights is None:
            w = torch.ones(P, device=self.device)
        else:
            w = torch.as_tensor(weights, dtype=torch.float32, device=self.device).flatten()
            if w.shape[0] not in (P, T):
                raise ValueError(
                    f"prefix_weights has {w.shape[0]} entries; expected P={P} or T={T}"
                )
            if not (torch.isfinite(w).all() and (w >= 0).all() and (w <= 1).all()):
                raise ValueError(f"prefix_weights must lie in [0, 1], got {w.tolist()}")
            if (w[P:] != 0).any():
                raise ValueError(
                    f"prefix_weights are nonzero past the prefix's P={P} rows: {w.tolist()}"
                )
        pad = T - P
        raw = torch.cat([raw, raw.new_zeros(B, pad, Da)], dim=1)  # (B, T, Da)
        return raw, torch.cat([w[:P], w.new_zeros(pad)])  # (T,)

    # ---------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | Path, metadata: Mapping | None = None) -> None:
        """Write model.safetensors (weights + normalizer) and config.json (config + metadata)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors(self.state_dict(), directory / WEIGHTS_FILE)
        info = {
            "config": self.cfg.to_dict(),
            "metadata": dict(metadata or {}),
            "versions": _versions(),
        }
        atomic_write(directory / CONFIG_FILE, json.dumps(info, indent=2))

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu"
    ) -> DiffusionPolicy:
        directory = Path(directory)
        cfg_path = directory / CONFIG_FILE
        if not cfg_path.is_file():
            raise CheckpointError(f"{cfg_path}: not found (is {directory} a saved policy?)")
        try:
            info = json.loads(cfg_path.read_text())
            cfg = PolicyConfig.from_dict(info["config"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{cfg_path}: invalid policy config: {e}") from e
        policy = cls(cfg)
        state = load_tensors(directory / WEIGHTS_FILE)
        expected = policy.state_dict()
        missing, unexpected = set(expected) - set(state), set(state) - set(expected)
        if missing or unexpected:
            raise CheckpointError(
                f"{directory / WEIGHTS_FILE}: weights do not match {cfg_path}: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        for name, tensor in state.items():
            if tensor.shape != expected[name].shape:
                raise CheckpointError(
                    f"{directory / WEIGHTS_FILE}: {name} has shape {tuple(tensor.shape)}, "
                    f"config expects {tuple(expected[name].shape)}"
                )
        policy.load_state_dict(state)
        policy.metadata = info.get("metadata", {})
        return policy.to(device).eval()


def _randn(
    shape: tuple[int, ...],
    generator: torch.Generator | Sequence[torch.Generator] | None,
    device: torch.device,
) -> torch.Tensor:
    if isinstance(generator, Sequence):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        return torch.cat([_randn((1, *shape[1:]), g, device) for g in generator])  # (B, ...)
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


def _versions() -> dict[str, str]:
    import platform

    return {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


__all__ = [
    "BACKENDS",
    "Backbone",
    "Backend",
    "DiffusionPolicy",
    "Objective",
    "PolicyConfig",
    "Sampler",
]
