"""Import and export LeRobotDataset (huggingface/lerobot), v3.0 both ways and v2.1 in.

The v3.0 layout (LeRobot's docs, "LeRobotDataset v3.0", and lerobot.datasets)::

    meta/info.json                      codebase_version "v3.0", fps, features {name: {dtype,
                                        shape, names, info}}, data_path / video_path templates
                                        (chunk-{chunk_index:03d}/file-{file_index:03d})
    meta/tasks.parquet                  task strings (the pandas index "task") -> task_index
    meta/stats.json                     per feature: min, max, mean, std, count
    meta/episodes/chunk-*/file-*.parquet  one row per episode: episode_index, tasks, length,
                                        data/chunk_index, data/file_index, dataset_from_index,
                                        dataset_to_index, videos/<key>/{chunk_index, file_index,
                                        from_timestamp, to_timestamp}, stats/<feature>/<stat>
    data/chunk-*/file-*.parquet         one row per frame, many episodes per file: the
                                        features plus timestamp, frame_index, episode_index,
                                        index, task_index
    videos/<key>/chunk-*/file-*.mp4     one stream per camera, many episodes per file: frame t
                                        of an episode is the frame at from_timestamp + timestamp[t]

v2.1 differs in metadata only as far as reading goes: meta/episodes.jsonl and meta/tasks.jsonl,
one parquet file and one mp4 per episode (from_timestamp 0), paths keyed by episode_chunk and
episode_index.

Import decodes each camera frame at its timestamp (PyAV; the nearest decoded frame must lie
within ``tolerance_s``, LeRobot's own rule and default) and refuses, naming file, episode and
key: a missing column or video, a length that disagrees with the episode table, a frame_index
that is not 0..L-1, non-increasing timestamps, a video that ends before its episode. Feature
names become dataset keys by dropping ``observation.images.`` / ``observation.`` and turning
dots into underscores (``observation.images.top`` -> ``top``, ``next.reward`` ->
``next_reward``), or as ``rename`` says; the names are kept in the attributes so that export
writes them back.

Export writes one parquet row group per episode and one continuous mp4 stream per camera
(libsvtav1, yuv420p, keyframe every 2 frames, as LeRobot records), and rolls over to the next
file at LeRobot's default sizes. Camera keys are the uint8 (N, H, W, 3) arrays; ``action`` is
``action``, other keys ``observation.<key>``. Statistics of every feature (images per channel,
scaled to [0, 1], shape (3, 1, 1)) go to meta/stats.json and per episode to the episode table.
Video is lossy: decoded frames differ from the stored ones by a few grey levels (see the
tests for the bound at the default quality).
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dplite.data.interop import EpisodeCallback, InteropError, staged_output, write_dataset
from dplite.data.replay_buffer import ReplayBuffer

logger = logging.getLogger(__name__)

CODEBASE_VERSION = "v3.0"
READ_VERSIONS = ("v3.0", "v2.1")
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
CHUNKS_SIZE = 1000  # files per chunk folder
DATA_FILE_MB = 100
VIDEO_FILE_MB = 200
DEFAULT_TOLERANCE_S = 1e-4  # LeRobotDataset(tolerance_s=...) default


def _modules() -> tuple[Any, Any, Any]:
    try:
        import av
        import pyarrow as pa
        import pyarrow.compute  # noqa: F401  (pa.compute)
        import pyarrow.parquet as pq
    except ImportError as e:  # an optional extra
        raise ImportError(
            "LeRobotDataset import/export needs pyarrow and av: "
            "pip install 'diffusion-policy-lite[interop]'"
        ) from e
    return pa, pq, av


def _is_numeric(dtype: Any) -> bool:
    try:
        return np.dtype(dtype).kind in "biuf"
    except TypeError:
        return False


def default_key(feature: str) -> str:
    """Dataset key of a LeRobot feature name: observation.images.top -> top,
    observation.state -> state, next.reward -> next_reward."""
    for prefix in ("observation.images.", "observation."):
        if feature.startswith(prefix):
            feature = feature[len(prefix) :]
            break
    return feature.replace(".", "_")


# ---------------------------------------------------------------------------------- reading
@dataclass
class EpisodeRef:
    """Where one episode lives: its parquet file and, per camera, its mp4 and start time."""

    index: int
    length: int
    tasks: list[str]
    data_file: Path
    videos: dict[str, tuple[Path, float]] = field(default_factory=dict)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InteropError(path, "missing") from None
    except json.JSONDecodeError as e:
        raise InteropError(path, f"not valid JSON ({e})") from e


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise InteropError(path, "missing")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise InteropError(path, f"line {n} is not valid JSON ({e})") from e
    return rows


def _feature_shape(name: str, ft: Mapping[str, Any], info_path: Path) -> tuple[int, ...]:
    shape = ft.get("shape")
    if not isinstance(shape, list | tuple) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise InteropError(
            info_path, f"shape {shape!r}: expected a list of positive ints", key=f"features.{name}"
        )
    return tuple(shape)


def _video_hwc(name: str, ft: Mapping[str, Any], info_path: Path) -> tuple[int, int, int]:
    shape = _feature_shape(name, ft, info_path)
    names = list(ft.get("names") or [])
    if len(shape) != 3:
        raise InteropError(
            info_path, f"video shape {shape}: expected 3 axes", key=f"features.{name}"
        )
    if names[:1] in (["channels"], ["channel"]):
        return shape[1], shape[2], shape[0]
    return shape[0], shape[1], shape[2]


class LeRobotSource:
    """A LeRobotDataset folder opened for reading (v3.0 or v2.1); ``episodes()`` yields its
    episodes one at a time as {key: (L, ...)} arrays (see the module docstring)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        features: Sequence[str] | None = None,
        rename: Mapping[str, str] | None = None,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
    ) -> None:
        self.pa, self.pq, self.av = _modules()
        self._file_rows: tuple[Path, Any] | None = None  # (data file, its rows): _rows
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such directory")
        if tolerance_s <= 0:
            raise ValueError(f"tolerance_s={tolerance_s}, expected > 0")
        self.tolerance_s = tolerance_s
        self.info_path = self.root / "meta" / "info.json"
        info = _read_json(self.info_path)
        self.info = info
        self.version = info.get("codebase_version")
        if self.version not in READ_VERSIONS:
            raise InteropError(
                self.info_path,
                f"codebase_version {self.version!r}: expected one of {READ_VERSIONS}",
                key="codebase_version",
            )
        for k in ("fps", "features", "data_path"):
            if k not in info:
                raise InteropError(self.info_path, "missing", key=k)
        self.fps = info["fps"]
        if not isinstance(self.fps, int | float) or self.fps <= 0:
            raise InteropError(self.info_path, f"{self.fps!r}: expected > 0", key="fps")
        self._select(info["features"], features, dict(rename or {}))
        self.tasks = self._read_tasks()
        self.refs = self._read_episodes()

    # .................................................................. metadata
    def _select(
        self, all_features: Mapping[str, Any], wanted: Sequence[str] | None, rename: dict
    ) -> None:
        usable = {}
        for name, ft in all_features.items():
            if name in DEFAULT_FEATURES:
                continue
            dtype = ft.get("dtype")
            if dtype in ("video", "image") or _is_numeric(dtype):
                usable[name] = ft
            elif wanted is None:
                logger.info("%s: skipping feature %s of dtype %s", self.root, name, dtype)
        if wanted is None:
            wanted = list(usable)
        unknown = [w for w in wanted if w not in usable]
        if unknown:
            raise InteropError(
                self.info_path,
                f"not a numeric, image or video feature (usable: {sorted(usable)})",
                key=f"features.{unknown[0]}",
            )
        stray = [r for r in rename if r not in wanted]
        if stray:
            raise ValueError(f"rename names {stray}, which are not among the features {wanted}")
        self.features = {name: usable[name] for name in wanted}
        self.keys = {name: rename.get(name, default_key(name)) for name in self.features}
        seen: dict[str, str] = {}
        for name, key in self.keys.items():
            if key in seen:
                raise ValueError(
                    f"{self.root}: features {seen[key]!r} and {name!r} both become key {key!r}; "
                    "pass a rename for one of them"
                )
            seen[key] = name
        if "action" not in self.keys.values():
            logger.warning("%s: no feature becomes the key 'action'", self.root)
        self.video_features = [n for n, ft in self.features.items() if ft["dtype"] == "video"]
        if self.video_features and not self.info.get("video_path"):
            raise InteropError(
                self.info_path, "missing but there are video features", key="video_path"
            )

    def _read_tasks(self) -> list[str]:
        if self.version == "v2.1":
            rows = _read_jsonl(self.root / "meta" / "tasks.jsonl")
            by_index = {int(r["task_index"]): str(r["task"]) for r in rows}
        else:
            path = self.root / "meta" / "tasks.parquet"
            if not path.exists():
                logger.warning("%s: missing, episodes get no task names", path)
                return []
            table = self.pq.read_table(path)
            name_col = next(
                (c for c in ("task", "__index_level_0__") if c in table.column_names), None
            )
            if name_col is None or "task_index" not in table.column_names:
                raise InteropError(
                    path,
                    f"expected columns task and task_index, found {table.column_names}",
                    key="task",
                )
            names = table.column(name_col).to_pylist()
            idx = table.column("task_index").to_pylist()
            by_index = {int(i): str(n) for i, n in zip(idx, names, strict=True)}
        return [by_index.get(i, "") for i in range(max(by_index, default=-1) + 1)]

    def _read_episodes(self) -> list[EpisodeRef]:
        if self.version == "v2.1":
            return self._read_episodes_v21()
        files = sorted(glob.glob(str(self.root / "meta" / "episodes" / "*" / "*.parquet")))
        if not files:
            raise InteropError(self.root / "meta" / "episodes", "holds no chunk-*/file-*.parquet")
        needed = [
            "episode_index",
            "length",
            "data/chunk_index",
            "data/file_index",
            "dataset_from_index",
            "dataset_to_index",
        ]
        for name in self.video_features:
            needed += [
                f"videos/{name}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")
            ]
        refs = []
        for path in files:
            schema = self.pq.read_schema(path)
            missing = [c for c in needed if c not in schema.names]
            if missing:
                raise InteropError(path, "missing column", key=missing[0])
            cols = needed + (["tasks"] if "tasks" in schema.names else [])
            rows = self.pq.read_table(path, columns=cols).to_pylist()
            for r in rows:
                ep = int(r["episode_index"])
                if r["dataset_to_index"] - r["dataset_from_index"] != r["length"]:
                    raise InteropError(
                        path,
                        f"length {r['length']} but dataset_from_index..to_index spans "
                        f"{r['dataset_to_index'] - r['dataset_from_index']}",
                        episode=str(ep),
                        key="length",
                    )
                data_file = self.root / self.info["data_path"].format(
                    chunk_index=r["data/chunk_index"], file_index=r["data/file_index"]
                )
                videos = {
                    name: (
                        self.root
                        / self.info["video_path"].format(
                            video_key=name,
                            chunk_index=r[f"videos/{name}/chunk_index"],
                            file_index=r[f"videos/{name}/file_index"],
                        ),
                        float(r[f"videos/{name}/from_timestamp"]),
                    )
                    for name in self.video_features
                }
                refs.append(
                    EpisodeRef(ep, int(r["length"]), list(r.get("tasks") or []), data_file, videos)
                )
        return self._ordered(refs)

    def _read_episodes_v21(self) -> list[EpisodeRef]:
        path = self.root / "meta" / "episodes.jsonl"
        chunks = int(self.info.get("chunks_size", CHUNKS_SIZE))
        refs = []
        for r in _read_jsonl(path):
            if "episode_index" not in r or "length" not in r:
                raise InteropError(path, f"row {r}: needs episode_index and length")
            ep = int(r["episode_index"])
            fmt = {"episode_chunk": ep // chunks, "episode_index": ep}
            data_file = self.root / self.info["data_path"].format(**fmt)
            videos = {
                name: (self.root / self.info["video_path"].format(video_key=name, **fmt), 0.0)
                for name in self.video_features
            }
            refs.append(
                EpisodeRef(ep, int(r["length"]), list(r.get("tasks") or []), data_file, videos)
            )
        return self._ordered(refs)

    def _ordered(self, refs: list[EpisodeRef]) -> list[EpisodeRef]:
        refs.sort(key=lambda r: r.index)
        for a, b in zip(refs, refs[1:], strict=False):
            if a.index == b.index:
                raise InteropError(self.root / "meta", "listed twice", episode=str(a.index))
        if not refs:
            raise InteropError(self.root / "meta", "lists no episodes")
        for r in refs:
            if r.length <= 0:
                raise InteropError(self.root / "meta", f"length {r.length}", episode=str(r.index))
        return refs

    @property
    def total_frames(self) -> int:
        return sum(r.length for r in self.refs)

    def metadata(self) -> dict[str, Any]:
        """What an imported dataset records about its source (JSON)."""
        return {
            "format": "lerobot",
            "source": str(self.root.resolve()),
            "codebase_version": self.version,
            "fps": self.fps,
            "robot_type": self.info.get("robot_type"),
            "features": {key: name for name, key in self.keys.items()},
            "tasks": self.tasks,
        }

    # .................................................................. episodes
    def episodes(self) -> Iterator[tuple[EpisodeRef, dict[str, np.ndarray]]]:
        """(ref, {key: (L, ...)}) for each episode in episode_index order."""
        cursors: dict[str, _VideoCursor] = {}
        # one thread per camera: PyAV decodes and converts frames without holding the GIL
        pool = ThreadPoolExecutor(max_workers=max(1, len(self.video_features)))
        try:
            for ref in self.refs:
                yield ref, self._episode(ref, cursors, pool)
        finally:
            pool.shutdown()
            for c in cursors.values():
                c.close()

    def _episode(
        self, ref: EpisodeRef, cursors: dict[str, _VideoCursor], pool: ThreadPoolExecutor
    ) -> dict[str, np.ndarray]:
        ep = str(ref.index)
        if not ref.data_file.exists():
            raise InteropError(ref.data_file, "missing", episode=ep)
        table = self._rows(ref)
        if table.num_rows != ref.length:
            raise InteropError(
                ref.data_file,
                f"{table.num_rows} rows but the episode table says length {ref.length}",
                episode=ep,
                key="episode_index",
            )
        frame_index = self._column(table, "frame_index", (), ref)
        if not np.array_equal(frame_index, np.arange(ref.length)):
            bad = int(np.argmax(frame_index != np.arange(ref.length)))
            raise InteropError(
                ref.data_file,
                f"row {bad} has frame_index {frame_index[bad]}, expected 0..L-1 in order",
                episode=ep,
                key="frame_index",
            )
        ts = self._column(table, "timestamp", (), ref).astype(np.float64)
        if not np.isfinite(ts).all() or (np.diff(ts) <= 0).any():
            bad = int(np.argmax(~(np.diff(ts) > 0))) + 1 if len(ts) > 1 else 0
            raise InteropError(
                ref.data_file,
                f"timestamps not increasing: {ts[bad - 1]:.6f} then {ts[bad]:.6f} at frame {bad}",
                episode=ep,
                key="timestamp",
            )
        decoded = {}
        for name in self.video_features:
            path, start = ref.videos[name]
            cursor = cursors.get(name)
            if cursor is None or cursor.path != path:
                if cursor is not None:
                    cursor.close()
                threads = len(self.video_features) == 1  # else the cameras run in parallel
                cursor = cursors[name] = _VideoCursor(path, name, self.av, threads)
            decoded[name] = pool.submit(cursor.read, start + ts, self.tolerance_s, ep)
        out: dict[str, np.ndarray] = {}
        for name, ft in self.features.items():
            if ft["dtype"] == "video":
                path = ref.videos[name][0]
                frames = decoded[name].result()  # (L, H, W, 3); raises the decoder's error
                expected = _video_hwc(name, ft, self.info_path)
                if frames.shape[1:] != expected:
                    raise InteropError(
                        path,
                        f"frames are {frames.shape[1:]} but info.json says (H, W, C) = {expected}",
                        episode=ep,
                        key=name,
                    )
                out[self.keys[name]] = frames
            elif ft["dtype"] == "image":
                out[self.keys[name]] = self._images(table, name, ref)
            else:
                shape = _feature_shape(name, ft, self.info_path)
                values = self._column(table, name, shape, ref).astype(ft["dtype"], copy=False)
                if values.dtype.kind == "f" and not np.isfinite(values).all():
                    row = int(np.argmax(~np.isfinite(values.reshape(len(values), -1)).all(1)))
                    raise InteropError(
                        ref.data_file, f"NaN or inf at frame {row}", episode=ep, key=name
                    )
                out[self.keys[name]] = values
        return out

    def _rows(self, ref: EpisodeRef) -> Any:
        """The episode's rows of its data file (the non-video columns), as a pyarrow table.

        Without image columns a data file's rows are small (numbers only), so the whole file is
        read once and kept until an episode of another file comes: a filtered read per episode
        cost about 7 ms each. Embedded images make a file large; then each episode is read
        alone, keeping memory to one episode."""
        columns = [n for n in self.features if n not in self.video_features]
        columns += ["timestamp", "frame_index", "episode_index"]
        cached = self._file_rows
        if cached is None or cached[0] != ref.data_file:
            schema = self.pq.read_schema(ref.data_file)
            missing = [c for c in columns if c not in schema.names]
            if missing:
                raise InteropError(
                    ref.data_file, "missing column", episode=str(ref.index), key=missing[0]
                )
            if any(self.features[n]["dtype"] == "image" for n in self.features):
                return self.pq.read_table(
                    ref.data_file, columns=columns, filters=[("episode_index", "==", ref.index)]
                )
            cached = self._file_rows = (
                ref.data_file,
                self.pq.read_table(ref.data_file, columns=columns),
            )
        table = cached[1]
        return table.filter(self.pa.compute.equal(table.column("episode_index"), ref.index))

    def _column(self, table: Any, name: str, shape: tuple[int, ...], ref: EpisodeRef) -> np.ndarray:
        """(L, *shape) numpy values of a scalar, list or nested-list column; shape () or (1,)
        accepts a scalar column."""
        pa = self.pa
        col = table.column(name).combine_chunks()
        n = len(col)
        where = dict(episode=str(ref.index), key=name)
        if col.null_count:
            raise InteropError(ref.data_file, f"{col.null_count} null values", **where)
        dims: list[int] = []
        arr = col
        while (
            pa.types.is_list(arr.type)
            or pa.types.is_large_list(arr.type)
            or pa.types.is_fixed_size_list(arr.type)
        ):
            lengths = np.asarray(pa.compute.list_value_length(arr))
            if len(lengths) and (lengths != lengths[0]).any():
                raise InteropError(ref.data_file, "rows of different lengths (ragged)", **where)
            dims.append(int(lengths[0]) if len(lengths) else 0)
            arr = arr.flatten()
        values = arr.to_numpy(zero_copy_only=False)
        got = tuple(dims)
        if got != shape and not (got == () and shape in ((), (1,))):
            raise InteropError(
                ref.data_file, f"rows of shape {got}, info.json says {shape}", **where
            )
        return values.reshape(n, *shape) if shape else values

    def _images(self, table: Any, name: str, ref: EpisodeRef) -> np.ndarray:
        import imageio.v3 as iio

        frames = []
        for i, cell in enumerate(table.column(name).to_pylist()):
            data = cell.get("bytes") if isinstance(cell, dict) else None
            if not data:
                raise InteropError(
                    ref.data_file,
                    f"row {i} holds no embedded image bytes",
                    episode=str(ref.index),
                    key=name,
                )
            img = np.asarray(iio.imread(data))
            frames.append(img[..., None] if img.ndim == 2 else img)
        return np.stack(frames).astype(np.uint8, copy=False)


class _VideoCursor:
    """Decodes one mp4 forward, handing out the frames nearest to ascending timestamps;
    seeks (to the keyframe before) only when asked for an earlier or a far later time."""

    SEEK_AHEAD_S = 2.0

    def __init__(self, path: Path, key: str, av: Any, threads: bool = True) -> None:
        self.path, self.key, self.av = path, key, av
        if not path.exists():
            raise InteropError(path, "missing", key=key)
        try:
            self.container = av.open(str(path))
        except av.error.FFmpegError as e:
            raise InteropError(path, f"cannot open video ({e})", key=key) from e
        if not self.container.streams.video:
            raise InteropError(path, "holds no video stream", key=key)
        self.stream = self.container.streams.video[0]
        # the decoder's own threads, or one: with two 84 px cameras decoded side by side,
        # frame threads doubled the CPU time of decoding (3.8 s against 1.7 s for 16,000 frames)
        if threads:
            self.stream.thread_type = "AUTO"
        else:
            self.stream.thread_count = 1
        # one converter to RGB for the whole video: frame.to_ndarray(format=...) sets up a
        # new one per frame, which took 3x the decoding's time for 84 px frames. With the
        # fast-bilinear flag, swscale converts 84 px frames in 0.09 ms instead of 0.22; both
        # convert at the frame's own size, and the pixels are the same (a test checks it).
        self._to_rgb = av.video.reformatter.VideoReformatter()
        self._interpolation = av.video.reformatter.Interpolation.FAST_BILINEAR
        self._restart()

    def _restart(self) -> None:
        self._frames = self._decode()
        self._pending: tuple[float, Any] | None = None
        self.position = -math.inf  # time of the last frame handed out or skipped

    def _decode(self) -> Iterator[tuple[float, Any]]:
        base = self.stream.time_base
        for frame in self.container.decode(self.stream):
            if frame.pts is not None:
                yield float(frame.pts * base), frame

    def _seek(self, t: float) -> None:
        target = int(max(t, 0.0) / self.stream.time_base) - 1
        self.container.seek(max(target, 0), backward=True, any_frame=False, stream=self.stream)
        self._restart()

    def read(self, times: np.ndarray, tol: float, episode: str) -> np.ndarray:
        """(L, H, W, 3) uint8 frames at ascending times (seconds)."""
        first = float(times[0])
        if first < self.position - tol or first > max(self.position, 0.0) + self.SEEK_AHEAD_S:
            self._seek(first)
        frames = []
        last = self.position
        for i, q in enumerate(times):
            q = float(q)
            while True:
                if self._pending is None:
                    try:
                        self._pending = next(self._frames)
                    except StopIteration:
                        raise InteropError(
                            self.path,
                            f"video ends (last frame at {last:.4f} s) before frame "
                            f"{i} of {len(times)} at {q:.4f} s: the video is shorter than its "
                            "episode",
                            episode=episode,
                            key=self.key,
                        ) from None
                t, frame = self._pending
                last = t
                if t < q - tol:
                    self._pending = None
                    self.position = t
                    continue
                if t > q + tol:
                    raise InteropError(
                        self.path,
                        f"no frame within {tol:g} s of {q:.4f} s (frame {i}; the "
                        f"next frame is at {t:.4f} s)",
                        episode=episode,
                        key=self.key,
                    )
                rgb = self._to_rgb.reformat(
                    frame, format="rgb24", interpolation=self._interpolation
                )
                frames.append(rgb.to_ndarray())
                self._pending = None
                self.position = t
                break
        return np.stack(frames)

    def close(self) -> None:
        self.container.close()


def import_lerobot(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    features: Sequence[str] | None = None,
    rename: Mapping[str, str] | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    attrs: dict[str, Any] | None = None,
    overwrite: bool = False,
    on_episode: EpisodeCallback | None = None,
) -> dict[str, Any]:
    """Convert the LeRobotDataset folder ``root`` into the zarr dataset ``out``, episode by
    episode, under a temporary name renamed when complete. features: the LeRobot features to
    import (default: every numeric, image and video one); rename: {feature: key}. Per-episode
    meta: episode_index (the source's) and task_index (the episode's first task, -1 if none)."""
    src = LeRobotSource(root, features, rename, tolerance_s)
    task_index = {t: i for i, t in enumerate(src.tasks)}
    episodes = (
        (
            episode,
            {
                "episode_index": ref.index,
                "task_index": task_index.get(ref.tasks[0], -1) if ref.tasks else -1,
            },
        )
        for ref, episode in src.episodes()
    )
    attrs = {"lerobot": src.metadata(), **(attrs or {})}
    return {**write_dataset(out, attrs, episodes, overwrite, on_episode), "fps": src.fps}


# ---------------------------------------------------------------------------------- writing
class _Stats:
    """min / max / mean / std / count of one feature, mergeable across episodes. Images are
    counted per channel in a histogram of their 256 grey levels (exact, and cheap), reported
    in [0, 1] and shaped (C, 1, 1) as LeRobot's image statistics; count is frames."""

    def __init__(self, values: np.ndarray, image: bool) -> None:
        self.image = image
        self.n = len(values)
        if image:  # (L, H, W, C) uint8
            self.hist = np.stack(
                [
                    np.bincount(values[..., c].ravel(), minlength=256)
                    for c in range(values.shape[-1])
                ]
            )
        else:
            x = values.reshape(len(values), -1).astype(np.float64)
            self.lo, self.hi = x.min(0), x.max(0)
            self.s1, self.s2 = x.sum(0), np.square(x).sum(0)

    def merge(self, other: _Stats) -> None:
        self.n += other.n
        if self.image:
            self.hist = self.hist + other.hist
        else:
            self.lo, self.hi = np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi)
            self.s1, self.s2 = self.s1 + other.s1, self.s2 + other.s2

    def result(self, shape: Sequence[int]) -> dict[str, Any]:
        if self.image:
            levels = np.arange(256) / 255.0
            rows = self.hist.sum(1)
            lo = np.array([levels[np.flatnonzero(h)[0]] for h in self.hist])
            hi = np.array([levels[np.flatnonzero(h)[-1]] for h in self.hist])
            mean = self.hist @ levels / rows
            var = self.hist @ levels**2 / rows - mean**2
            target: Sequence[int] = (-1, 1, 1)
        else:
            lo, hi, mean = self.lo, self.hi, self.s1 / self.n
            var = self.s2 / self.n - mean**2
            target = shape
        std = np.sqrt(np.maximum(var, 0.0))
        values = {"min": lo, "max": hi, "mean": mean, "std": std}
        out: dict[str, Any] = {k: np.asarray(v).reshape(target).tolist() for k, v in values.items()}
        out["count"] = [int(self.n)]
        return out


