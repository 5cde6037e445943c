"""Tests for data/replay_buffer.py: round trips, crash safety, validation, read-only opens."""

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from dplite.data.replay_buffer import DatasetError, ReplayBuffer


def _episode(rng, length, img=False):
    ep = {
        "action": rng.normal(size=(length, 2)).astype(np.float32),
        "state": rng.normal(size=(length, 5)).astype(np.float32),
    }
    if img:
        ep["img"] = rng.integers(0, 255, size=(length, 8, 8, 3), dtype=np.uint8)
    return ep


def _fill(path, lengths, seed=0, img=False):
    rng = np.random.default_rng(seed)
    rb = ReplayBuffer.create(path)
    eps = []
    for i, length in enumerate(lengths):
        ep = _episode(rng, length, img)
        rb.add_episode(ep, {"seed": 100 + i, "expert_mode": 0.5 * i})
        eps.append(ep)
    return rb, eps


def _write_raw(path, data, ends, zarr_format=3, ends_dtype="int64"):
    """A store in the Diffusion Policy layout, written with plain zarr (no ReplayBuffer)."""
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    g = root.require_group("data")
    for k, v in data.items():
        g.create_array(k, shape=v.shape, dtype=v.dtype, chunks=(4, *v.shape[1:]))[:] = v
    if ends is not None:
        meta = root.require_group("meta")
        meta.create_array("episode_ends", shape=(len(ends),), dtype=ends_dtype)[:] = ends
    return path


def _tree_digest(path):
    """{relative file: sha256} of a directory tree (what a failed open must not change)."""
    out = {}
    for dirpath, _, files in os.walk(path):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(path))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_round_trip_episodes_meta_attrs(tmp_path):
    path = tmp_path / "d.zarr"
    rb, eps = _fill(path, [5, 7, 3], img=True)
    rb.attrs["task"] = "pusht"
    np.testing.assert_array_equal(rb.episode_ends, [5, 12, 15])
    rb = ReplayBuffer.open(path)
    assert rb.n_episodes == 3 and rb.n_steps == 15
    np.testing.assert_array_equal(rb.episode_lengths, [5, 7, 3])
    assert rb.keys == ["action", "img", "state"]
    assert rb.meta_keys == ["expert_mode", "seed"]
    np.testing.assert_array_equal(rb.get_meta("seed"), [100, 101, 102])
    np.testing.assert_array_equal(rb.get_meta("expert_mode"), [0.0, 0.5, 1.0])
    assert rb.attrs["task"] == "pusht"
    for i, ep in enumerate(eps):
        got = rb.get_episode(i)
        for k in ep:
            np.testing.assert_array_equal(got[k], ep[k])
    concat = np.concatenate([ep["state"] for ep in eps])
    np.testing.assert_array_equal(rb["state"][:], concat)
    mem = ReplayBuffer.open(path, keys=["state"], in_memory=True)
    assert mem.keys == ["state"] and isinstance(mem["state"], np.ndarray)
    np.testing.assert_array_equal(mem["state"], concat)
    # Chunks run along time: images a few frames, low-dim thousands of rows.
    assert rb.zarr_array("img").chunks[0] <= 8
    assert rb.zarr_array("state").chunks[0] >= 1000
    assert rb.zarr_format == 3


