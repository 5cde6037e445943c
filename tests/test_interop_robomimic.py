"""robomimic hdf5 import (data/robomimic.py, dp-dataset import robomimic): files written here
from robomimic's documented layout (data/demo_<n>/{actions, obs/<key>}, data.attrs env_args and
total, mask/<filter>), checked value for value after import; bad input refused naming file,
episode and key with nothing left at the destination; and the end to end path: demonstrations
of PushT written as a robomimic file -> import -> 20 training steps -> evaluation."""

import json

import numpy as np
import pytest

from dplite.data.interop import InteropError
from dplite.data.replay_buffer import ReplayBuffer
from dplite.data.robomimic import import_robomimic
from dplite.scripts import collect, train
from dplite.scripts import dataset as dataset_script
from dplite.scripts import eval as eval_script

h5py = pytest.importorskip("h5py")

ENV_ARGS = {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}}


def make_demos(indices=(0, 2, 10, 11), seed=0, image=True):
    """{demo index: {"actions", "actions_abs", "obs/<key>"}} with float64 low-dim keys (as
    robomimic stores them) and uint8 HWC images; each row's first action entry is the demo
    index, so order and boundaries can be read back."""
    rng = np.random.default_rng(seed)
    demos = {}
    for n in indices:
        length = int(rng.integers(3, 9))
        actions = rng.normal(size=(length, 7))
        actions[:, 0] = n
        demo = {
            "actions": actions,
            "actions_abs": rng.normal(size=(length, 7)),
            "obs/robot0_eef_pos": rng.normal(size=(length, 3)),
            "obs/robot0_gripper_qpos": rng.normal(size=(length, 2)),
        }
        if image:
            demo["obs/agentview_image"] = rng.integers(0, 256, (length, 12, 10, 3), np.uint8)
        demos[n] = demo
    return demos


def write_robomimic(path, demos, env_args=ENV_ARGS, masks=None, num_samples=True):
    """A robomimic-layout file: data/demo_<n>/..., data.attrs total + env_args, mask/<name>."""
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        total = 0
        for n, demo in demos.items():
            group = data.create_group(f"demo_{n}")
            for rel, values in demo.items():
                group.create_dataset(rel, data=values)
            length = len(demo["actions"]) if "actions" in demo else 0
            group.create_dataset("rewards", data=np.zeros(length))
            group.create_dataset("dones", data=np.zeros(length, np.int64))
            if num_samples:
                group.attrs["num_samples"] = length
            total += length
        data.attrs["total"] = total
        if env_args is not None:
            data.attrs["env_args"] = json.dumps(env_args)
        for name, names in (masks or {}).items():
            f.create_dataset(f"mask/{name}", data=np.array([s.encode() for s in names]))
    return path


def test_demos_import_in_numeric_order_with_values_boundaries_and_metadata(tmp_path):
    demos = make_demos((0, 2, 10, 11))
    src = write_robomimic(tmp_path / "lift.hdf5", demos)
    summary = import_robomimic(src, tmp_path / "lift.zarr")
    rb = ReplayBuffer.open(tmp_path / "lift.zarr")
    order = [0, 2, 10, 11]  # lexicographic would be 0, 10, 11, 2
    lengths = [len(demos[n]["actions"]) for n in order]
    assert summary["episodes"] == 4 and summary["frames"] == sum(lengths)
    np.testing.assert_array_equal(rb.episode_ends, np.cumsum(lengths))
    np.testing.assert_array_equal(rb.get_meta("demo_index"), order)
    assert sorted(rb.keys) == ["action", "agentview_image", "robot0_eef_pos", "robot0_gripper_qpos"]
    for i, n in enumerate(order):
        ep = rb.get_episode(i)
        assert ep["action"].dtype == np.float32  # float64 is stored as float32
        np.testing.assert_array_equal(ep["action"], demos[n]["actions"].astype(np.float32))
        np.testing.assert_array_equal(
            ep["robot0_eef_pos"], demos[n]["obs/robot0_eef_pos"].astype(np.float32)
        )
        assert ep["agentview_image"].dtype == np.uint8  # images stay uint8 HWC
        np.testing.assert_array_equal(ep["agentview_image"], demos[n]["obs/agentview_image"])
    meta = dict(rb.attrs)["robomimic"]
    assert meta["env_args"] == ENV_ARGS and json.loads(meta["env_args_text"]) == ENV_ARGS
    assert meta["env_name"] == "Lift" and meta["env_type"] == "robosuite"  # read from "type"
    assert meta["action_key"] == "actions" and meta["filter_key"] is None and meta["demos"] == 4