class _VideoWriter:
    """One camera's mp4 files: a continuous stream, rolled over at the size limit."""

    def __init__(
        self,
        root: Path,
        name: str,
        fps: int,
        codec: str,
        options: dict[str, str],
        file_mb: float,
        av: Any,
    ) -> None:
        self.root, self.name, self.fps, self.codec = root, name, fps, codec
        self.options, self.file_mb, self.av = options, file_mb, av
        self.chunk, self.file = 0, -1
        self.container = None
        self.frames = 0
        self.first_path: Path | None = None

    def _path(self) -> Path:
        return self.root / VIDEO_PATH.format(
            video_key=self.name, chunk_index=self.chunk, file_index=self.file
        )

    def _open(self, height: int, width: int) -> None:
        if self.container is not None:
            self.close()
        self.file += 1
        if self.file == CHUNKS_SIZE:
            self.chunk, self.file = self.chunk + 1, 0
        path = self._path()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.first_path = self.first_path or path
        self.container = self.av.open(str(path), "w")
        try:
            self.stream = self.container.add_stream(self.codec, rate=self.fps, options=self.options)
        except Exception:
            self.container.close()
            self.container = None
            raise
        self.stream.pix_fmt = "yuv420p"
        self.stream.width, self.stream.height = width, height
        self.frames = 0

    def add_episode(self, frames: np.ndarray) -> dict[str, Any]:
        path = self._path()
        size = path.stat().st_size if path.exists() else 0  # the muxer writes lazily
        if self.container is None or size >= self.file_mb * 2**20:
            self._open(frames.shape[1], frames.shape[2])
        start = self.frames
        for img in frames:
            vf = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            vf.pts = self.frames
            self.container.mux(self.stream.encode(vf))
            self.frames += 1
        key = f"videos/{self.name}"
        return {
            f"{key}/chunk_index": self.chunk,
            f"{key}/file_index": self.file,
            f"{key}/from_timestamp": start / self.fps,
            f"{key}/to_timestamp": self.frames / self.fps,
        }

    def close(self) -> None:
        if self.container is not None:
            self.container.mux(self.stream.encode(None))
            self.container.close()
            self.container = None

    def info(self) -> dict[str, Any]:
        """The feature's ``info`` entry, probed from the first file as LeRobot does."""
        with self.av.open(str(self.first_path)) as c:
            s = c.streams.video[0]
            return {
                "video.height": s.height,
                "video.width": s.width,
                "video.codec": s.codec_context.codec.canonical_name,
                "video.pix_fmt": s.pix_fmt,
                "video.is_depth_map": False,
                "video.fps": int(self.fps),
                "video.channels": 3,
                "has_audio": False,
            }


