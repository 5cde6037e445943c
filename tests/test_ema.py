"""EMA: the warm-up decay formula and the averaging update, against hand-computed values."""

import pytest
import torch
from torch import nn

from policy.ema import EMA


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
