"""EMA: the warm-up decay formula and the averaging update, against hand-computed values, and
an averaged UNet whose inference fast paths follow the in-place updates."""

import copy

import pytest
import torch
from torch import nn

from dplite.policy.ema import EMA
from dplite.policy.fast_layers import FastPath
from dplite.policy.unet1d import ConditionalUnet1D


def test_decay_schedule_hand_values():
    ema = EMA(nn.Linear(1, 1))
    assert ema.decay(0) == 0.0  # the first update copies the weights
    assert ema.decay(1) == pytest.approx(1 - 2**-0.75)
    assert ema.decay(15) == pytest.approx(1 - 16**-0.75)  # = 0.875
    assert ema.decay(10**9) == 0.9999  # capped


def test_update_is_the_weighted_average():
    model = nn.Linear(2, 1)
    ema = EMA(model)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # decay 0: copy
    torch.testing.assert_close(ema.model.weight, torch.ones(1, 2))
    with torch.no_grad():
        model.weight.fill_(3.0)
    d = ema.decay()
    ema.update(model)
    torch.testing.assert_close(ema.model.weight, torch.full((1, 2), d * 1.0 + (1 - d) * 3.0))
    assert not ema.model.weight.requires_grad


def test_state_dict_round_trip():
    a = EMA(nn.Linear(2, 2))
    for _ in range(3):
        a.update(nn.Linear(2, 2))
    b = EMA(nn.Linear(2, 2))
    b.load_state_dict(a.state_dict())
    assert b.step == 3
    torch.testing.assert_close(b.model.weight, a.model.weight)


def test_updated_ema_unet_serves_the_averaged_weights_on_its_fast_path():
    # update writes the eval-mode copy in place (torch._foreach_lerp_), which no module sees
    torch.manual_seed(0)
    model = ConditionalUnet1D(2, 40, (64, 128, 256), 5, 8, 64)  # packed and im2col layers
    ema = EMA(model)
    x, g = torch.randn(1, 16, 2), torch.randn(1, 40)
    with torch.inference_mode():
        before = ema.model(x, 5, g)  # builds the fast paths' copies of the initial weights
    for _ in range(2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))  # a training step
        ema.update(model)
    with torch.inference_mode():
        after = ema.model(x, 5, g)
    assert all(m._fast is not None for m in ema.model.modules() if isinstance(m, FastPath))
    with torch.no_grad():
        standard = copy.deepcopy(ema.model).train()(x, 5, g)  # plain nn layers, fresh
    torch.testing.assert_close(after, standard, rtol=1e-5, atol=1e-5)
    assert (after - before).abs().max() > 1e-2