def _arrow_type(pa: Any, dtype: np.dtype, shape: tuple[int, ...]) -> Any:
    """HF datasets' storage: Value for shape (1,), fixed-size list for (D,), nested lists
    (Array2D..5D) otherwise."""
    t = pa.from_numpy_dtype(dtype)
    if shape == (1,):
        return t
    if len(shape) == 1:
        return pa.list_(t, shape[0])
    for _ in shape:
        t = pa.list_(t)
    return t


def _arrow_column(pa: Any, values: np.ndarray, shape: tuple[int, ...], typ: Any) -> Any:
    """(n, *shape) values as the column type of `_arrow_type`."""
    n = len(values)
    if shape == (1,):
        return pa.array(values.reshape(n), type=typ)
    arr = pa.array(np.ascontiguousarray(values).reshape(-1))
    if len(shape) == 1:
        return pa.FixedSizeListArray.from_arrays(arr, shape[0])
    for axis in reversed(range(len(shape))):  # innermost lists first
        count = n * int(np.prod(shape[:axis], dtype=np.int64))  # lists at this depth
        offsets = np.arange(count + 1, dtype=np.int32) * shape[axis]
        arr = pa.ListArray.from_arrays(pa.array(offsets), arr)
    return arr


def _tasks_table(pa: Any, tasks: list[str]) -> Any:
    """meta/tasks.parquet as pandas writes a frame indexed by "task" (LeRobot reads it with
    pandas and looks tasks up by that index)."""
    table = pa.table(
        {
            "task_index": pa.array(range(len(tasks)), pa.int64()),
            "task": pa.array(tasks, pa.string()),
        }
    )
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def _episodes_in_blocks(
    rb: ReplayBuffer, block_bytes: int = 64 << 20
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(i, episode i) for every episode, read as runs of whole episodes of about block_bytes
    (at least one episode): one read per key and run instead of one per key and episode."""
    step_bytes = sum(rb.zarr_array(k).nbytes // max(rb.n_steps, 1) for k in rb.keys)
    starts, ends = rb.episode_starts, rb.episode_ends
    first = 0
    while first < rb.n_episodes:
        last = first + 1  # episodes first..last-1 make up this block
        while last < rb.n_episodes and (ends[last] - starts[first]) * step_bytes <= block_bytes:
            last += 1
        lo, hi = int(starts[first]), int(ends[last - 1])
        block = {k: np.asarray(rb[k][lo:hi]) for k in rb.keys}
        for i in range(first, last):
            a, b = int(starts[i]) - lo, int(ends[i]) - lo
            yield i, {k: v[a:b] for k, v in block.items()}
        first = last


def _export_fps(attrs: Mapping[str, Any], fps: float | None, src: Any) -> int:
    if fps is None:  # an imported LeRobot dataset's rate, else the recorded task's
        fps = attrs.get("lerobot", {}).get("fps") or attrs.get("env", {}).get("control_hz")
        if fps is None:
            raise ValueError(f"{src}: records no frame rate; pass --fps")
    if fps <= 0 or float(fps) != int(fps):
        raise ValueError(f"fps={fps}: LeRobotDataset needs a positive integer frame rate")
    return int(fps)


def export_lerobot(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    fps: int | None = None,
    task: str | None = None,
    robot_type: str | None = None,
    codec: str = "libsvtav1",
    crf: int = 30,
    gop: int = 2,
    overwrite: bool = False,
    on_episode: EpisodeCallback | None = None,
    data_file_mb: int = DATA_FILE_MB,
    video_file_mb: int = VIDEO_FILE_MB,
) -> dict[str, Any]:
    """Write the zarr dataset ``src`` as a LeRobotDataset v3.0 folder ``out`` (see the module
    docstring), episode by episode, under a temporary name renamed when complete.

    fps: frames per second (default: what the dataset records, an imported LeRobot dataset's
    or its task's control rate). task: the task string of every episode (default: an imported
    dataset's own per-episode tasks, else the recorded task name, else "demonstration").
    """
    pa, pq, av = _modules()
    rb = ReplayBuffer.open(src)
    if rb.n_episodes == 0:
        raise ValueError(f"{src}: holds no episodes")
    attrs = dict(rb.attrs)
    fps = _export_fps(attrs, fps, src)
    imported = attrs.get("lerobot", {})
    recorded_names = imported.get("features", {})
    if task is not None:
        tasks, ep_task = [task], np.zeros(rb.n_episodes, np.int64)
    elif imported.get("tasks") and "task_index" in rb.meta_keys:
        tasks, ep_task = list(imported["tasks"]), rb.get_meta("task_index").astype(np.int64)
        if (ep_task < 0).any():
            tasks.append("")
            ep_task = np.where(ep_task < 0, len(tasks) - 1, ep_task)
    else:
        tasks, ep_task = (
            [str(attrs.get("task", "demonstration"))],
            np.zeros(rb.n_episodes, np.int64),
        )
    robot_type = robot_type or imported.get("robot_type")

    names: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    features: dict[str, dict[str, Any]] = {}
    video_keys = []
    for key in rb.keys:
        arr = rb.zarr_array(key)
        is_video = arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[-1] == 3
        default = (
            "action" if key == "action" else f"observation.{'images.' if is_video else ''}{key}"
        )
        names[key] = name = recorded_names.get(key, default)
        if is_video:
            if arr.shape[1] % 2 or arr.shape[2] % 2:
                raise ValueError(
                    f"{src}: data/{key}: frames of {arr.shape[1]} x {arr.shape[2]} "
                    "px; yuv420p video needs an even height and width"
                )
            video_keys.append(key)
            shapes[key] = tuple(arr.shape[1:])
            features[name] = {
                "dtype": "video",
                "shape": list(shapes[key]),
                "names": ["height", "width", "channels"],
                "info": {},
            }
        else:
            shapes[key] = tuple(arr.shape[1:]) or (1,)
            features[name] = {"dtype": str(arr.dtype), "shape": list(shapes[key]), "names": None}
    features.update({k: dict(v) for k, v in DEFAULT_FEATURES.items()})
    types = {
        k: _arrow_type(pa, rb.zarr_array(k).dtype, shapes[k])
        for k in rb.keys
        if k not in video_keys
    }
    options = {"g": str(gop), "crf": str(crf)}
    if codec == "libsvtav1":
        options["preset"] = "12"  # LeRobot's default for this encoder

    out = Path(out)
    with staged_output(out, overwrite) as tmp:
        (tmp / "meta").mkdir(parents=True)
        writers = {
            k: _VideoWriter(tmp, names[k], fps, codec, options, video_file_mb, av)
            for k in video_keys
        }
        stats: dict[str, _Stats] = {}
        pq_writer, path, chunk, file, rows = None, None, 0, -1, []
        # one encoder thread per camera: PyAV encodes without holding the GIL, and the
        # statistics below are computed meanwhile
        pool = ThreadPoolExecutor(max_workers=max(1, len(video_keys)))
        try:
            for i, ep in _episodes_in_blocks(rb):
                encoded = {k: pool.submit(writers[k].add_episode, ep[k]) for k in video_keys}
                n = len(ep[rb.keys[0]])
                start = int(rb.episode_starts[i])
                frame_index = np.arange(n, dtype=np.int64)
                defaults = {
                    "timestamp": (frame_index / fps).astype(np.float32),
                    "frame_index": frame_index,
                    "episode_index": np.full(n, i, np.int64),
                    "index": np.arange(start, start + n, dtype=np.int64),
                    "task_index": np.full(n, ep_task[i], np.int64),
                }
                cols = {
                    names[k]: _arrow_column(pa, ep[k], shapes[k], types[k])
                    for k in rb.keys
                    if k not in video_keys
                }
                cols.update({k: pa.array(v) for k, v in defaults.items()})
                table = pa.table(cols)
                if pq_writer is None or path.stat().st_size >= data_file_mb * 2**20:
                    if pq_writer is not None:
                        pq_writer.close()
                    chunk, file = (chunk + 1, 0) if file + 1 == CHUNKS_SIZE else (chunk, file + 1)
                    path = tmp / DATA_PATH.format(chunk_index=chunk, file_index=file)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    pq_writer = pq.ParquetWriter(str(path), table.schema, compression="snappy")
                pq_writer.write_table(table)  # one row group per episode
                row: dict[str, Any] = {
                    "episode_index": i,
                    "tasks": [tasks[ep_task[i]]],
                    "length": n,
                    "data/chunk_index": chunk,
                    "data/file_index": file,
                    "dataset_from_index": start,
                    "dataset_to_index": start + n,
                }
                values = {names[k]: (ep[k], shapes[k], k in video_keys) for k in rb.keys}
                values.update({k: (v, (1,), False) for k, v in defaults.items()})
                for feat, (v, shape, image) in values.items():
                    s = _Stats(v, image)
                    for stat, value in s.result(shape).items():
                        row[f"stats/{feat}/{stat}"] = value
                    if feat in stats:
                        stats[feat].merge(s)
                    else:
                        stats[feat] = s
                for k in video_keys:
                    row.update(encoded[k].result())  # raises the encoder's error
                row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = 0, 0
                rows.append(row)
                if on_episode is not None:
                    on_episode(i, n)
        finally:
            pool.shutdown()
            if pq_writer is not None:
                pq_writer.close()
            for w in writers.values():
                w.close()
        for k in video_keys:
            features[names[k]]["info"] = writers[k].info()
        ep_path = tmp / EPISODES_PATH.format(chunk_index=0, file_index=0)
        ep_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), str(ep_path))
        pq.write_table(_tasks_table(pa, tasks), str(tmp / "meta" / "tasks.parquet"))
        all_stats = {f: s.result(features[f]["shape"]) for f, s in stats.items()}
        (tmp / "meta" / "stats.json").write_text(json.dumps(all_stats, indent=4))
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": robot_type,
            "total_episodes": rb.n_episodes,
            "total_frames": rb.n_steps,
            "total_tasks": len(tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": data_file_mb,
            "video_files_size_in_mb": video_file_mb,
            "fps": fps,
            "splits": {"train": f"0:{rb.n_episodes}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if video_keys else None,
            "features": features,
        }
        (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    return {
        "out": str(out),
        "episodes": rb.n_episodes,
        "frames": rb.n_steps,
        "fps": fps,
        "features": [names[k] for k in rb.keys],
        "videos": [names[k] for k in video_keys],
    }


__all__ = [
    "CODEBASE_VERSION",
    "EpisodeRef",
    "LeRobotSource",
    "default_key",
    "export_lerobot",
    "import_lerobot",
]
