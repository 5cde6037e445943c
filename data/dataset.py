"""Torch dataset of {obs, action} windows over a zarr replay buffer (Chi et al. 2023).

Each item is one padded window of T = horizon rows (see data/sampler.py for the timing):
``{"obs": {key: (T, ...)}, "action": (T, Da)}``, or obs cut to its first To rows with
obs_steps_only=True. Values are in raw dataset units: the policy owns the normalizer and is
fitted on `stats()` (per-key min/max over the training episodes). Low-dim keys come out as
float32; uint8 image keys stay uint8, in memory and in batches (the policy's encoder crops and
scales them on the training device). With obs_steps_only=True only the To observation frames
of a window are gathered, which is what keeps image batches small. Keys named in image_keys
are checked at open to be uint8 (N, H, W, C), as in the reference layout.

Training fetches whole batches with `get_batch` / `sample_batch` (one vectorised fancy index
per key over in-memory numpy arrays) rather than through a DataLoader.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dplite.data.replay_buffer import ReplayBuffer
from dplite.data.sampler import SequenceSampler, split_episodes, take_rows

logger = logging.getLogger(__name__)

Batch = dict[str, Any]  # {"obs": {key: Tensor}, "action": Tensor}


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[(first, last + 1)] of each run of True in a boolean mask."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


class WindowDataset(Dataset):
    """Padded (obs, action) windows of the training (or validation) episodes of a dataset."""

    def __init__(
        self,
        path: str | os.PathLike[str] | ReplayBuffer,
        obs_keys: Sequence[str] = ("state",),
        action_key: str = "action",
        horizon: int = 16,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        val_ratio: float = 0.1,
        seed: int = 42,
        max_train_episodes: int | None = None,
        in_memory: bool = True,
        obs_steps_only: bool = False,
        pad_after: int | None = None,
        image_keys: Sequence[str] = (),
    ) -> None:
        if isinstance(obs_keys, str):
            obs_keys = (obs_keys,)
        obs_keys = tuple(obs_keys)
        image_keys = (image_keys,) if isinstance(image_keys, str) else tuple(image_keys)
        stray = [k for k in image_keys if k not in obs_keys]
        if stray:
            raise ValueError(f"image_keys {stray} are not among obs_keys {list(obs_keys)}")
        if not obs_keys:
            raise ValueError("obs_keys is empty: expected at least one observation key")
        if n_obs_steps < 1 or n_action_steps < 1:
            raise ValueError(
                f"n_obs_steps={n_obs_steps}, n_action_steps={n_action_steps}: expected >= 1"
            )
        if n_action_steps > horizon - n_obs_steps + 1:
            raise ValueError(
                f"n_action_steps={n_action_steps} with horizon={horizon}, "
                f"n_obs_steps={n_obs_steps}: expected Ta <= T - To + 1"
            )
        if pad_after is None:  # every frame, the last ones too, is some window's newest obs
            pad_after = horizon - n_obs_steps
        if not 0 <= pad_after <= horizon - n_obs_steps:
            raise ValueError(
                f"pad_after={pad_after}: expected 0 <= pad_after <= T - To = "
                f"{horizon - n_obs_steps} (past that the newest observation would be padding)"
            )
        self.pad_after = pad_after
        keys = list(dict.fromkeys([*obs_keys, action_key]))
        if isinstance(path, ReplayBuffer):
            rb = path
            missing = [k for k in keys if k not in rb.keys]
            if missing:
                raise ValueError(f"{rb.path}: data/{missing[0]} requested but absent ({rb.keys})")
        else:
            rb = ReplayBuffer.open(path, mode="r", keys=keys, in_memory=in_memory)
        if rb.n_episodes == 0:
            raise ValueError(f"{rb.path}: holds no episodes")
        for k in image_keys:
            arr = rb[k]
            if arr.dtype != np.uint8 or len(arr.shape) != 4:
                raise ValueError(
                    f"{rb.path}: data/{k} is {arr.dtype} with shape {tuple(arr.shape)}; image key "
                    f"{k!r} must be uint8 (N, H, W, C), channel-last as in the reference layout"
                )
        self.replay_buffer = rb
        self.obs_keys = obs_keys
        self.image_keys = image_keys
        self.action_key = action_key
        self.horizon = horizon
        self.n_obs_steps = n_obs_steps
        self.n_action_steps = n_action_steps
        self.obs_steps_only = obs_steps_only
        self.val_ratio = val_ratio
        self.seed = seed

        # Low-dim keys are converted to float32 once here, not on every batch.
        self._arrays: dict[str, Any] = {}
        for k in keys:
            arr = rb[k]
            if isinstance(arr, np.ndarray) and arr.dtype not in (np.uint8, np.float32):
                arr = arr.astype(np.float32)
            self._arrays[k] = arr

        self.train_mask, self.val_mask = split_episodes(
            rb.n_episodes, val_ratio, seed, max_train_episodes
        )
        self.episode_mask = self.train_mask
        self.sampler = self._make_sampler(self.train_mask)

    def _make_sampler(self, mask: np.ndarray) -> SequenceSampler:
        return SequenceSampler(
            self.replay_buffer.episode_ends,
            horizon=self.horizon,
            pad_before=self.n_obs_steps - 1,
            pad_after=self.pad_after,
            episode_mask=mask,
        )

    def get_validation_dataset(self) -> WindowDataset:
        """The same dataset over the validation episodes (shares the loaded arrays)."""
        val = copy.copy(self)
        val.episode_mask = self.val_mask
        val.sampler = self._make_sampler(self.val_mask)
        return val

    # ----------------------------------------------------------------- shapes
    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Feature shape of each obs key and the action key."""
        return {k: tuple(a.shape[1:]) for k, a in self._arrays.items()}

    @property
    def action_dim(self) -> int:
        return int(np.prod(self._arrays[self.action_key].shape[1:]))

    def __len__(self) -> int:
        return len(self.sampler)

    # ----------------------------------------------------------------- access
    @staticmethod
    def _to_tensor(values: np.ndarray) -> torch.Tensor:
        if values.dtype not in (np.uint8, np.float32):
            values = values.astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(values))

    def get_batch(self, idx: np.ndarray, obs_keys: Sequence[str] | None = None) -> Batch:
        """Windows idx as {"obs": {key: (B, T or To, ...)}, "action": (B, T, Da)}.

        obs_keys picks a subset of the observation keys (default: all), e.g. to compute
        statistics of a low-dim key over every window without gathering the images.
        """
        idx = np.asarray(idx, dtype=np.int64)
        if idx.ndim != 1:
            raise ValueError(f"idx has shape {idx.shape}, expected (B,)")
        rows = self.sampler.rows(idx)  # (B, T)
        # Obs beyond To are never read by the policy when obs_steps_only; skip fetching them.
        obs_rows = rows[:, : self.n_obs_steps] if self.obs_steps_only else rows  # (B, To|T)
        keys = self.obs_keys if obs_keys is None else tuple(obs_keys)
        unknown = [k for k in keys if k not in self.obs_keys]
        if unknown:
            raise ValueError(
                f"obs_keys {unknown} are not among the dataset's {list(self.obs_keys)}"
            )
        obs = {k: self._to_tensor(take_rows(self._arrays[k], obs_rows)) for k in keys}
        action = self._to_tensor(take_rows(self._arrays[self.action_key], rows))  # (B, T, Da)
        return {"obs": obs, "action": action}

    def __getitem__(self, i: int) -> Batch:
        """Window i as {"obs": {key: (T or To, ...)}, "action": (T, Da)}."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        window = self.sampler.sample_sequence(self._arrays, int(i))  # {key: (T, ...)}
        obs = {}
        for k in self.obs_keys:
            values = window[k][: self.n_obs_steps] if self.obs_steps_only else window[k]
            obs[k] = self._to_tensor(values)
        return {"obs": obs, "action": self._to_tensor(window[self.action_key])}

    def sample_batch(self, batch_size: int, rng: np.random.Generator) -> Batch:
        """batch_size windows drawn uniformly with replacement."""
        if len(self) == 0:
            raise ValueError(f"{self.replay_buffer.path}: no windows to sample from")
        return self.get_batch(rng.integers(0, len(self), size=batch_size))

    # ----------------------------------------------------------------- statistics
    def stats(self, keys: Sequence[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
        """{key: {"min", "max"}} (feature-shaped float32) over the rows of training episodes,
        for `keys` (default: every obs key and the action; a policy's normalizer wants the
        low-dim ones and the action only, images are not min-max normalized).

        Padding only repeats rows, so these are also the extremes over all training windows.
        Reads contiguous runs of training episodes in blocks (bounded memory for images).
        """
        ends = self.replay_buffer.episode_ends
        starts = ends - self.replay_buffer.episode_lengths
        runs = [(int(starts[a]), int(ends[b - 1])) for a, b in _runs(self.train_mask)]
        out: dict[str, dict[str, np.ndarray]] = {}
        keys = [*self.obs_keys, self.action_key] if keys is None else list(keys)
        unknown = [k for k in keys if k not in self._arrays]
        if unknown:
            raise ValueError(f"stats of {unknown}: not loaded (keys {list(self._arrays)})")
        for k in keys:
            arr = self._arrays[k]
            feature = tuple(arr.shape[1:])
            row_bytes = max(int(np.prod(feature)) * np.dtype(arr.dtype).itemsize, 1)
            block = max(1, (64 << 20) // row_bytes)
            lo = np.full(feature, np.inf)
            hi = np.full(feature, -np.inf)
            for a, b in runs:
                for s in range(a, b, block):
                    values = np.asarray(arr[s : min(s + block, b)])
                    lo = np.minimum(lo, values.min(axis=0))
                    hi = np.maximum(hi, values.max(axis=0))
            out[k] = {"min": lo.astype(np.float32), "max": hi.astype(np.float32)}
        return out
