"""Exponential moving average of model weights, with the warm-up decay used by Diffusion Policy.

decay(step) = min(1 - (1 + step) ** -power, max_decay), power = 3/4: early steps average over
a short window (the first update copies the weights), later ones approach max_decay = 0.9999.

The averaged model stays in eval mode and is written in place, so `update` ends with
refresh_fast_paths: cached inference layouts of its weights (policy.fast_layers) are dropped
and rebuilt from the averaged weights on its next no-grad call, never served stale.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dplite.policy.fast_layers import refresh_fast_paths


class EMA:
    """Holds `self.model`, a frozen copy of the tracked model that `update` pulls toward it."""

    def __init__(self, model: nn.Module, power: float = 0.75, max_decay: float = 0.9999):
        if not 0 < power <= 1 or not 0 <= max_decay < 1:
            raise ValueError(
                f"EMA needs 0 < power <= 1 and 0 <= max_decay < 1, got {power}, {max_decay}"
            )
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.power = power
        self.max_decay = max_decay
        self.step = 0

    def decay(self, step: int | None = None) -> float:
        step = self.step if step is None else step
        return min(1.0 - (1.0 + step) ** -self.power, self.max_decay)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.decay()
        ema_p = list(self.model.parameters())
        src_p = [p.detach() for p in model.parameters()]
        # ema = d * ema + (1 - d) * p, as one fused op over all tensors
        torch._foreach_lerp_(ema_p, src_p, 1.0 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
        # in-place writes no module sees: drop the fast paths' copies of the old weights
        refresh_fast_paths(self.model)
        self.step += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.step = int(state["step"])
