"""Fixed-length windows cut inside episodes, with edge padding (Chi et al. 2023, Sec. 3.1).

A window of T = horizon rows starts at episode-local time s, for
s = -pad_before ... L - T + pad_after (inclusive), where L is the episode length. With
pad_before = To - 1 and pad_after = Ta - 1 the first window's newest observation is the
episode's first frame, and the last window still executes at least one real action. Rows
outside [0, L) repeat the first or last frame of the same episode, so a window never
crosses into a neighbouring episode. An episode shorter than T still yields windows as long
as L >= T - pad_before - pad_after; shorter ones yield none (logged).

Timing (To = 2, Ta = 8, T = 16): window rows t-1 ... t+14 around the newest observation t;
obs uses rows 0..To-1 of the window, the executed actions are rows To-1 ... To+Ta-2.

`gather` is the fast batch path: each window's T row indices are computed at once,
clamped into its episode, and every key is fetched with a single fancy index.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def split_episodes(
    n_episodes: int,
    val_ratio: float = 0.1,
    seed: int = 42,
    max_train_episodes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split by episode: (train_mask, val_mask), each (n_episodes,).

    round(val_ratio * n) episodes (at least 1 when val_ratio > 0, and never all of them) go to
    validation; max_train_episodes then keeps a seeded random subset of the rest for training.
    """
    if n_episodes < 0:
        raise ValueError(f"n_episodes={n_episodes}: expected >= 0")
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio={val_ratio}: expected 0 <= val_ratio < 1")
    if max_train_episodes is not None and max_train_episodes < 1:
        raise ValueError(f"max_train_episodes={max_train_episodes}: expected >= 1 or None")
    rng = np.random.default_rng(seed)
    val_mask = np.zeros(n_episodes, dtype=bool)
    if val_ratio > 0 and n_episodes > 1:
        n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
        val_mask[rng.choice(n_episodes, size=n_val, replace=False)] = True
    train_mask = ~val_mask
    if max_train_episodes is not None and train_mask.sum() > max_train_episodes:
        keep = rng.choice(np.flatnonzero(train_mask), size=max_train_episodes, replace=False)
        train_mask = np.zeros(n_episodes, dtype=bool)
        train_mask[keep] = True
    return train_mask, val_mask


