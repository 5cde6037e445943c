"""Per-key min-max normalizer that maps each feature dimension to [-1, 1].

Diffusion Policy (Chi et al. 2023) normalizes actions and low-dim observations to [-1, 1] so
that the DDPM sampler's optional clip of x_0 to [-1, 1] matches the data range. Statistics are
fitted on the training set and live in buffers, so they are saved with the policy's weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

# A dimension whose range is below this is treated as constant (e.g. an unused joint).
_MIN_RANGE = 1e-6


class Normalizer(nn.Module):
    """y = (x - center) * scale, with center/scale per feature dimension of each key.

    A constant dimension gets scale 1, so it maps to exactly 0 instead of dividing by zero.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]):
        super().__init__()
        self.keys = list(shapes)
        for key, shape in shapes.items():
            if not key.isidentifier():
                raise ValueError(f"normalizer key {key!r} must be a Python identifier")
            self.register_buffer(f"{key}_center", torch.zeros(shape))
            self.register_buffer(f"{key}_scale", torch.ones(shape))

    @classmethod
    def from_stats(cls, stats: Mapping[str, Mapping[str, np.ndarray]]) -> Normalizer:
        """Build from {key: {"min": array, "max": array}} (feature-shaped arrays)."""
        norm = cls({k: tuple(np.shape(v["min"])) for k, v in stats.items()})
        for key, s in stats.items():
            lo = torch.as_tensor(np.asarray(s["min"], dtype=np.float64))
            hi = torch.as_tensor(np.asarray(s["max"], dtype=np.float64))
            if lo.shape != hi.shape:
                raise ValueError(f"stats[{key!r}]: min {tuple(lo.shape)} vs max {tuple(hi.shape)}")
            if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()) or (hi < lo).any():
                raise ValueError(f"stats[{key!r}]: min/max must be finite with max >= min")
            span = hi - lo
            constant = span < _MIN_RANGE
            scale = torch.where(constant, torch.ones_like(span), 2.0 / span.clamp_min(_MIN_RANGE))
            getattr(norm, f"{key}_center").copy_((hi + lo) / 2)
            getattr(norm, f"{key}_scale").copy_(scale)
        return norm

    def _params(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        if key not in self.keys:
            raise KeyError(f"normalizer has no key {key!r}; it knows {self.keys}")
        return getattr(self, f"{key}_center"), getattr(self, f"{key}_scale")

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        center, scale = self._params(key)
        return (x - center) * scale

    def unnormalize(self, key: str, y: torch.Tensor) -> torch.Tensor:
        center, scale = self._params(key)
        return y / scale + center
