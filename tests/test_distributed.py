"""Training under torchrun (DistributedDataParallel, gloo on the CPU) and atomic policy folders.

Two processes that each take half of every global batch must end where one process with the
whole batch ends; a torchrun run killed mid-way resumes from its checkpoint and ends where an
uninterrupted one does.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import tyro

from dplite.policy.checkpoint import load_state, recover_dir
from dplite.policy.diffusion import DiffusionPolicy
from dplite.scripts import collect, train

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--env-id", "ToyReach-v0", "--env-import", "tests.toy_envs"]
SMALL = ["--down-dims", "16", "32", "64", "--diffusion-step-embed-dim", "16", "--batch-size", "8",
         "--warmup-steps", "1", "--log-every", "1", "--eval-every", "-1", "--val-ratio", "0",
         "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp") / "toy.zarr"
    args = [*TOY, "--expert", "tests.toy_envs:ToyReachExpert", "--episodes", "4", "--out",
            str(path), "--no-progress"]  # fmt: skip
    collect.main(tyro.cli(collect.Config, args=args))
    return path


def torchrun(args, nproc=2, **popen):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "dplite.scripts.train", *map(str, args)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "MUJOCO_GL": "egl"}
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen
    )


def finish(proc, timeout=180):
    out, _ = proc.communicate(timeout=timeout)
    lines = out.decode().splitlines()
    rank0 = [x for x in lines if x.startswith("[rank0]")]  # the root cause, if rank 0 failed
    assert proc.returncode == 0, "\n".join(rank0[-40:] + lines[-20:])


def children(pid: int) -> list[int]:
    """Child process ids of pid (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def weights(run: Path) -> dict[str, torch.Tensor]:
    name = json.loads((run / "checkpoints" / "latest.json").read_text())["name"]
    state = load_state(run / "checkpoints" / name)
    return {**state["model"], **{f"ema.{k}": v for k, v in state["ema"]["model"].items()}}


def assert_same(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


@pytest.mark.parametrize("extra", [[], ["--train-max-delay", "3"]], ids=["plain", "delays"])
def test_two_processes_match_one_with_the_same_global_batch(dataset, tmp_path, extra):
    # lr 1e-4: Adam turns float-rounding differences of near-zero gradient entries into
    # steps of up to ~lr, so 1e-5 separates rounding (measured 3e-6) from a wrong batch split
    # (whole steps of ~1e-4 on most entries). With delays, each rank's chunks have their own
    # committed rows: the loss must still average to the one-process loss.
    args = ["--dataset", dataset, *TOY, *SMALL, "--steps", "3", "--save-every", "3", "--lr", "1e-4",
            *extra]  # fmt: skip
    finish(torchrun([*args, "--out", tmp_path / "ddp"]))
    train.main(tyro.cli(train.Config, args=[*map(str, args), "--out", str(tmp_path / "one")]))
    two, one = weights(tmp_path / "ddp"), weights(tmp_path / "one")
    assert_same(two, one, atol=1e-5)
    first = DiffusionPolicy.from_pretrained(tmp_path / "ddp" / "checkpoints" / "step_0000003")
    assert first.cfg.obs_shapes == {"pos": (2,), "target_xy": (2,)}  # the usual format
    # the logged loss is the mean over both ranks' halves: the one-process loss
    logs = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in logs] == pytest.approx([r["loss"] for r in ref], rel=1e-4)


@pytest.fixture(scope="module")
def image_dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp_img") / "pusht_img.zarr"
    args = ["--task", "pusht", "--episodes", "3", "--images", "--out", str(path), "--no-progress"]
    collect.main(tyro.cli(collect.Config, args=args))
    return path


# a camera policy with validation and rollout checks on (both on rank 0 only)
CAMERA = ["--task", "pusht", "--obs-keys", "img", "agent_pos", "--image-crop", "84", "84",
          "--down-dims", "16", "32", "64", "--diffusion-step-embed-dim", "16",
          "--batch-size", "4", "--warmup-steps", "1", "--log-every", "1", "--eval-every", "1",
          "--eval-episodes", "1", "--max-episode-steps", "3", "--val-ratio", "0.34",
          "--no-progress"]  # fmt: skip


def test_two_processes_match_one_for_a_camera_policy_with_checks(image_dataset, tmp_path):
    """Random crops come from the global batch stream (each rank takes its rows' offsets), and
    validation and rollout checks draw from streams of their own: two processes still train
    the one-process weights."""
    args = ["--dataset", image_dataset, *CAMERA, "--steps", "3", "--save-every", "3",
            "--lr", "1e-4"]  # fmt: skip
    finish(torchrun([*args, "--out", tmp_path / "ddp"]), timeout=300)
    train.main(tyro.cli(train.Config, args=[*map(str, args), "--out", str(tmp_path / "one")]))
    two, one = weights(tmp_path / "ddp"), weights(tmp_path / "one")
    # The spatial softmax is blind to a constant added to a keypoint map, so that conv's bias
    # has a gradient of exactly 0 up to rounding, which Adam turns into steps of up to lr
    # either way: it may differ by 3 steps x lr, every other weight only by rounding.
    blind = [k for k in two if k.endswith("keypoints.conv.bias")]
    assert len(blind) == 2  # the policy's and its EMA's
    assert_same({k: two.pop(k) for k in blind}, {k: one.pop(k) for k in blind}, atol=3.1e-4)
    assert_same(two, one, atol=1e-5)
    logs = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert sum("val_loss" in r for r in logs) == 3 and sum("eval_success" in r for r in logs) == 3


def test_killed_torchrun_run_resumes_from_its_checkpoint(dataset, tmp_path):
    args = ["--dataset", dataset, *TOY, *SMALL, "--steps", "150", "--save-every", "5"]
    finish(torchrun([*args, "--out", tmp_path / "whole"]))

    killed = tmp_path / "killed"
    proc = torchrun([*args, "--out", killed])
    latest = killed / "checkpoints" / "latest.json"
    deadline = time.time() + 120
    while not (latest.is_file() and json.loads(latest.read_text())["step"] >= 10):
        assert proc.poll() is None and time.time() < deadline, "run ended before the kill"
        time.sleep(0.02)
    # SIGKILL the workers and the launcher at once (the workers run in sessions of their own)
    workers = children(proc.pid)
    assert len(workers) == 2
    for pid in [*workers, proc.pid]:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    step_at_kill = json.loads(latest.read_text())["step"]
    assert 10 <= step_at_kill < 150

    finish(torchrun([*args, "--out", killed]))  # the same command resumes
    assert json.loads(latest.read_text())["step"] == 150
    assert_same(weights(killed), weights(tmp_path / "whole"), atol=1e-6)


def test_global_batch_must_split_evenly(dataset, tmp_path):
    proc = torchrun(["--dataset", dataset, *TOY, *SMALL, "--steps", "1", "--batch-size", "7",
                     "--out", tmp_path / "x"])  # fmt: skip
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and b"must be divisible by the number of processes 2" in out


def test_policy_folder_swap_never_loses_the_old_one(dataset, tmp_path, monkeypatch):
    args = ["--dataset", dataset, *TOY, *SMALL, "--steps", "1", "--save-every", "1"]
    trainer = train.setup(tyro.cli(train.Config, args=[*map(str, args), "--out", str(tmp_path)]))
    best = tmp_path / "best"
    trainer.write_policy_dir(best, with_state=False)
    before = (best / "model.safetensors").read_bytes()
    with torch.no_grad():
        for p in trainer.ema.model.parameters():
            p.add_(1.0)

    # crash after the old folder moved aside, before the new one moved in
    real_replace = os.replace

    def crash_on_new(src, dst):
        if Path(src).name == "best.tmp":
            raise KeyboardInterrupt("killed between the renames")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_new)
    with pytest.raises(KeyboardInterrupt):
        trainer.write_policy_dir(best, with_state=False)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not best.exists() and (tmp_path / "best.old" / "model.safetensors").is_file()

    recover_dir(best)  # what the next run does first
    assert (best / "model.safetensors").read_bytes() == before
    DiffusionPolicy.from_pretrained(best)
    trainer.write_policy_dir(best, with_state=False)  # and a normal swap then goes through
    assert (best / "model.safetensors").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("best")) == ["best"]