def test_add_episode_refuses_mismatches(tmp_path):
    rng = np.random.default_rng(0)
    rb, _ = _fill(tmp_path / "d.zarr", [4])
    with pytest.raises(ValueError, match="keys"):
        rb.add_episode({"action": np.zeros((3, 2), np.float32)}, {"seed": 1, "expert_mode": 0.0})
    bad = _episode(rng, 3)
    bad["state"] = np.zeros((3, 6), np.float32)
    with pytest.raises(ValueError, match="feature shape"):
        rb.add_episode(bad, {"seed": 1, "expert_mode": 0.0})
    bad = _episode(rng, 3)
    bad["state"] = bad["state"][:2]
    with pytest.raises(ValueError, match="length"):
        rb.add_episode(bad, {"seed": 1, "expert_mode": 0.0})
    bad = _episode(rng, 3)
    bad["action"][1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        rb.add_episode(bad, {"seed": 1, "expert_mode": 0.0})
    with pytest.raises(ValueError, match="episode_meta"):
        rb.add_episode(_episode(rng, 3), {"seed": 1})
    assert ReplayBuffer.open(tmp_path / "d.zarr").n_episodes == 1
    with pytest.raises(ValueError, match="mode"):
        ReplayBuffer.open(tmp_path / "d.zarr").add_episode(_episode(rng, 3))


def test_crash_during_add_episode_keeps_earlier_episodes(tmp_path, monkeypatch, caplog):
    path = tmp_path / "d.zarr"
    rb, eps = _fill(path, [5, 6])

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash after the data rows were written")

    with monkeypatch.context() as m:
        m.setattr(ReplayBuffer, "_write_meta", crash)
        with pytest.raises(RuntimeError, match="simulated"):
            rb.add_episode(_episode(np.random.default_rng(9), 4), {"seed": 7, "expert_mode": 1.0})
    # The rows landed (an uncommitted tail) but episode_ends did not move.
    assert zarr.open_group(str(path), mode="r")["data/state"].shape[0] == 15
    ro = ReplayBuffer.open(path, mode="r")
    assert ro.n_episodes == 2 and ro.n_steps == 11
    assert "interrupted append" in caplog.text
    for i, ep in enumerate(eps):
        np.testing.assert_array_equal(ro.get_episode(i)["action"], ep["action"])
    assert zarr.open_group(str(path), mode="r")["data/state"].shape[0] == 15  # "r" repairs nothing
    rw = ReplayBuffer.open(path, mode="a")
    assert zarr.open_group(str(path), mode="r")["data/state"].shape[0] == 11  # "a" truncates
    new = _episode(np.random.default_rng(1), 3)
    rw.add_episode(new, {"seed": 8, "expert_mode": 0.0})
    rb2 = ReplayBuffer.open(path)
    np.testing.assert_array_equal(rb2.episode_ends, [5, 11, 14])
    np.testing.assert_array_equal(rb2.get_episode(2)["state"], new["state"])
    np.testing.assert_array_equal(rb2.get_meta("seed"), [100, 101, 8])


def test_same_object_recovers_after_failed_append(tmp_path, monkeypatch):
    rb, eps = _fill(tmp_path / "d.zarr", [5])
    with monkeypatch.context() as m:
        m.setattr(ReplayBuffer, "_write_meta", lambda *a, **k: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            rb.add_episode(_episode(np.random.default_rng(9), 9), {"seed": 7, "expert_mode": 1.0})
    assert rb.n_episodes == 1
    new = _episode(np.random.default_rng(1), 2)
    rb.add_episode(new, {"seed": 8, "expert_mode": 0.0})
    again = ReplayBuffer.open(tmp_path / "d.zarr")
    np.testing.assert_array_equal(again.episode_ends, [5, 7])
    np.testing.assert_array_equal(again.get_episode(1)["action"], new["action"])


def test_episode_ends_grown_but_value_not_written_is_uncommitted(tmp_path):
    path = tmp_path / "d.zarr"
    _fill(path, [5, 6])
    # A crash between the shape write and the value write of episode_ends leaves a fill 0.
    zarr.open_group(str(path), mode="r+")["meta/episode_ends"].resize((3,))
    assert ReplayBuffer.open(path).n_episodes == 2
    ReplayBuffer.open(path, mode="a")
    assert zarr.open_group(str(path), mode="r")["meta/episode_ends"].shape == (3 - 1,)


def test_v2_store_round_trip_and_append(tmp_path):
    rng = np.random.default_rng(0)
    data = {"action": rng.normal(size=(9, 2)).astype(np.float32)}
    path = _write_raw(tmp_path / "v2.zarr", data, [4, 9], zarr_format=2)
    assert (path / ".zgroup").exists()
    rb = ReplayBuffer.open(path, mode="a")
    assert rb.zarr_format == 2 and rb.n_episodes == 2
    rb.add_episode({"action": np.ones((3, 2), np.float32)})
    rb = ReplayBuffer.open(path)
    np.testing.assert_array_equal(rb.episode_ends, [4, 9, 12])
    np.testing.assert_array_equal(rb["action"][:9], data["action"])
    assert not (path / "zarr.json").exists()  # still a v2 store


def test_zip_store_reads_like_directory(tmp_path):
    path = tmp_path / "d.zarr"
    _, eps = _fill(path, [4, 3], img=True)
    zpath = tmp_path / "d.zarr.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            z.write(f, f.relative_to(path).as_posix())
    rb = ReplayBuffer.open(zpath, in_memory=True)
    np.testing.assert_array_equal(rb.get_episode(1)["img"], eps[1]["img"])
    with pytest.raises(ValueError, match="read-only"):
        ReplayBuffer.open(zpath, mode="a")


def _good(rng):
    return {
        "action": rng.normal(size=(10, 2)).astype(np.float32),
        "state": rng.normal(size=(10, 5)).astype(np.float32),
    }


def _case_missing_data(p, rng):
    root = zarr.open_group(str(p), mode="w")
    root.require_group("meta").create_array("episode_ends", shape=(1,), dtype="int64")[:] = [10]


def _case_missing_ends(p, rng):
    _write_raw(p, _good(rng), None)


def _case_length_mismatch(p, rng):
    d = _good(rng)
    d["state"] = d["state"][:8]
    _write_raw(p, d, [5, 10])


def _case_nan(p, rng):
    d = _good(rng)
    d["state"][7, 1] = np.nan
    _write_raw(p, d, [5, 10])


def _case_inf(p, rng):
    d = _good(rng)
    d["action"][2, 0] = -np.inf
    _write_raw(p, d, [5, 10])


def _case_string_dtype(p, rng):
    d = _good(rng)
    d["label"] = np.array(["ab"] * 10)
    _write_raw(p, d, [5, 10], zarr_format=2)


def _case_ends_rank(p, rng):
    root = zarr.open_group(str(_write_raw(p, _good(rng), None)), mode="r+")
    root.require_group("meta").create_array("episode_ends", shape=(1, 2), dtype="int64")[:] = [
        [5, 10]
    ]


MALFORMED = [
    (_case_missing_data, "data/", "missing"),
    (_case_missing_ends, "meta/episode_ends", "missing"),
    (_case_length_mismatch, "data/state", "has 8 rows but meta/episode_ends ends at 10"),
    (lambda p, r: _write_raw(p, _good(r), [5, 3, 10]), "meta/episode_ends", "not increasing"),
    (lambda p, r: _write_raw(p, _good(r), [-2, 10]), "meta/episode_ends", "negative"),
    (lambda p, r: _write_raw(p, _good(r), [5, 5, 10]), "meta/episode_ends", "episode 1 is empty"),
    (lambda p, r: _write_raw(p, _good(r), [0, 10]), "meta/episode_ends", "episode 0 is empty"),
    (
        lambda p, r: _write_raw(p, _good(r), [5.0, 10.0], ends_dtype="float64"),
        "meta/episode_ends",
        "integer dtype",
    ),
    (_case_ends_rank, "meta/episode_ends", r"shape \(1, 2\), expected \(n_episodes,\)"),
    (_case_nan, "data/state", r"NaN \(first at row 7\)"),
    (_case_inf, "data/action", r"inf \(first at row 2\)"),
    (_case_string_dtype, "data/label", "non-numeric dtype"),
]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("make, key, problem", MALFORMED)
@pytest.mark.parametrize("mode", ["r", "a"])
def test_malformed_store_gives_specific_error_and_writes_nothing(
    tmp_path, make, key, problem, mode
):
    path = tmp_path / "bad.zarr"
    make(path, np.random.default_rng(0))
    before = _tree_digest(path)
    for in_memory in (False, True):
        with pytest.raises(DatasetError, match=problem) as info:
            ReplayBuffer.open(path, mode=mode, in_memory=in_memory)
        assert info.value.key == key
        assert str(path) in str(info.value)
    assert _tree_digest(path) == before


def test_requested_key_absent(tmp_path):
    path = _write_raw(tmp_path / "d.zarr", _good(np.random.default_rng(0)), [5, 10])
    with pytest.raises(DatasetError, match="requested key absent") as info:
        ReplayBuffer.open(path, keys=["state", "img"])
    assert info.value.key == "data/img"


def test_nan_in_committed_rows_fails_before_any_repair(tmp_path):
    # A tail to truncate plus a NaN: mode "a" must refuse without truncating anything.
    d = _good(np.random.default_rng(0))
    d["state"][3, 0] = np.nan
    path = _write_raw(tmp_path / "d.zarr", d, [4, 8])
    before = _tree_digest(path)
    with pytest.raises(DatasetError, match="NaN"):
        ReplayBuffer.open(path, mode="a")
    assert _tree_digest(path) == before
    assert zarr.open_group(str(path), mode="r")["data/state"].shape[0] == 10


def test_nan_scan_finds_late_rows_across_blocks(tmp_path, monkeypatch):
    import dplite.data.replay_buffer as rbmod

    monkeypatch.setattr(rbmod, "SCAN_BLOCK_BYTES", 64)  # force many small blocks
    d = {"state": np.zeros((200, 5), np.float32)}
    d["state"][187, 4] = np.inf
    path = _write_raw(tmp_path / "d.zarr", d, [100, 200])
    with pytest.raises(DatasetError, match="row 187"):
        ReplayBuffer.open(path)
