"""Normalizer: min -> -1, max -> +1, constant dimensions -> 0, exact round trip."""

import numpy as np
import pytest
import torch

from dplite.policy.normalizer import Normalizer


def test_min_max_map_to_unit_range_and_round_trip():
    stats = {"action": {"min": np.array([0.0, -5.0]), "max": np.array([512.0, 5.0])}}
    norm = Normalizer.from_stats(stats)
    x = torch.tensor([[0.0, -5.0], [512.0, 5.0], [128.0, 0.0]])
    y = norm.normalize("action", x)
    torch.testing.assert_close(y, torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-0.5, 0.0]]))
    torch.testing.assert_close(norm.unnormalize("action", y), x)


def test_constant_dimension_maps_to_zero_without_dividing_by_zero():
    norm = Normalizer.from_stats({"s": {"min": np.array([3.0, 0.0]), "max": np.array([3.0, 2.0])}})
    y = norm.normalize("s", torch.tensor([[3.0, 2.0]]))
    torch.testing.assert_close(y, torch.tensor([[0.0, 1.0]]))
    assert torch.isfinite(norm.unnormalize("s", torch.tensor([[0.7, 0.1]]))).all()


def test_multi_dim_features_and_state_dict_round_trip():
    lo, hi = np.zeros((9, 2)), np.arange(1, 19, dtype=float).reshape(9, 2)
    a = Normalizer.from_stats({"keypoint": {"min": lo, "max": hi}})
    b = Normalizer({"keypoint": (9, 2)})
    b.load_state_dict(a.state_dict())
    x = torch.rand(4, 2, 9, 2) * torch.as_tensor(hi, dtype=torch.float32)
    torch.testing.assert_close(a.normalize("keypoint", x), b.normalize("keypoint", x))
    assert a.normalize("keypoint", x).abs().max() <= 1.0 + 1e-6


def test_bad_stats_and_unknown_key_rejected():
    with pytest.raises(ValueError, match="max >= min"):
        Normalizer.from_stats({"a": {"min": np.array([1.0]), "max": np.array([0.0])}})
    with pytest.raises(ValueError, match="finite"):
        Normalizer.from_stats({"a": {"min": np.array([np.nan]), "max": np.array([0.0])}})
    with pytest.raises(KeyError, match="no key 'b'"):
        Normalizer({"a": (1,)}).normalize("b", torch.zeros(1))
