"""Tests for data/sampler.py: exact padded windows, episode boundaries, the batch path, splits."""

import numpy as np
import pytest
import zarr

from dplite.data.sampler import SequenceSampler, split_episodes


def _naive_windows(episode_ends, horizon, pad_before, pad_after, mask=None):
    """Oracle: row indices of every window, written as the plain double loop of the contract."""
    out = []
    start = 0
    for e, end in enumerate(episode_ends):
        length = end - start
        if mask is None or mask[e]:
            for s in range(-pad_before, length - horizon + pad_after + 1):
                out.append([start + min(max(s + j, 0), length - 1) for j in range(horizon)])
        start = end
    return np.array(out, dtype=np.int64).reshape(-1, horizon)


def test_exact_padded_windows_at_episode_starts_and_ends():
    # Episodes: rows 0..2 (L=3) and rows 3..6 (L=4); values are 10 * row.
    x = (np.arange(7) * 10).reshape(7, 1)
    s = SequenceSampler(np.array([3, 7]), horizon=4, pad_before=1, pad_after=2)
    # Hand-computed: starts -1..1 in episode 0, -1..2 in episode 1, edges repeated.
    expected = [
        [0, 0, 10, 20],
        [0, 10, 20, 20],
        [10, 20, 20, 20],
        [30, 30, 40, 50],
        [30, 40, 50, 60],
        [40, 50, 60, 60],
        [50, 60, 60, 60],
    ]
    assert len(s) == 7
    got = [s.sample_sequence({"x": x}, i)["x"][:, 0].tolist() for i in range(len(s))]
    assert got == expected
    np.testing.assert_array_equal(s.gather({"x": x}, np.arange(7))["x"][..., 0], expected)
    # buffer_start, buffer_end, sample_start, sample_end of the first and last windows.
    np.testing.assert_array_equal(s.indices[0], [0, 3, 1, 4])
    np.testing.assert_array_equal(s.indices[-1], [5, 7, 0, 2])


def test_episode_shorter_than_horizon_yields_fully_padded_windows():
    x = np.array([[1.0], [2.0]])  # one episode, L=2 < T=4
    s = SequenceSampler(np.array([2]), horizon=4, pad_before=1, pad_after=2)
    got = [s.sample_sequence({"x": x}, i)["x"][:, 0].tolist() for i in range(len(s))]
    assert got == [[1, 1, 2, 2], [1, 2, 2, 2]]
    # Without padding no window of 4 fits in 2 rows.
    assert len(SequenceSampler(np.array([2]), horizon=4)) == 0


@pytest.mark.parametrize("seed", range(5))
def test_no_window_crosses_episodes_random_lengths(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 25, size=rng.integers(1, 12))
    ends = np.cumsum(lengths)
    horizon = int(rng.integers(1, 17))
    pad_before = int(rng.integers(0, horizon))
    pad_after = int(rng.integers(0, horizon))
    mask = rng.random(len(ends)) < 0.7
    s = SequenceSampler(ends, horizon, pad_before, pad_after, episode_mask=mask)
    episode_of_row = np.repeat(np.arange(len(ends)), lengths)  # (N,)
    rows = s.rows(np.arange(len(s)))  # (N_windows, T)
    # Every window stays inside one selected episode ...
    assert (episode_of_row[rows] == episode_of_row[rows[:, :1]]).all()
    assert mask[episode_of_row[rows[:, 0]]].all() if len(s) else True
    # ... and the windows are exactly those of the naive loop.
    np.testing.assert_array_equal(rows, _naive_windows(ends, horizon, pad_before, pad_after, mask))


def test_gather_equals_per_window_sample_sequence_numpy_and_zarr():
    rng = np.random.default_rng(0)
    ends = np.cumsum(rng.integers(3, 20, size=6))
    n = int(ends[-1])
    arrays = {
        "action": rng.normal(size=(n, 2)).astype(np.float32),
        "img": rng.integers(0, 255, size=(n, 4, 4, 3), dtype=np.uint8),
    }
    z = zarr.create_array(store={}, shape=(n, 2), chunks=(7, 2), dtype="float32")
    z[:] = arrays["action"]
    s = SequenceSampler(ends, horizon=8, pad_before=1, pad_after=3)
    idx = rng.integers(0, len(s), size=40)
    batch = s.gather(arrays, idx)
    batch_z = s.gather({"action": z}, idx)
    assert batch["action"].shape == (40, 8, 2) and batch["img"].shape == (40, 8, 4, 4, 3)
    for b, i in enumerate(idx):
        one = s.sample_sequence(arrays, int(i))
        for k in arrays:
            np.testing.assert_array_equal(batch[k][b], one[k])
        np.testing.assert_array_equal(batch_z["action"][b], one["action"])


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="pad_before"):
        SequenceSampler(np.array([5]), horizon=4, pad_before=4)
    with pytest.raises(ValueError, match="episode_mask"):
        SequenceSampler(np.array([5, 9]), horizon=4, episode_mask=np.ones(3, bool))
    with pytest.raises(ValueError, match="increasing"):
        SequenceSampler(np.array([5, 5]), horizon=4)


def test_split_by_episode_is_seeded_disjoint_and_capped():
    train, val = split_episodes(50, val_ratio=0.1, seed=3)
    assert train.shape == val.shape == (50,)
    assert not (train & val).any() and (train | val).all()
    assert val.sum() == 5
    train2, val2 = split_episodes(50, val_ratio=0.1, seed=3)
    np.testing.assert_array_equal(val, val2)
    _, val3 = split_episodes(50, val_ratio=0.1, seed=4)
    assert not np.array_equal(val, val3)
    capped, val4 = split_episodes(50, val_ratio=0.1, seed=3, max_train_episodes=7)
    np.testing.assert_array_equal(val4, val)  # the cap never moves episodes into validation
    assert capped.sum() == 7 and not (capped & val).any()
    # Tiny datasets keep a training episode; val_ratio=0 means no validation.
    assert split_episodes(1, 0.5)[0].tolist() == [True]
    assert split_episodes(10, 0.0)[1].sum() == 0
    with pytest.raises(ValueError, match="val_ratio"):
        split_episodes(10, 1.0)