class SequenceSampler:
    """All padded windows of length `horizon` over the episodes selected by episode_mask."""

    def __init__(
        self,
        episode_ends: np.ndarray,
        horizon: int,
        pad_before: int = 0,
        pad_after: int = 0,
        episode_mask: np.ndarray | None = None,
    ) -> None:
        ends = np.asarray(episode_ends, dtype=np.int64)
        if ends.ndim != 1:
            raise ValueError(f"episode_ends has shape {ends.shape}, expected (n_episodes,)")
        lengths = np.diff(ends, prepend=0)  # (n_episodes,)
        if (lengths <= 0).any():
            raise ValueError(
                f"episode_ends {ends.tolist()[:10]}...: expected strictly increasing > 0"
            )
        if horizon < 1:
            raise ValueError(f"horizon={horizon}: expected >= 1")
        for name, pad in (("pad_before", pad_before), ("pad_after", pad_after)):
            if not 0 <= pad < horizon:
                raise ValueError(f"{name}={pad}: expected 0 <= {name} < horizon={horizon}")
        if episode_mask is None:
            episode_mask = np.ones(len(ends), dtype=bool)
        episode_mask = np.asarray(episode_mask, dtype=bool)
        if episode_mask.shape != ends.shape:
            raise ValueError(
                f"episode_mask has shape {episode_mask.shape}, expected {ends.shape} (n_episodes,)"
            )
        self.horizon = int(horizon)
        self.pad_before = int(pad_before)
        self.pad_after = int(pad_after)
        self.episode_ends = ends
        self.episode_mask = episode_mask

        starts = ends - lengths  # (n_episodes,) global row of each episode's frame 0
        n_windows = np.maximum(lengths - horizon + pad_before + pad_after + 1, 0)
        n_windows = np.where(episode_mask, n_windows, 0)
        too_short = episode_mask & (n_windows == 0)
        if too_short.any():
            logger.warning(
                "%d episode(s) shorter than horizon - pad_before - pad_after = %d yield no window",
                int(too_short.sum()),
                horizon - pad_before - pad_after,
            )
        episode = np.repeat(np.arange(len(ends)), n_windows)  # (N,)
        # Window k of an episode starts at local time k - pad_before.
        first = (
            np.cumsum(n_windows) - n_windows
        )  # (n_episodes,) index of each episode's first window
        local = np.arange(len(episode)) - first[episode] - pad_before  # (N,)
        self.window_episode = episode.astype(np.int64)  # (N,)
        self.window_start = (starts[episode] + local).astype(np.int64)  # (N,) may precede lo
        self.episode_lo = starts[episode].astype(np.int64)  # (N,)
        self.episode_hi = ends[episode].astype(np.int64)  # (N,) exclusive
        self._offsets = np.arange(horizon, dtype=np.int64)  # (T,)

    def __len__(self) -> int:
        return len(self.window_start)

    @property
    def indices(self) -> np.ndarray:
        """(N, 4) int64: buffer_start, buffer_end, sample_start, sample_end.

        Rows buffer_start:buffer_end of the buffer fill positions sample_start:sample_end of
        the window; positions before/after repeat the first/last of those rows.
        """
        buffer_start = np.maximum(self.window_start, self.episode_lo)
        buffer_end = np.minimum(self.window_start + self.horizon, self.episode_hi)
        sample_start = buffer_start - self.window_start
        sample_end = sample_start + (buffer_end - buffer_start)
        return np.stack([buffer_start, buffer_end, sample_start, sample_end], axis=1)  # (N, 4)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """(B, T) buffer row of every window position, clamped into the window's episode."""
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"window index out of range for {len(self)} windows")
        rows = self.window_start[idx, None] + self._offsets  # (B, T)
        return np.clip(rows, self.episode_lo[idx, None], self.episode_hi[idx, None] - 1)

    def sample_sequence(self, arrays: Mapping[str, Any], idx: int) -> dict[str, np.ndarray]:
        """Window idx as {key: (T, ...)}: one contiguous read per key, then edge padding."""
        if not -len(self) <= idx < len(self):
            raise IndexError(f"window {idx} out of range for {len(self)} windows")
        bs, be, ss, se = (int(v) for v in self.indices_of(idx))
        # Local position of each window row in the read slice: clamp to [0, be - bs).
        take = np.clip(np.arange(self.horizon) - ss, 0, se - ss - 1)  # (T,)
        return {k: np.asarray(arr[bs:be])[take] for k, arr in arrays.items()}

    def indices_of(self, idx: int) -> np.ndarray:
        """(4,) buffer_start, buffer_end, sample_start, sample_end of one window."""
        start, lo, hi = self.window_start[idx], self.episode_lo[idx], self.episode_hi[idx]
        bs, be = max(start, lo), min(start + self.horizon, hi)
        return np.array([bs, be, bs - start, be - start], dtype=np.int64)

    def gather(self, arrays: Mapping[str, Any], idx_batch: np.ndarray) -> dict[str, np.ndarray]:
        """Windows idx_batch as {key: (B, T, ...)} with one fancy index per key (take_rows)."""
        rows = self.rows(idx_batch)  # (B, T)
        return {k: take_rows(arr, rows) for k, arr in arrays.items()}


def take_rows(array: Any, rows: np.ndarray) -> np.ndarray:
    """array[rows] for an integer index array rows of any shape: (*rows.shape, ...).

    numpy arrays take one fancy index; other arrays (zarr) are read once per distinct row with
    an orthogonal selection, then expanded.
    """
    if isinstance(array, np.ndarray):
        return array[rows]
    unique, inverse = np.unique(rows, return_inverse=True)
    values = np.asarray(array.oindex[unique])  # (U, ...)
    return values[inverse.reshape(rows.shape)]