def test_filter_key_selects_the_masked_demos_and_actions_abs_by_option(tmp_path):
    demos = make_demos((0, 2, 10, 11))
    masks = {"train": ["demo_0", "demo_11"], "valid": ["demo_10", "demo_2"]}
    src = write_robomimic(tmp_path / "lift.hdf5", demos, masks=masks)
    out = tmp_path / "valid.zarr"
    import_robomimic(src, out, filter_key="valid", action_key="actions_abs")
    rb = ReplayBuffer.open(out)
    np.testing.assert_array_equal(rb.get_meta("demo_index"), [2, 10])  # numeric, not mask order
    for i, n in enumerate([2, 10]):
        np.testing.assert_array_equal(
            rb.get_episode(i)["action"], demos[n]["actions_abs"].astype(np.float32)
        )
    assert dict(rb.attrs)["robomimic"]["filter_key"] == "valid"


def test_obs_keys_option_and_env_type_key_of_the_docs(tmp_path):
    demos = make_demos((3, 1), image=False)
    args = {"env_name": "PushT", "env_type": 2, "env_kwargs": {}}  # the docs' spelling
    src = write_robomimic(tmp_path / "a.hdf5", demos, env_args=args)
    import_robomimic(src, tmp_path / "a.zarr", obs_keys=["robot0_eef_pos"])
    rb = ReplayBuffer.open(tmp_path / "a.zarr")
    assert sorted(rb.keys) == ["action", "robot0_eef_pos"]
    assert dict(rb.attrs)["robomimic"]["env_type"] == "gym"


def _drop(demos, n, rel):
    del demos[n][rel]


def _ragged(demos, n, rel):
    demos[n][rel] = demos[n][rel][:-1]


def _strings(demos, n, rel):
    demos[n][rel] = np.array([b"x"] * len(demos[n]["actions"]))


def _channel_first(demos, n, rel):
    demos[n][rel] = np.ascontiguousarray(demos[n][rel].transpose(0, 3, 1, 2))


def _other_shape(demos, n, rel):
    demos[n][rel] = np.zeros((len(demos[n]["actions"]), 4))


def _nan(demos, n, rel):
    demos[n][rel][1, 0] = np.nan


BAD = [
    ("missing action", lambda d: _drop(d, 10, "actions"), {}, ("demo_10", "actions", "missing")),
    ("missing obs key", lambda d: _drop(d, 2, "obs/robot0_eef_pos"), {},
     ("demo_2", "obs/robot0_eef_pos", "missing")),
    ("ragged obs", lambda d: _ragged(d, 2, "obs/robot0_gripper_qpos"), {},
     ("demo_2", "obs/robot0_gripper_qpos", "ragged")),
    ("string dtype", lambda d: _strings(d, 10, "obs/robot0_eef_pos"), {},
     ("demo_10", "obs/robot0_eef_pos", "dtype")),
    ("channel-first image", lambda d: _channel_first(d, 0, "obs/agentview_image"), {},
     ("demo_0", "obs/agentview_image", "channel-last")),
    ("shape differs between demos", lambda d: _other_shape(d, 11, "obs/robot0_eef_pos"), {},
     ("demo_11", "obs/robot0_eef_pos", "feature shape")),
    ("NaN", lambda d: _nan(d, 2, "actions"), {}, ("demo_2", "actions", "NaN")),
    ("no actions_abs", lambda d: _drop(d, 11, "actions_abs"), {"action_key": "actions_abs"},
     ("demo_11", "actions_abs", "missing")),
    ("unknown filter", lambda d: None, {"filter_key": "nosuch"}, ("mask/nosuch", "available")),
    ("unknown obs key", lambda d: None, {"obs_keys": ["nosuch"]}, ("demo_0", "obs/nosuch")),
]  # fmt: skip


@pytest.mark.parametrize("name, spoil, kwargs, words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_naming_file_episode_and_key(tmp_path, name, spoil, kwargs, words):
    demos = make_demos((0, 2, 10, 11))
    spoil(demos)
    src = write_robomimic(tmp_path / "bad.hdf5", demos, masks={"train": ["demo_0"]})
    out = tmp_path / "out.zarr"
    with pytest.raises(InteropError) as err:
        import_robomimic(src, out, **kwargs)
    message = str(err.value)
    assert message.startswith(str(src)) and all(w in message for w in words), message
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.hdf5"]  # no partial output


def test_num_samples_that_disagrees_is_refused(tmp_path):
    src = write_robomimic(tmp_path / "a.hdf5", make_demos((0, 1)))
    with h5py.File(src, "a") as f:
        f["data/demo_1"].attrs["num_samples"] = 99
    with pytest.raises(InteropError, match=r"demo_1: attrs\[num_samples\]: num_samples = 99"):
        import_robomimic(src, tmp_path / "a.zarr")


def test_existing_destination_is_kept_unless_overwrite_and_survives_a_failed_import(tmp_path):
    good = write_robomimic(tmp_path / "good.hdf5", make_demos((0, 1)))
    out = tmp_path / "d.zarr"
    import_robomimic(good, out)
    ends = ReplayBuffer.open(out).episode_ends
    with pytest.raises(FileExistsError):
        import_robomimic(good, out)
    demos = make_demos((0, 1, 2), seed=1)
    del demos[2]["actions"]  # fails on the last demo, after two were written
    bad = write_robomimic(tmp_path / "bad.hdf5", demos)
    with pytest.raises(InteropError, match="demo_2"):
        import_robomimic(bad, out, overwrite=True)
    np.testing.assert_array_equal(ReplayBuffer.open(out).episode_ends, ends)  # old one intact
    import_robomimic(write_robomimic(tmp_path / "new.hdf5", make_demos((5,))), out, overwrite=True)
    np.testing.assert_array_equal(ReplayBuffer.open(out).get_meta("demo_index"), [5])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.hdf5",
        "d.zarr",
        "good.hdf5",
        "new.hdf5",
    ]


