"""LeRobotDataset import and export (data/lerobot.py, dp-dataset import/export lerobot).

Datasets are written here from LeRobot's v3.0 specification with pyarrow and PyAV alone (info.json
features and path templates, meta/episodes parquet with data and video addressing, data parquet
shared by episodes, one mp4 per camera shared by episodes and addressed by from_timestamp), and
one in the v2.1 layout; the import is checked value for value, camera frames within the video
codec's error. Bad input is refused naming file, episode and key, leaving nothing at the
destination. Export then import returns the same arrays: low-dim keys exactly, camera frames
within the codec tolerance stated below. Where the `lerobot` package is installed, its own
loader reads our export (the real library as the oracle); it is skipped otherwise.
"""

import json
import shutil

import numpy as np
import pytest

from dplite.data.interop import InteropError
from dplite.data.lerobot import (
    _episodes_in_blocks,
    _VideoCursor,
    default_key,
    export_lerobot,
    import_lerobot,
)
from dplite.data.replay_buffer import ReplayBuffer
from dplite.envs.collect import dataset_attrs
from dplite.envs.tasks import get_task
from dplite.scripts import dataset as dataset_script

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
av = pytest.importorskip("av")

FPS = 10
H, W = 24, 32
# Codec tolerance (video is lossy; yuv420p halves the colour resolution): the mean absolute
# error of each decoded frame stays below 4 grey levels of 255 on these smooth synthetic frames.
# Measured: 2.2-2.5 at 84 px for the default export (libsvtav1, crf 30), up to 3.1 on the
# 24 x 32 frames here, where the moving square's edges weigh more; single pixels on a sharp
# edge can differ by far more.
MAE_TOLERANCE = 4.0


def frame(ep: int, t: int, h: int = H, w: int = W, cam: int = 0) -> np.ndarray:
    """A smooth frame whose colour names its episode and step, plus a square moving with t."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = 30 + 50 * ep + cam * 20
    img[..., 1] = 20 + 9 * t
    img[..., 2] = (60 + 2 * xx + yy) % 256
    y0 = (3 * t) % (h - 8)
    img[y0 : y0 + 8, 4:12] = 240
    return img


def encode(path, frames, codec="libsvtav1", fps=FPS):
    """Frames (N, H, W, 3) as an mp4 stream with pts 0..N-1 at `fps`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"g": "2", "crf": "20", "preset": "12"} if codec == "libsvtav1" else {"crf": "18"}
    with av.open(str(path), "w") as c:
        stream = c.add_stream(codec, rate=fps, options=options)
        stream.pix_fmt, stream.width, stream.height = "yuv420p", frames.shape[2], frames.shape[1]
        for i, img in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts = i
            c.mux(stream.encode(vf))
        c.mux(stream.encode(None))


def make_episodes(lengths=(6, 4, 5), seed=0):
    rng = np.random.default_rng(seed)
    eps = []
    for e, n in enumerate(lengths):
        eps.append({
            "observation.state": rng.normal(size=(n, 2)).astype(np.float32),
            "action": rng.normal(size=(n, 2)).astype(np.float32),
            "observation.environment_state": rng.normal(size=(n, 3, 2)).astype(np.float32),
            "next.reward": rng.random(n).astype(np.float32),
            "next.done": np.arange(n) == n - 1,
            "observation.images.cam": np.stack([frame(e, t) for t in range(n)]),
        })  # fmt: skip
    return eps


FEATURES = {
    "observation.state": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
    "action": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
    "observation.environment_state": {"dtype": "float32", "shape": [3, 2], "names": None},
    "next.reward": {"dtype": "float32", "shape": [1], "names": None},
    "next.done": {"dtype": "bool", "shape": [1], "names": None},
    "observation.images.cam": {"dtype": "video", "shape": [H, W, 3],
                               "names": ["height", "width", "channels"]},
    "language_instruction": {"dtype": "string", "shape": [1], "names": None},
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}  # fmt: skip
TASKS = ["push the T", "reach"]
EP_TASK = [0, 1, 0]


