"""What the importers and the exporter of other formats share: their error, a staged output
folder that appears whole or not at all, a block writer of new datasets, and the progress
callback.

A conversion writes into a hidden sibling of its destination (``.NAME.partial-PID``, on the
same file system) and renames it into place only once every episode is written, so an
interrupted or refused conversion leaves nothing at the destination; an existing destination
is replaced only when asked, and only after the new one is complete.

`EpisodeWriter` fills a new dataset in the layout, chunking and codecs of
`ReplayBuffer.add_episode`, but writes a block of several episodes at a time (about 32 MiB)
instead of one: per-episode writes spend most of their time resizing arrays and rereading
their metadata, and a whole conversion is all-or-nothing anyway (the staged folder). Its image
arrays keep their chunks of a few frames inside shards of IMAGE_SHARD_FRAMES frames (one file
each, written once): zarr's cost per chunk file, not the codec, dominated the writes of 84 px
frames. The finished dataset is opened with `ReplayBuffer.open`, which checks it against the
data contract.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from dplite.data.replay_buffer import (
    IMAGE_SHARD_FRAMES,
    LOWDIM_CHUNK_ROWS,
    ReplayBuffer,
    create_step_array,
)

logger = logging.getLogger(__name__)

# on_episode(episode_number, frames): called once per converted episode (a progress bar's update)
EpisodeCallback = Callable[[int, int], None]


class InteropError(ValueError):
    """Input another format's reader refuses; the message names the file, episode and key."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        problem: str,
        episode: str | None = None,
        key: str | None = None,
    ) -> None:
        self.path = str(path)
        self.episode = episode
        self.key = key
        self.problem = problem
        where = [self.path]
        if episode is not None:
            where.append(f"episode {episode}")
        if key is not None:
            where.append(key)
        super().__init__(f"{': '.join(where)}: {problem}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def staged_output(out: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``out``; on a clean exit move it to ``out``.

    On any exception the temporary path is deleted and ``out`` is untouched. An existing ``out``
    is refused unless ``overwrite``; then it is removed only after the new output is complete
    (renamed aside, the new one renamed in, the old one deleted).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    _remove(tmp)  # left by an earlier crashed run of this process id
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if not tmp.exists():
        raise RuntimeError(f"{tmp}: the conversion wrote nothing")
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    _remove(old)
    logger.debug("wrote %s", out)


class EpisodeWriter:
    """Appends episodes to a new zarr dataset at ``path`` in blocks of about ``block_bytes``.

    The first episode fixes the keys, dtypes and feature shapes (and the per-episode meta
    names); every later one must match them. ``close()`` writes the last block, the meta
    arrays and meta/episode_ends, and returns the dataset opened (and so validated) read-only.
    """

    def __init__(
        self, path: str | os.PathLike[str], attrs: Mapping[str, Any], block_bytes: int = 32 << 20
    ) -> None:
        self.path = str(path)
        ReplayBuffer.create(path).attrs.update(dict(attrs))
        self._root = zarr.open_group(self.path, mode="r+")
        self._compressors = ReplayBuffer._compressors(3)
        self.block_bytes = block_bytes
        self._spec: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._buffer: dict[str, list[np.ndarray]] = {}
        # the arrays as created: zarr's runtime config (write_empty_chunks) is not stored with
        # an array, and one reopened from the group would compare every shard with the fill
        # value again (a third of the write time of two 84 px cameras)
        self._arrays: dict[str, zarr.Array] = {}
        self._buffered = 0
        self._written = 0
        self._ends: list[int] = []
        self._meta: dict[str, list[int | float]] = {}

    @property
    def n_steps(self) -> int:
        return self._ends[-1] if self._ends else 0

    def add(self, episode: Mapping[str, np.ndarray], meta: Mapping[str, int | float]) -> None:
        where = f"{self.path}: episode {len(self._ends)}"
        lengths = {k: len(v) for k, v in episode.items()}
        if not lengths or len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise ValueError(f"{where}: keys disagree on the length, or it is 0: {lengths}")
        if not self._spec:
            self._define(episode, meta)
        if sorted(episode) != sorted(self._spec) or sorted(meta) != sorted(self._meta):
            raise ValueError(
                f"{where}: keys {sorted(episode)} / meta {sorted(meta)}, expected "
                f"{sorted(self._spec)} / {sorted(self._meta)}"
            )
        for k, v in episode.items():
            shape, dtype = self._spec[k]
            if v.shape[1:] != shape or v.dtype != dtype:
                raise ValueError(
                    f"{where}: {k} is {v.dtype} {v.shape[1:]}, expected {dtype} {shape}"
                )
            self._buffer[k].append(v)
            self._buffered += v.nbytes
        for k, v in meta.items():
            self._meta[k].append(v)
        self._ends.append(self.n_steps + next(iter(lengths.values())))
        if self._buffered >= self.block_bytes:
            self._flush()

    def _define(self, episode: Mapping[str, np.ndarray], meta: Mapping[str, int | float]) -> None:
        data = self._root["data"]
        for k, v in episode.items():
            self._spec[k] = (tuple(v.shape[1:]), v.dtype)
            self._buffer[k] = []
            self._arrays[k] = create_step_array(
                data, k, v.shape[1:], v.dtype, self._compressors, shard_images=True
            )
        self._meta = {k: [] for k in meta}

    def _flush(self, last: bool = False) -> None:
        """Write the buffered rows; before the last flush only up to a shard boundary (the
        rest stays buffered), so that no image shard is written twice."""
        end = self.n_steps if last else self.n_steps // IMAGE_SHARD_FRAMES * IMAGE_SHARD_FRAMES
        if end <= self._written:
            return
        n = end - self._written
        # zarr hands chunks to its codecs in batches of this many (1 by default): less
        # per-chunk overhead for the 100 chunks of a shard
        with zarr.config.set({"codec_pipeline.batch_size": 32}):
            for k, parts in self._buffer.items():
                rows = np.concatenate(parts) if len(parts) > 1 else parts[0]
                arr = self._arrays[k]
                arr.resize((end, *arr.shape[1:]))
                arr[self._written : end] = rows[:n]
                parts[:] = [rows[n:]] if len(rows) > n else []
        self._buffered = sum(p.nbytes for parts in self._buffer.values() for p in parts)
        self._written = end

    def close(self) -> ReplayBuffer:
        self._flush(last=True)
        meta = self._root["meta"]
        for k, values in self._meta.items():
            dtype = (
                np.float64 if any(isinstance(v, float | np.floating) for v in values) else np.int64
            )
            arr = meta.create_array(
                k,
                shape=(len(values),),
                chunks=(LOWDIM_CHUNK_ROWS,),
                dtype=dtype,
                fill_value=0,
                compressors=self._compressors,
            )
            arr[:] = np.asarray(values, dtype)
        ends = meta["episode_ends"]
        ends.resize((len(self._ends),))
        ends[:] = np.asarray(self._ends, np.int64)  # written last, as add_episode commits
        return ReplayBuffer.open(self.path)


def write_dataset(
    out: str | os.PathLike[str],
    attrs: Mapping[str, Any],
    episodes: Iterable[tuple[Mapping[str, np.ndarray], Mapping[str, int | float]]],
    overwrite: bool = False,
    on_episode: EpisodeCallback | None = None,
) -> dict[str, Any]:
    """Write (episode, per-episode meta) pairs as the zarr dataset ``out`` with root ``attrs``,
    staged under a temporary name and renamed when complete (staged_output). on_episode(i,
    frames) is called after each episode. Returns a summary (out, episodes, frames, keys)."""
    with staged_output(out, overwrite) as tmp:
        writer = EpisodeWriter(tmp, attrs)
        for i, (episode, meta) in enumerate(episodes):
            writer.add(episode, meta)
            if on_episode is not None:
                on_episode(i, len(next(iter(episode.values()))))
        rb = writer.close()
        summary = {
            "out": str(out),
            "episodes": rb.n_episodes,
            "frames": rb.n_steps,
            "keys": rb.keys,
        }
    return summary


__all__ = [
    "EpisodeCallback",
    "EpisodeWriter",
    "InteropError",
    "staged_output",
    "write_dataset",
]