def test_cli_refuses_bad_input_with_one_line_and_status_2(tmp_path, capsys):
    demos = make_demos((0, 1))
    _ragged(demos, 1, "obs/robot0_eef_pos")
    src = write_robomimic(tmp_path / "r.hdf5", demos)
    with pytest.raises(SystemExit) as exit_:
        dataset_script.cli(["import", "robomimic", str(src), "--out", str(tmp_path / "x.zarr")])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("dp-dataset: error: ") and "demo_1: obs/robot0_eef_pos" in last
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.slow
def test_pusht_demos_as_robomimic_file_import_train_and_evaluate(tmp_path):
    """The end-to-end path: PushT expert demonstrations written as a robomimic file (float64
    obs/keypoint (L, 9, 2), obs/agent_pos, actions), imported with --task pusht, trained 20 steps
    with the task's defaults (dp-train needs no --task: the import recorded it), evaluated."""
    collected = tmp_path / "collected.zarr"
    collect.main(collect.Config(episodes=2, out=collected, progress=False))
    rb = ReplayBuffer.open(collected)
    demos = {}
    for i in range(rb.n_episodes):
        ep = rb.get_episode(i)
        demos[2 * i + 1] = {
            "actions": ep["action"].astype(np.float64),
            "obs/keypoint": ep["keypoint"].astype(np.float64),
            "obs/agent_pos": ep["agent_pos"].astype(np.float64),
        }
    args = {"env_name": "PushT-v0", "type": 2, "env_kwargs": {"obs_mode": "keypoint"}}
    src = write_robomimic(tmp_path / "pusht.hdf5", demos, env_args=args)
    out = tmp_path / "pusht.zarr"
    dataset_script.cli(["import", "robomimic", str(src), "--out", str(out), "--task", "pusht",
                        "--no-progress"])  # fmt: skip
    imported = ReplayBuffer.open(out)
    np.testing.assert_array_equal(imported.episode_ends, rb.episode_ends)
    for key in ("action", "keypoint", "agent_pos"):
        np.testing.assert_array_equal(imported[key][:], rb[key][: rb.n_steps])
    assert dict(imported.attrs)["task"] == "pusht"

    run = tmp_path / "run"
    summary = train.main(
        train.Config(
            dataset=out, out=run, down_dims=(16, 32, 64), diffusion_step_embed_dim=16,
            batch_size=8, steps=20, warmup_steps=2, log_every=10, save_every=20,
            eval_every=-1, val_ratio=0.0, progress=False,
        )
    )  # fmt: skip
    assert summary["step"] == 20
    results = eval_script.main(
        eval_script.Config(checkpoint=run, episodes=1, inference_steps=2, videos=0, progress=False)
    )
    assert results["task"] == "pusht" and results["episodes"] == 1 and results["errors"] == []
    assert results["train_step"] == 20 and 0 <= results["mean_max_reward"] <= 1


def test_block_writer_shards_images_and_carries_rows_across_flushes(tmp_path):
    """EpisodeWriter writes image rows up to shard boundaries only and carries the rest to
    the next block: with a tiny block size and ragged episodes, many flushes split episodes
    mid-shard, and every row must still land where it belongs."""
    from dplite.data.interop import EpisodeWriter
    from dplite.data.replay_buffer import IMAGE_CHUNK_FRAMES, IMAGE_SHARD_FRAMES

    rng = np.random.default_rng(0)
    lengths = [137, 251, 64, 399, 1, 300]  # 1152 rows: two whole shards and a partial one
    episodes = [
        {
            "img": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
            "action": rng.normal(size=(n, 2)).astype(np.float32),
        }
        for n in lengths
    ]
    writer = EpisodeWriter(tmp_path / "x.zarr", {"source": "test"}, block_bytes=1)
    for i, ep in enumerate(episodes):
        writer.add(ep, {"n": i})
    rb = writer.close()
    assert rb.episode_lengths.tolist() == lengths
    for i, ep in enumerate(episodes):
        got = rb.get_episode(i)
        np.testing.assert_array_equal(got["img"], ep["img"])
        np.testing.assert_array_equal(got["action"], ep["action"])
    img = rb.zarr_array("img")
    assert img.chunks[0] == IMAGE_CHUNK_FRAMES and img.shards[0] == IMAGE_SHARD_FRAMES
    assert rb.zarr_array("action").shards is None  # low-dim keys keep plain chunks