def _table(ep_index, ep, start, task):
    """One episode's rows as LeRobot stores them: fixed-size list (HF Sequence), a plain list
    (the other Sequence storage), nested lists (HF Array2D), scalars (shape [1])."""
    n = len(ep["action"])
    f32 = pa.float32()
    return pa.table({
        "observation.state": pa.FixedSizeListArray.from_arrays(
            pa.array(ep["observation.state"].reshape(-1)), 2),
        "action": pa.array(ep["action"].tolist(), pa.list_(f32)),
        "observation.environment_state": pa.array(
            ep["observation.environment_state"].tolist(), pa.list_(pa.list_(f32))),
        "next.reward": pa.array(ep["next.reward"], f32),
        "next.done": pa.array(ep["next.done"]),
        "language_instruction": pa.array(["go"] * n),
        "timestamp": pa.array((np.arange(n) / FPS).astype(np.float32)),
        "frame_index": pa.array(np.arange(n, dtype=np.int64)),
        "episode_index": pa.array(np.full(n, ep_index, np.int64)),
        "index": pa.array(np.arange(start, start + n, dtype=np.int64)),
        "task_index": pa.array(np.full(n, task, np.int64)),
    })  # fmt: skip


def write_v3(root, eps):
    """A v3.0 dataset: data file-000 holds episodes 0 and 1 (a row group each), file-001
    episode 2; camera file-000 holds episode 1 *then* episode 0, file-001 episode 2."""
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    starts = np.concatenate([[0], np.cumsum([len(e["action"]) for e in eps])])
    data_file = [0, 0, 1]
    for f in (0, 1):
        path = root / f"data/chunk-000/file-{f:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        tables = [
            _table(i, e, starts[i], EP_TASK[i]) for i, e in enumerate(eps) if data_file[i] == f
        ]
        with pq.ParquetWriter(str(path), tables[0].schema) as w:
            for t in tables:
                w.write_table(t)
    cam = "observation.images.cam"
    video_file, video_order = [0, 0, 1], {0: [1, 0], 1: [2]}
    from_ts = {}
    for f, order in video_order.items():
        frames = np.concatenate([eps[i][cam] for i in order])
        encode(root / f"videos/{cam}/chunk-000/file-{f:03d}.mp4", frames)
        offset = 0
        for i in order:
            from_ts[i] = offset / FPS
            offset += len(eps[i]["action"])
    rows = []
    for i, e in enumerate(eps):
        n = len(e["action"])
        rows.append({
            "episode_index": i, "tasks": [TASKS[EP_TASK[i]]], "length": n,
            "data/chunk_index": 0, "data/file_index": data_file[i],
            "dataset_from_index": int(starts[i]), "dataset_to_index": int(starts[i + 1]),
            f"videos/{cam}/chunk_index": 0, f"videos/{cam}/file_index": video_file[i],
            f"videos/{cam}/from_timestamp": from_ts[i],
            f"videos/{cam}/to_timestamp": from_ts[i] + n / FPS,
            "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
        })  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), root / "meta/episodes/chunk-000/file-000.parquet")
    tasks = pa.table({"task_index": pa.array([0, 1], pa.int64()), "task": TASKS})
    pq.write_table(tasks, root / "meta" / "tasks.parquet")
    info = {
        "codebase_version": "v3.0", "robot_type": "pusher", "total_episodes": len(eps),
        "total_frames": int(starts[-1]), "total_tasks": 2, "chunks_size": 1000,
        "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "fps": FPS,
        "splits": {"train": f"0:{len(eps)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": FEATURES,
    }  # fmt: skip
    (root / "meta" / "info.json").write_text(json.dumps(info))
    return root


def write_v21(root, eps):
    """The v2.1 layout: one parquet and one mp4 per episode, episodes.jsonl, tasks.jsonl."""
    starts = np.concatenate([[0], np.cumsum([len(e["action"]) for e in eps])])
    (root / "meta").mkdir(parents=True)
    cam = "observation.images.cam"
    lines = []
    for i, e in enumerate(eps):
        path = root / f"data/chunk-000/episode_{i:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_table(i, e, starts[i], EP_TASK[i]), path)
        encode(root / f"videos/chunk-000/{cam}/episode_{i:06d}.mp4", e[cam], codec="libx264")
        lines.append(json.dumps({"episode_index": i, "tasks": [TASKS[EP_TASK[i]]],
                                 "length": len(e["action"])}))  # fmt: skip
    (root / "meta" / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    (root / "meta" / "tasks.jsonl").write_text(
        "\n".join(json.dumps({"task_index": i, "task": t}) for i, t in enumerate(TASKS)) + "\n"
    )
    info = {
        "codebase_version": "v2.1", "fps": FPS, "chunks_size": 1000, "features": FEATURES,
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
    }  # fmt: skip
    (root / "meta" / "info.json").write_text(json.dumps(info))
    return root


def _check_import(out, eps, version):
    rb = ReplayBuffer.open(out)
    lengths = [len(e["action"]) for e in eps]
    np.testing.assert_array_equal(rb.episode_ends, np.cumsum(lengths))
    assert sorted(rb.keys) == ["action", "cam", "environment_state", "next_done", "next_reward",
                               "state"]  # the string feature is skipped  # fmt: skip
    np.testing.assert_array_equal(rb.get_meta("episode_index"), [0, 1, 2])
    np.testing.assert_array_equal(rb.get_meta("task_index"), EP_TASK)
    for i, e in enumerate(eps):
        got = rb.get_episode(i)
        for name in ("observation.state", "action", "observation.environment_state"):
            np.testing.assert_array_equal(got[default_key(name)], e[name])
        np.testing.assert_array_equal(got["next_reward"], e["next.reward"][:, None])  # shape [1]
        assert got["next_done"].dtype == np.bool_
        np.testing.assert_array_equal(got["next_done"][:, 0], e["next.done"])
        cam = got["cam"]
        assert cam.dtype == np.uint8 and cam.shape == (len(e["action"]), H, W, 3)
        err = np.abs(cam.astype(int) - e["observation.images.cam"].astype(int))
        assert err.mean(axis=(1, 2, 3)).max() < MAE_TOLERANCE
        # each frame is the one at its own timestamp: away from the moving square, its red
        # level names the episode and its green level the step (levels 50 and 9 apart, so
        # within 3 is that frame and no neighbour)
        plain = cam[:, :, 16:].astype(float)
        np.testing.assert_allclose(plain[..., 0].mean(axis=(1, 2)), 30 + 50 * i, atol=3)
        np.testing.assert_allclose(plain[..., 1].mean(axis=(1, 2)), 20 + 9 * np.arange(len(cam)),
                                   atol=3)  # fmt: skip
    meta = dict(rb.attrs)["lerobot"]
    assert meta["codebase_version"] == version and meta["fps"] == FPS and meta["tasks"] == TASKS
    assert meta["features"]["cam"] == "observation.images.cam"
    assert meta["features"]["next_done"] == "next.done"


def test_v30_import_values_boundaries_frames_and_metadata(tmp_path):
    eps = make_episodes()
    src = write_v3(tmp_path / "lr", eps)
    summary = import_lerobot(src, tmp_path / "out.zarr")
    assert summary["episodes"] == 3 and summary["frames"] == 15
    _check_import(tmp_path / "out.zarr", eps, "v3.0")


@pytest.mark.parametrize("h, w", [(84, 84), (H, W)])
@pytest.mark.parametrize("threads", [True, False])
def test_decoded_frames_are_pyavs_default_conversion(tmp_path, h, w, threads):
    """The import's decoder (its own threads or one, swscale's fast-bilinear flag) hands out
    exactly the pixels of PyAV's default decode and RGB conversion, frame for frame."""
    frames = np.stack([frame(1, t, h, w) for t in range(12)])
    path = tmp_path / "v.mp4"
    encode(path, frames)
    with av.open(str(path)) as c:
        oracle = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    cursor = _VideoCursor(path, "cam", av, threads)
    try:
        got = cursor.read(np.arange(12) / FPS, tol=0.5 / FPS, episode="0")
    finally:
        cursor.close()
    np.testing.assert_array_equal(got, oracle)


def test_v21_import(tmp_path):
    eps = make_episodes(seed=1)
    src = write_v21(tmp_path / "lr21", eps)
    import_lerobot(src, tmp_path / "out.zarr")
    _check_import(tmp_path / "out.zarr", eps, "v2.1")


def test_features_and_rename_options(tmp_path):
    src = write_v3(tmp_path / "lr", make_episodes())
    out = tmp_path / "o.zarr"
    import_lerobot(src, out, features=["observation.state", "action"],
                   rename={"observation.state": "agent_pos"})  # fmt: skip
    rb = ReplayBuffer.open(out)
    assert sorted(rb.keys) == ["action", "agent_pos"]
    with pytest.raises(ValueError, match="both become key 'action'"):
        import_lerobot(src, tmp_path / "p.zarr", rename={"observation.state": "action"})
    assert not (tmp_path / "p.zarr").exists()


def _rewrite(path, change):
    table = pq.read_table(path)
    pq.write_table(change(table), path)


def _set_column(table, name, values):
    i = table.column_names.index(name)
    return table.set_column(i, name, pa.array(values, table.schema.field(name).type))


def _swap_timestamps(root):
    def change(t):
        ts = t.column("timestamp").to_numpy().copy()
        rows = np.flatnonzero(t.column("episode_index").to_numpy() == 1)
        ts[rows[1]], ts[rows[2]] = ts[rows[2]], ts[rows[1]]
        return _set_column(t, "timestamp", ts)

    _rewrite(root / "data/chunk-000/file-000.parquet", change)


def _short_video(root):
    eps = make_episodes()
    frames = eps[2]["observation.images.cam"][:-2]
    encode(root / "videos/observation.images.cam/chunk-000/file-001.mp4", frames)


def _drop_column(root):
    _rewrite(root / "data/chunk-000/file-001.parquet", lambda t: t.drop_columns(["action"]))


def _no_video(root):
    (root / "videos/observation.images.cam/chunk-000/file-001.mp4").unlink()


def _wrong_length(root):
    def change(t):
        t = _set_column(t, "length", [7, 4, 5])
        return _set_column(t, "dataset_to_index", [7, 10, 15])

    _rewrite(root / "meta/episodes/chunk-000/file-000.parquet", change)


def _frame_index(root):
    def change(t):
        fi = t.column("frame_index").to_numpy().copy()
        fi[-1] = 9
        return _set_column(t, "frame_index", fi)

    _rewrite(root / "data/chunk-000/file-001.parquet", change)


def _ragged(root):
    def change(t):
        rows = t.column("action").to_pylist()
        rows[2] = [*rows[2], 0.0]
        return _set_column(t, "action", rows)

    _rewrite(root / "data/chunk-000/file-001.parquet", change)


def _version(root):
    info = json.loads((root / "meta/info.json").read_text())
    info["codebase_version"] = "v1.6"
    (root / "meta/info.json").write_text(json.dumps(info))


def _late_video(root):
    def change(t):  # episode 0's frames claimed 1 s later than they are in the file
        return _set_column(t, "videos/observation.images.cam/from_timestamp", [0.45, 0.0, 0.0])

    _rewrite(root / "meta/episodes/chunk-000/file-000.parquet", change)


def _nan(root):
    def change(t):
        reward = t.column("next.reward").to_numpy().copy()
        reward[1] = np.nan
        return _set_column(t, "next.reward", reward)

    _rewrite(root / "data/chunk-000/file-001.parquet", change)


BAD = [
    ("non-monotonic timestamps", _swap_timestamps,
     ("file-000.parquet", "episode 1", "timestamp", "not increasing")),
    ("video shorter than episode", _short_video,
     ("file-001.mp4", "episode 2", "observation.images.cam", "shorter than its episode")),
    ("missing column", _drop_column, ("file-001.parquet", "episode 2", "action", "missing column")),
    ("missing video", _no_video, ("file-001.mp4", "observation.images.cam", "missing")),
    ("length disagrees", _wrong_length, ("file-000.parquet", "episode 0", "length 7")),
    ("frame_index", _frame_index, ("file-001.parquet", "episode 2", "frame_index")),
    ("ragged rows", _ragged, ("file-001.parquet", "episode 2", "action", "ragged")),
    ("unknown version", _version, ("info.json", "codebase_version", "v1.6")),
    ("frame off its timestamp", _late_video, ("file-000.mp4", "episode 0", "no frame within")),
    ("NaN", _nan, ("file-001.parquet", "episode 2", "next.reward", "NaN or inf at frame 1")),
]  # fmt: skip


@pytest.mark.parametrize("name, spoil, words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_naming_file_episode_and_key(tmp_path, name, spoil, words):
    src = write_v3(tmp_path / "lr", make_episodes())
    spoil(src)
    out = tmp_path / "out.zarr"
    with pytest.raises(InteropError) as err:
        import_lerobot(src, out)
    message = str(err.value)
    assert all(w in message for w in words), message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr"]  # nothing at, or beside, out


# ------------------------------------------------------------------------------ export
def make_zarr(path, lengths=(7, 5, 9), size=84, attrs=None, seed=0):
    """A dplite dataset with two 84 px cameras and low-dim keys of several shapes."""
    rng = np.random.default_rng(seed)
    rb = ReplayBuffer.create(path)
    if attrs:
        rb.attrs.update(attrs)
    for e, n in enumerate(lengths):
        rb.add_episode({
            "action": rng.normal(size=(n, 2)).astype(np.float32),
            "agent_pos": rng.normal(size=(n, 2)).astype(np.float32),
            "keypoint": rng.normal(size=(n, 9, 2)).astype(np.float32),
            "front_img": np.stack([frame(e, t, size, size, cam=0) for t in range(n)]),
            "wrist_img": np.stack([frame(e, t, size, size, cam=1) for t in range(n)]),
        }, episode_meta={"seed": 100 + e})  # fmt: skip
    return rb


@pytest.mark.parametrize("block_bytes", [1, 600_000, 10**9])
def test_export_reads_episodes_in_blocks_that_equal_each_episode(tmp_path, block_bytes):
    """One episode per block, blocks of a few episodes that end mid-dataset, one block."""
    rb = make_zarr(tmp_path / "d.zarr", lengths=(7, 5, 9, 3, 6))
    got = list(_episodes_in_blocks(rb, block_bytes))
    assert [i for i, _ in got] == list(range(5))
    for i, ep in got:
        want = rb.get_episode(i)
        assert sorted(ep) == sorted(want)
        for k in want:
            np.testing.assert_array_equal(ep[k], want[k])


def test_export_then_import_returns_the_same_arrays(tmp_path):
    rb = make_zarr(tmp_path / "d.zarr")
    lr = tmp_path / "lr"
    summary = export_lerobot(tmp_path / "d.zarr", lr, fps=FPS, task="push the T")
    assert summary["videos"] == ["observation.images.front_img", "observation.images.wrist_img"]
    import_lerobot(lr, tmp_path / "back.zarr")
    back = ReplayBuffer.open(tmp_path / "back.zarr")
    np.testing.assert_array_equal(back.episode_ends, rb.episode_ends)
    assert sorted(back.keys) == sorted(rb.keys)
    for key in ("action", "agent_pos", "keypoint"):
        np.testing.assert_array_equal(back[key][:], rb[key][:])  # exact
        assert back[key].dtype == rb[key].dtype
    for key in ("front_img", "wrist_img"):
        err = np.abs(back[key][:].astype(int) - rb[key][:].astype(int))
        assert err.mean(axis=(1, 2, 3)).max() < MAE_TOLERANCE, err.mean()


def test_export_layout_metadata_and_statistics(tmp_path):
    rb = make_zarr(tmp_path / "d.zarr", lengths=(4, 6))
    lr = tmp_path / "lr"
    export_lerobot(tmp_path / "d.zarr", lr, fps=FPS, task="push the T", robot_type="pusher")
    info = json.loads((lr / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS
    assert info["total_episodes"] == 2 and info["total_frames"] == 10 and info["total_tasks"] == 1
    assert info["robot_type"] == "pusher" and info["splits"] == {"train": "0:2"}
    feats = info["features"]
    assert feats["action"] == {"dtype": "float32", "shape": [2], "names": None}
    assert feats["observation.keypoint"]["shape"] == [9, 2]
    cam = feats["observation.images.front_img"]
    assert cam["dtype"] == "video" and cam["shape"] == [84, 84, 3]
    assert cam["names"] == ["height", "width", "channels"]
    assert cam["info"]["video.codec"] == "av1" and cam["info"]["video.pix_fmt"] == "yuv420p"
    assert all(k in feats for k in ("timestamp", "frame_index", "episode_index", "index",
                                    "task_index"))  # fmt: skip
    # data: one parquet file, one row group per episode, the default columns
    data = pq.ParquetFile(lr / "data/chunk-000/file-000.parquet")
    assert data.metadata.num_row_groups == 2
    table = data.read()
    np.testing.assert_array_equal(table.column("index").to_numpy(), np.arange(10))
    np.testing.assert_array_equal(table.column("frame_index").to_numpy(), [0, 1, 2, 3, *range(6)])
    np.testing.assert_allclose(table.column("timestamp").to_numpy()[4:], np.arange(6) / FPS)
    # episodes: addressing of data rows and of each camera's stream
    eps = pq.read_table(lr / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["length"] for e in eps] == [4, 6] and [e["tasks"] for e in eps] == [
        ["push the T"]
    ] * 2
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in eps] == [(0, 4), (4, 10)]
    key = "videos/observation.images.wrist_img"
    assert [(e[f"{key}/from_timestamp"], e[f"{key}/to_timestamp"]) for e in eps] == [
        (0.0, 0.4), (0.4, 1.0)]  # fmt: skip
    with av.open(str(lr / "videos/observation.images.wrist_img/chunk-000/file-000.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 10
    # tasks: the task string is the pandas index "task", as LeRobot reads it
    tasks = pq.read_table(lr / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == ["push the T"]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    # statistics against numpy over the stored arrays
    stats = json.loads((lr / "meta/stats.json").read_text())
    action = rb["action"][:].astype(np.float64)
    np.testing.assert_allclose(stats["action"]["mean"], action.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["std"], action.std(0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["min"], action.min(0))
    assert stats["action"]["count"] == [10]
    img = rb["front_img"][:].astype(np.float64) / 255
    got = np.asarray(stats["observation.images.front_img"]["mean"])
    assert got.shape == (3, 1, 1)
    np.testing.assert_allclose(got[:, 0, 0], img.mean(axis=(0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(np.asarray(stats["observation.images.front_img"]["std"])[:, 0, 0],
                               img.std(axis=(0, 1, 2)), rtol=1e-6)  # fmt: skip
    first = eps[0]
    np.testing.assert_allclose(first["stats/action/max"], action[:4].max(0))


def test_export_frame_rate_and_task_default_to_the_recorded_task(tmp_path):
    spec = get_task("pusht")
    make_zarr(tmp_path / "d.zarr", lengths=(3,), size=16,
              attrs=dataset_attrs(spec, spec.expert, True, 0.0, 0))  # fmt: skip
    dataset_script.cli(["export", "lerobot", str(tmp_path / "d.zarr"), "--out",
                        str(tmp_path / "lr"), "--no-progress"])  # fmt: skip
    info = json.loads((tmp_path / "lr/meta/info.json").read_text())
    assert info["fps"] == 10  # the task's control rate
    assert pq.read_table(tmp_path / "lr/meta/tasks.parquet").column("task").to_pylist() == ["pusht"]
    make_zarr(tmp_path / "bare.zarr", lengths=(3,), size=16)
    with pytest.raises(ValueError, match="records no frame rate; pass --fps"):
        export_lerobot(tmp_path / "bare.zarr", tmp_path / "lr2")
    assert not (tmp_path / "lr2").exists()


def test_odd_frame_sizes_are_refused_before_writing(tmp_path):
    make_zarr(tmp_path / "d.zarr", lengths=(2,), size=15)
    with pytest.raises(ValueError, match="front_img: frames of 15 x 15 px; yuv420p video needs"):
        export_lerobot(tmp_path / "d.zarr", tmp_path / "lr", fps=FPS)
    assert not (tmp_path / "lr").exists()


def test_failed_export_leaves_nothing(tmp_path):
    make_zarr(tmp_path / "d.zarr", lengths=(3, 3), size=16)
    with pytest.raises(Exception, match="nosuchcodec"):
        export_lerobot(tmp_path / "d.zarr", tmp_path / "lr", fps=FPS, codec="nosuchcodec")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr"]


def test_imported_lerobot_tasks_and_names_survive_a_round_trip(tmp_path):
    eps = make_episodes()
    src = write_v3(tmp_path / "lr", eps)
    import_lerobot(src, tmp_path / "a.zarr")
    export_lerobot(tmp_path / "a.zarr", tmp_path / "lr2")  # fps from the import
    info = json.loads((tmp_path / "lr2/meta/info.json").read_text())
    assert info["fps"] == FPS
    assert set(info["features"]) >= {"observation.state", "next.done", "observation.images.cam"}
    eps2 = pq.read_table(tmp_path / "lr2/meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["tasks"] for e in eps2] == [[TASKS[t]] for t in EP_TASK]
    import_lerobot(tmp_path / "lr2", tmp_path / "b.zarr")
    a, b = ReplayBuffer.open(tmp_path / "a.zarr"), ReplayBuffer.open(tmp_path / "b.zarr")
    for key in ("state", "action", "environment_state", "next_reward", "next_done"):
        np.testing.assert_array_equal(a[key][:], b[key][:])


def test_cli_import_records_the_task_for_training(tmp_path):
    src = write_v3(tmp_path / "lr", make_episodes())
    out = tmp_path / "o.zarr"
    dataset_script.cli(["import", "lerobot", str(src), "--out", str(out), "--task", "pusht",
                        "--rename", "observation.state=agent_pos", "--no-progress"])  # fmt: skip
    rb = ReplayBuffer.open(out)
    assert "agent_pos" in rb.keys and dict(rb.attrs)["task"] == "pusht"
    assert dict(rb.attrs)["env"]["env_id"] == "PushT-v0"
    with pytest.raises(SystemExit) as exit_:
        dataset_script.cli(["import", "lerobot", str(src), "--out", str(out), "--no-progress"])
    assert exit_.value.code == 2  # exists


def test_lerobot_loader_reads_our_export(tmp_path):
    """The real library as the oracle, where it is installed beside the project."""
    lerobot_dataset = pytest.importorskip("lerobot.datasets.lerobot_dataset")
    rb = make_zarr(tmp_path / "d.zarr", lengths=(5, 4), size=32)
    lr = tmp_path / "lr"
    export_lerobot(tmp_path / "d.zarr", lr, fps=FPS, task="push the T")
    ds = lerobot_dataset.LeRobotDataset("local/export", root=lr)
    assert len(ds) == 9 and ds.meta.total_episodes == 2
    item = ds[6]  # episode 1, frame 1
    np.testing.assert_allclose(item["action"].numpy(), rb["action"][6])
    np.testing.assert_allclose(item["observation.keypoint"].numpy(), rb["keypoint"][6])
    assert item["task"] == "push the T" and int(item["episode_index"]) == 1
    img = item["observation.images.front_img"].numpy()  # (C, H, W) float in [0, 1]
    err = np.abs(img.transpose(1, 2, 0) * 255 - rb["front_img"][6].astype(float)).mean()
    assert err < MAE_TOLERANCE


def test_our_import_reads_a_dataset_lerobot_wrote(tmp_path):
    """The other direction: LeRobot's own writer (add_frame / save_episode / finalize, its
    default video encoding) makes the dataset, our import reads it."""
    lerobot_dataset = pytest.importorskip("lerobot.datasets.lerobot_dataset")
    features = {
        "observation.state": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
        "action": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
        "observation.images.cam": {"dtype": "video", "shape": (H, W, 3),
                                   "names": ["height", "width", "channels"]},
    }  # fmt: skip
    ds = lerobot_dataset.LeRobotDataset.create(
        "local/written", fps=FPS, features=features, root=tmp_path / "lr", use_videos=True
    )
    eps = make_episodes(lengths=(5, 3))
    for e, ep in enumerate(eps):
        for t in range(len(ep["action"])):
            ds.add_frame({
                "observation.state": ep["observation.state"][t], "action": ep["action"][t],
                "observation.images.cam": ep["observation.images.cam"][t],
                "task": TASKS[e],
            })  # fmt: skip
        ds.save_episode()
    ds.finalize()
    import_lerobot(tmp_path / "lr", tmp_path / "o.zarr")
    rb = ReplayBuffer.open(tmp_path / "o.zarr")
    np.testing.assert_array_equal(rb.episode_ends, [5, 8])
    for e, ep in enumerate(eps):
        got = rb.get_episode(e)
        np.testing.assert_array_equal(got["state"], ep["observation.state"])
        np.testing.assert_array_equal(got["action"], ep["action"])
        err = np.abs(got["cam"].astype(int) - ep["observation.images.cam"].astype(int))
        assert err.mean(axis=(1, 2, 3)).max() < MAE_TOLERANCE
    assert dict(rb.attrs)["lerobot"]["tasks"] == TASKS
    np.testing.assert_array_equal(rb.get_meta("task_index"), [0, 1])


def test_copy_keeps_source_untouched(tmp_path):
    """Import reads only: the source folder is byte-for-byte unchanged afterwards."""
    src = write_v3(tmp_path / "lr", make_episodes())
    before = {p.relative_to(src): p.read_bytes() for p in src.rglob("*") if p.is_file()}
    import_lerobot(src, tmp_path / "o.zarr")
    after = {p.relative_to(src): p.read_bytes() for p in src.rglob("*") if p.is_file()}
    assert before == after
    shutil.rmtree(tmp_path / "o.zarr")
