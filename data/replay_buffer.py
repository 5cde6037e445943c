"""Episodes stored in a zarr group, in the Diffusion Policy layout (Chi et al. 2023).

Layout (the one real-stanford/diffusion_policy's reference datasets use, zarr v2 or v3)::

    <root>/data/<key>          (N, ...)        every episode concatenated along time
    <root>/meta/episode_ends   (n_episodes,)   int64, exclusive cumulative ends
    <root>/meta/<name>         (n_episodes,)   optional per-episode values (seed, expert_mode)

`ReplayBuffer.open` validates the store before anything else touches it and refuses a
malformed one with a `DatasetError` naming the file, the key and the problem. Validation
always runs on a read-only handle, so a failed open writes nothing.

`add_episode` is all-or-nothing. Rows are written first (data, then per-episode meta) and
`meta/episode_ends` is extended last: that one write is the commit point. Each zarr store
write is atomic (temporary file + rename, from zarr 3.1.3 on: the oldest zarr that
pyproject.toml admits), so a crash leaves either the old or the new episode_ends. Rows past ``episode_ends[-1]`` (and meta entries past ``n_episodes``) are an
uncommitted tail: mode "r" ignores them, mode "a" truncates them. Growing episode_ends is
two writes (shape, then value); a crash between them leaves a trailing fill value 0, which
no valid dataset can hold (episodes are never empty), so a single trailing 0 is read as an
uncommitted append as well.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import zarr
import zarr.codecs
import zarr.storage

logger = logging.getLogger(__name__)

# Low-dim keys: chunks of whole thousands of rows (one chunk read serves many windows).
LOWDIM_CHUNK_ROWS = 4096
LOWDIM_CHUNK_BYTES = 4 << 20
# Image-like keys (uint8 (H, W, C) or rows larger than this many bytes): a few frames per chunk, so a random
# window of T frames decodes little it does not use.
IMAGE_ROW_BYTES = 4096
IMAGE_CHUNK_FRAMES = 4
# Writers of whole datasets (the importers) group image chunks into shards of this many frames:
# one file per shard instead of per chunk. Reads still decode single chunks.
IMAGE_SHARD_FRAMES = 400
# Rows are scanned for NaN/inf in blocks of about this many bytes (bounded memory).
SCAN_BLOCK_BYTES = 64 << 20


class DatasetError(ValueError):
    """A dataset that breaks the data contract; the message names the file, key and problem."""

    def __init__(self, path: str | os.PathLike[str], key: str, problem: str) -> None:
        self.path = str(path)
        self.key = key
        self.problem = problem
        super().__init__(f"{self.path}: {key}: {problem}")


def _is_zip(path: str | os.PathLike[str]) -> bool:
    return str(path).endswith(".zip")


def _row_bytes(dtype: np.dtype, feature_shape: tuple[int, ...]) -> int:
    return int(np.dtype(dtype).itemsize * int(np.prod(feature_shape, dtype=np.int64)))


def chunk_rows(dtype: np.dtype, feature_shape: tuple[int, ...]) -> int:
    """Rows per chunk along time: thousands for low-dim keys, a few frames for images."""
    row = max(_row_bytes(dtype, feature_shape), 1)
    is_image = np.dtype(dtype) == np.uint8 and len(feature_shape) == 3
    if is_image or row > IMAGE_ROW_BYTES:
        return IMAGE_CHUNK_FRAMES
    return int(max(1, min(LOWDIM_CHUNK_ROWS, LOWDIM_CHUNK_BYTES // row)))


def create_step_array(
    group: zarr.Group,
    name: str,
    feature_shape: tuple[int, ...],
    dtype: np.dtype,
    compressors: Any,
    shard_images: bool = False,
) -> zarr.Array:
    """An empty per-step data array (0, *feature_shape), chunked along time by chunk_rows:
    the layout of every dataset, whoever writes it. shard_images (zarr v3 only): image-like
    arrays store their chunks in shards of IMAGE_SHARD_FRAMES frames, for writers that append
    many frames at a time (a shard is rewritten whole when rows are added to it)."""
    rows = chunk_rows(dtype, feature_shape)
    shard = shard_images and rows == IMAGE_CHUNK_FRAMES
    return group.create_array(
        name,
        shape=(0, *feature_shape),
        chunks=(rows, *feature_shape),
        shards=(IMAGE_SHARD_FRAMES, *feature_shape) if shard else None,
        dtype=dtype,
        fill_value=0,
        compressors=compressors,
        # every chunk is written: comparing each with the fill value costs more than it saves
        config={"write_empty_chunks": True},
    )


def _is_numeric(dtype: np.dtype) -> bool:
    return np.dtype(dtype).kind in "biuf"


def _iter_blocks(n_rows: int, rows_per_block: int) -> Iterator[slice]:
    for start in range(0, n_rows, rows_per_block):
        yield slice(start, min(start + rows_per_block, n_rows))


def check_finite(
    path: str | os.PathLike[str], name: str, array: Any, n_rows: int, chunk: int = 1
) -> None:
    """Raise DatasetError if a float array holds NaN or inf in its first n_rows rows.

    Integer and bool arrays (uint8 images included) cannot hold either and are skipped. The
    scan reads chunk-aligned blocks of ~64 MiB, so memory stays bounded on large datasets.
    """
    dtype = np.dtype(array.dtype)
    if dtype.kind != "f" or n_rows == 0:
        return
    row = max(_row_bytes(dtype, tuple(array.shape[1:])), 1)
    rows_per_block = max(chunk, (SCAN_BLOCK_BYTES // row) // chunk * chunk)
    for block in _iter_blocks(n_rows, rows_per_block):
        values = np.asarray(array[block])
        if np.isfinite(values).all():
            continue
        bad_nan = np.isnan(values)
        kind = "NaN" if bad_nan.any() else "inf"
        bad = bad_nan if kind == "NaN" else ~np.isfinite(values)
        first = block.start + int(np.argmax(bad.reshape(len(values), -1).any(axis=1)))
        raise DatasetError(path, name, f"contains {kind} (first at row {first})")


def _committed_ends(ends: np.ndarray) -> tuple[np.ndarray, bool]:
    """Drop a single trailing 0 (a grown episode_ends whose value never landed)."""
    if len(ends) > 0 and ends[-1] == 0:
        return ends[:-1], True
    return ends, False


def _validate_group(
    path: str | os.PathLike[str],
    root: zarr.Group,
    keys: Sequence[str] | None,
) -> tuple[np.ndarray, list[str], list[str]]:
    """Check a read-only root group against the data contract.

    Returns (committed episode_ends, selected data keys, meta keys). Raises DatasetError on the
    first problem found. Float data is scanned for NaN/inf separately (see check_finite).
    """
    if "data" not in root or not isinstance(root["data"], zarr.Group):
        raise DatasetError(path, "data/", "missing: expected a group data/ with one array per key")
    if "meta" not in root or not isinstance(root["meta"], zarr.Group):
        raise DatasetError(path, "meta/episode_ends", "missing (there is no meta/ group)")
    data, meta = root["data"], root["meta"]
    if "episode_ends" not in meta or not isinstance(meta["episode_ends"], zarr.Array):
        raise DatasetError(path, "meta/episode_ends", "missing")

    ends_arr = meta["episode_ends"]
    if ends_arr.ndim != 1:
        raise DatasetError(
            path, "meta/episode_ends", f"has shape {ends_arr.shape}, expected (n_episodes,)"
        )
    if np.dtype(ends_arr.dtype).kind not in "iu":
        raise DatasetError(
            path, "meta/episode_ends", f"has dtype {ends_arr.dtype}, expected an integer dtype"
        )
    raw_ends = np.asarray(ends_arr[:]).astype(np.int64)
    ends, dropped = _committed_ends(raw_ends)
    if dropped:
        logger.warning("%s: ignoring an uncommitted trailing entry of meta/episode_ends", path)
    if len(ends) > 0:
        if (ends < 0).any():
            i = int(np.argmax(ends < 0))
            raise DatasetError(path, "meta/episode_ends", f"negative value {ends[i]} at index {i}")
        lengths = np.diff(ends, prepend=0)
        if (lengths == 0).any():
            i = int(np.argmax(lengths == 0))
            raise DatasetError(
                path, "meta/episode_ends", f"episode {i} is empty (episode_ends[{i}] = {ends[i]})"
            )
        if (lengths < 0).any():
            i = int(np.argmax(lengths < 0))
            raise DatasetError(
                path,
                "meta/episode_ends",
                f"not increasing: episode_ends[{i}] = {ends[i]} after {ends[i - 1]}",
            )
    n_steps = int(ends[-1]) if len(ends) else 0
    n_episodes = len(ends)

    all_keys = sorted(data.array_keys())
    for name in sorted(data.group_keys()):
        raise DatasetError(path, f"data/{name}", "is a group, expected an array")
    if keys is None:
        selected = all_keys
    else:
        selected = list(keys)
        missing = [k for k in selected if k not in all_keys]
        if missing:
            raise DatasetError(
                path, f"data/{missing[0]}", f"requested key absent (present keys: {all_keys})"
            )
    if n_episodes > 0 and not all_keys:
        raise DatasetError(path, "data/", f"holds no arrays but {n_episodes} episodes are listed")
    for name in selected:
        arr = data[name]
        if arr.ndim < 1:
            raise DatasetError(path, f"data/{name}", "is a scalar, expected (N, ...) rows")
        if not _is_numeric(arr.dtype):
            raise DatasetError(
                path, f"data/{name}", f"non-numeric dtype {arr.dtype}, expected bool/int/float"
            )
        if arr.shape[0] < n_steps:
            raise DatasetError(
                path,
                f"data/{name}",
                f"has {arr.shape[0]} rows but meta/episode_ends ends at {n_steps}",
            )
        if arr.shape[0] > n_steps:
            logger.warning(
                "%s: data/%s has %d rows past the last committed episode (an interrupted "
                "append); they are ignored, and truncated by the next open in mode 'a'",
                path,
                name,
                arr.shape[0] - n_steps,
            )

    meta_keys = sorted(k for k in meta.array_keys() if k != "episode_ends")
    for name in meta_keys:
        arr = meta[name]
        if arr.ndim != 1 or not _is_numeric(arr.dtype):
            raise DatasetError(
                path,
                f"meta/{name}",
                f"has shape {arr.shape} dtype {arr.dtype}, expected numeric (n_episodes,)",
            )
        if arr.shape[0] < n_episodes:
            raise DatasetError(
                path, f"meta/{name}", f"has {arr.shape[0]} entries for {n_episodes} episodes"
            )
    return ends, selected, meta_keys


class ReplayBuffer:
    """Episodes of equal-keyed arrays in one zarr group (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        root: zarr.Group,
        episode_ends: np.ndarray,
        keys: list[str],
        meta_keys: list[str],
        mode: Literal["r", "a"],
        in_memory: bool,
    ) -> None:
        # Use create() / open(); this constructor trusts its arguments.
        self.path = str(path)
        self._root = root
        self._ends = episode_ends.astype(np.int64)
        self._keys = list(keys)
        self._meta_keys = list(meta_keys)
        self._mode = mode
        self._in_memory = in_memory
        self._memory: dict[str, np.ndarray] = {}
        if in_memory:
            n = self.n_steps
            self._memory = {k: np.asarray(self._root["data"][k][:n]) for k in self._keys}

    # ----------------------------------------------------------------- construction
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        overwrite: bool = False,
        zarr_format: Literal[2, 3] = 3,
    ) -> ReplayBuffer:
        """Make an empty directory store at path (zarr v3 unless zarr_format=2)."""
        if _is_zip(path):
            raise ValueError(
                f"{path}: zip stores are read-only here; create a directory store and zip it"
            )
        if os.path.exists(path):
            if not overwrite:
                raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace)")
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
        root.require_group("data")
        meta = root.require_group("meta")
        meta.create_array(
            "episode_ends",
            shape=(0,),
            chunks=(LOWDIM_CHUNK_ROWS,),
            dtype="int64",
            fill_value=0,
            compressors=cls._compressors(zarr_format),
        )
        return cls(path, root, np.zeros(0, np.int64), [], [], "a", in_memory=False)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        mode: Literal["r", "a"] = "r",
        keys: Sequence[str] | None = None,
        in_memory: bool = False,
    ) -> ReplayBuffer:
        """Open and validate a dataset; mode "a" then truncates any uncommitted tail.

        keys selects the data keys to validate and load (all when None); a requested key that
        the store lacks is a DatasetError. in_memory=True reads the selected keys into numpy.
        """
        if mode not in ("r", "a"):
            raise ValueError(f"mode={mode!r}: expected 'r' or 'a'")
        if mode == "a" and _is_zip(path):
            raise ValueError(f"{path}: zip stores open read-only (mode='r')")
        if not os.path.exists(path):
            raise DatasetError(path, "/", "no such file or directory")
        # Validate on a read-only handle: a failed open must not write a byte.
        root = cls._open_root(path, "r")
        ends, selected, meta_keys = _validate_group(path, root, keys)
        if mode == "a" and keys is not None:
            # Appending writes every key, so every key is validated and opened.
            ends, selected, meta_keys = _validate_group(path, root, None)
        rb = cls(path, root, ends, selected, meta_keys, mode, in_memory)
        for name in selected:
            arr = root["data"][name]
            # in_memory scans the loaded copy instead of reading the store a second time.
            values = rb._memory[name] if in_memory else arr
            check_finite(path, f"data/{name}", values, rb.n_steps, arr.chunks[0])
        for name in meta_keys:
            check_finite(path, f"meta/{name}", root["meta"][name], len(ends))
        if mode == "a":
            rb._root = cls._open_root(path, "r+")
            cls._truncate_tail(rb._root, ends)
        return rb

    @staticmethod
    def _open_root(path: str | os.PathLike[str], mode: Literal["r", "r+"]) -> zarr.Group:
        try:
            if _is_zip(path):
                store = zarr.storage.ZipStore(str(path), mode="r", read_only=True)
                return zarr.open_group(store, mode="r")
            return zarr.open_group(str(path), mode=mode)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError, ValueError) as e:
            raise DatasetError(path, "/", f"not a zarr group ({type(e).__name__}: {e})") from e

    @staticmethod
    def _truncate_tail(root: zarr.Group, ends: np.ndarray) -> None:
        """Drop rows and meta entries past the last committed episode (mode "a" repair)."""
        n_steps = int(ends[-1]) if len(ends) else 0
        meta = root["meta"]
        if meta["episode_ends"].shape[0] != len(ends):
            meta["episode_ends"].resize((len(ends),))
        for name in root["data"].array_keys():
            arr = root["data"][name]
            if arr.shape[0] > n_steps:
                logger.warning("truncating data/%s from %d to %d rows", name, arr.shape[0], n_steps)
                arr.resize((n_steps, *arr.shape[1:]))
        for name in meta.array_keys():
            arr = meta[name]
            if name != "episode_ends" and arr.shape[0] > len(ends):
                arr.resize((len(ends),))

    @staticmethod
    def _compressors(zarr_format: int) -> Any:
        if zarr_format == 2:
            return "auto"
        return zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")

    # ----------------------------------------------------------------- properties
    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def episode_ends(self) -> np.ndarray:
        """(n_episodes,) int64, exclusive cumulative ends (a copy)."""
        return self._ends.copy()

    @property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], self._ends[:-1]]).astype(np.int64)

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self._ends, prepend=0).astype(np.int64)

    @property
    def keys(self) -> list[str]:
        """Data keys (the selected ones when opened with keys=)."""
        return list(self._keys)

    @property
    def meta_keys(self) -> list[str]:
        """Per-episode meta arrays other than episode_ends."""
        return list(self._meta_keys)

    @property
    def attrs(self) -> Any:
        """Root attributes (JSON) for small provenance info; writable in mode "a"."""
        return self._root.attrs

    @property
    def zarr_format(self) -> int:
        return int(self._root.metadata.zarr_format)

    @property
    def in_memory(self) -> bool:
        return self._in_memory

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def __getitem__(self, key: str) -> Any:
        """The (N, ...) array of a data key: numpy when in_memory, else the zarr array.

        A zarr array may hold uncommitted rows past n_steps (mode "r"); index below n_steps.
        """
        if key not in self._keys:
            raise KeyError(f"{self.path}: data/{key} not among the opened keys {self._keys}")
        if self._in_memory:
            return self._memory[key]
        return self._root["data"][key]

    def zarr_array(self, key: str) -> zarr.Array:
        """The stored zarr array of a data key (for chunk/codec inspection)."""
        return self._root["data"][key]

    def get_episode(self, i: int) -> dict[str, np.ndarray]:
        """Episode i as {key: (L, ...) numpy array}."""
        n = self.n_episodes
        if not -n <= i < n:
            raise IndexError(f"episode {i} out of range for {n} episodes in {self.path}")
        i = i % n
        start = 0 if i == 0 else int(self._ends[i - 1])
        end = int(self._ends[i])
        return {k: np.asarray(self[k][start:end]) for k in self._keys}

    def get_meta(self, name: str) -> np.ndarray:
        """(n_episodes,) values of meta/<name>."""
        if name == "episode_ends":
            return self.episode_ends
        if name not in self._meta_keys:
            raise KeyError(f"{self.path}: meta/{name} absent (present: {self._meta_keys})")
        return np.asarray(self._root["meta"][name][: self.n_episodes])

    def __repr__(self) -> str:
        return (
            f"ReplayBuffer({self.path!r}, n_episodes={self.n_episodes}, "
            f"n_steps={self.n_steps}, keys={self._keys})"
        )

    # ----------------------------------------------------------------- writing
    def add_episode(
        self,
        episode: Mapping[str, np.ndarray],
        episode_meta: Mapping[str, int | float] | None = None,
    ) -> None:
        """Append one episode; all-or-nothing (see the module docstring).

        episode: {key: (L, ...)} with one L > 0 for every key. The first episode fixes the keys,
        dtypes and feature shapes; later episodes must match them (values are cast when the cast
        is same-kind, e.g. float64 -> float32). episode_meta: scalars appended to meta/<name>.
        """
        if self._mode != "a":
            raise ValueError(f"{self.path}: opened with mode={self._mode!r}; use mode='a' to add")
        episode = {k: np.asarray(v) for k, v in episode.items()}
        episode_meta = dict(episode_meta or {})
        length = self._check_episode(episode, episode_meta)
        if self.n_episodes == 0:
            self._define_arrays(episode, episode_meta)

        start = self.n_steps
        self._write_data(episode, start, length)
        self._write_meta(episode_meta, start + length)
        self._ends = np.append(self._ends, np.int64(start + length))
        if self._in_memory:
            for k, v in episode.items():
                self._memory[k] = np.concatenate([self._memory[k], v.astype(self._memory[k].dtype)])

    def _check_episode(self, episode: dict[str, np.ndarray], meta: dict[str, Any]) -> int:
        where = f"{self.path}: add_episode"
        if not episode:
            raise ValueError(f"{where}: episode is empty, expected {{key: (L, ...) array}}")
        lengths = {}
        for k, v in episode.items():
            if v.ndim < 1:
                raise ValueError(f"{where}: {k} is a scalar, expected (L, ...) rows")
            if not _is_numeric(v.dtype):
                raise ValueError(f"{where}: {k} has non-numeric dtype {v.dtype}")
            if v.dtype.kind == "f" and not np.isfinite(v).all():
                raise ValueError(f"{where}: {k} contains NaN or inf")
            lengths[k] = v.shape[0]
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{where}: keys disagree on the episode length: {lengths}")
        length = next(iter(lengths.values()))
        if length == 0:
            raise ValueError(f"{where}: episode has length 0, expected L > 0")
        for k, v in meta.items():
            if not np.isscalar(v) or not _is_numeric(np.asarray(v).dtype):
                raise ValueError(f"{where}: episode_meta[{k!r}] = {v!r}, expected an int or float")
            if k == "episode_ends" or "/" in k:
                raise ValueError(f"{where}: episode_meta name {k!r} is reserved or invalid")
        if self.n_episodes == 0:
            return length
        if sorted(episode) != sorted(self._keys):
            raise ValueError(f"{where}: keys {sorted(episode)}, expected {sorted(self._keys)}")
        for k, v in episode.items():
            arr = self._root["data"][k]
            if tuple(v.shape[1:]) != tuple(arr.shape[1:]):
                raise ValueError(
                    f"{where}: {k} has feature shape {v.shape[1:]}, expected {arr.shape[1:]}"
                )
            if not np.can_cast(v.dtype, arr.dtype, casting="same_kind"):
                raise ValueError(f"{where}: {k} has dtype {v.dtype}, expected {arr.dtype}")
        if sorted(meta) != sorted(self._meta_keys):
            raise ValueError(
                f"{where}: episode_meta names {sorted(meta)}, expected {sorted(self._meta_keys)}"
            )
        return length

    def _define_arrays(self, episode: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """First committed episode: (re)create data and meta arrays from its keys and dtypes."""
        data, meta_group = self._root["data"], self._root["meta"]
        for name in list(data.array_keys()):
            # Left by an append that crashed before the first commit.
            del data[name]
        for name in list(meta_group.array_keys()):
            if name != "episode_ends":
                del meta_group[name]
        compressors = self._compressors(self.zarr_format)
        for k, v in episode.items():
            create_step_array(data, k, v.shape[1:], v.dtype, compressors)
        for k, v in meta.items():
            dtype = np.float64 if isinstance(v, float | np.floating) else np.int64
            meta_group.create_array(
                k,
                shape=(0,),
                chunks=(LOWDIM_CHUNK_ROWS,),
                dtype=dtype,
                fill_value=0,
                compressors=compressors,
            )
        self._keys = sorted(episode)
        self._meta_keys = sorted(meta)
        if self._in_memory:
            self._memory = {k: np.zeros((0, *v.shape[1:]), v.dtype) for k, v in episode.items()}

    def _write_data(self, episode: dict[str, np.ndarray], start: int, length: int) -> None:
        """Rows first: resizing from n_steps also overwrites any uncommitted tail."""
        for k, v in episode.items():
            arr = self._root["data"][k]
            arr.resize((start + length, *arr.shape[1:]))
            arr[start : start + length] = v.astype(arr.dtype, copy=False)

    def _write_meta(self, episode_meta: dict[str, Any], new_end: int) -> None:
        """Per-episode meta, then episode_ends last: its value write is the commit point."""
        meta = self._root["meta"]
        n = self.n_episodes
        for k, v in episode_meta.items():
            arr = meta[k]
            arr.resize((n + 1,))
            arr[n] = v
        ends = meta["episode_ends"]
        ends.resize((n + 1,))
        ends[n] = new_end
