"""Every dp-* command turns a bad input into one 'dp-NAME: error: ...' line on stderr and exit
status 2, with no traceback (the installed console scripts, run as a user runs them)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

LEGACY = Path(__file__).parent / "fixtures" / "legacy_79d1b22"
BIN = Path(sys.executable).parent


def _run(cmd: str, *args, **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), **env_vars}
    env.pop("DPLITE_TRACEBACK", None)
    return subprocess.run(
        [str(BIN / cmd), *map(str, args)], capture_output=True, text=True, env=env, timeout=120
    )


CASES = [
    ("dp-collect", ["--env-id", "NoSuchEnv-v0", "--episodes", 1, "--out", "{tmp}/x.zarr"],
     "unknown gymnasium id 'NoSuchEnv-v0'"),
    ("dp-collect", ["--task", "nosuch", "--out", "{tmp}/x.zarr"], "unknown task 'nosuch'"),
    ("dp-train", ["--dataset", "{tmp}/missing.zarr", "--task", "pusht"], "missing.zarr"),
    ("dp-train", ["--dataset", "{tmp}/junk.zarr", "--task", "pusht"], "junk.zarr"),
    ("dp-train", ["--dataset", LEGACY / "pusht.zarr", "--obs-keys", "img", "agent_pos", "--out", "{tmp}/r"],
     "missing ['img']"),
    ("dp-eval", ["--checkpoint", "{tmp}/nowhere"], "neither a policy folder nor a training run"),
    ("dp-eval", ["--checkpoint", LEGACY / "policy", "--inference-steps", 0],
     "inference steps k=0 must be in [1, 100]"),
    ("dp-eval", ["--checkpoint", LEGACY / "policy", "--n-action-steps", 0],
     "n_action_steps=0 must be in [1, T - To + 1 = 15]"),
    ("dp-eval", ["--checkpoint", LEGACY / "policy", "--task", "panda_lift"],
     "environment 'PandaLift-v0' (task 'panda_lift') emits"),
    ("dp-eval", ["--checkpoint", LEGACY / "policy", "--sampler", "consistency"],
     "needs a policy distilled"),
    ("dp-eval", ["--checkpoint", LEGACY / "policy", "--device", "cpu", "--cuda-graphs"],
     "--cuda-graphs needs a CUDA device, not cpu"),
    ("dp-benchmark", ["--backend", "onnx", "--device", "cuda"],
     "--backend onnx runs on the CPU, not --device cuda"),
    ("dp-benchmark", ["--samplers", "ddim"], "--samplers: 'ddim' is not NAME:K"),
    ("dp-benchmark", ["--networks", "1B"], "--networks: unknown ['1B']"),
    ("dp-distill", ["--checkpoint", LEGACY / "policy", "--out", "{tmp}"], "exists"),
    ("dp-suite", ["--tasks", "nosuch", "--out", "{tmp}/s"], "unknown task 'nosuch'"),
]  # fmt: skip


@pytest.mark.parametrize(
    "cmd, args, words", CASES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)]
)
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, cmd, args, words):
    (tmp_path / "junk.zarr").mkdir()
    (tmp_path / "junk.zarr" / "zarr.json").write_text("not json")
    r = _run(cmd, *[str(a).replace("{tmp}", str(tmp_path)) for a in args])
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{cmd}: error: ") and words in last, last


def test_onnx_backend_without_onnxruntime_names_the_extra(tmp_path):
    """An onnxruntime that fails to import (as where it is not installed), first on the path."""
    fake = tmp_path / "hide" / "onnxruntime"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("hidden by the test")\n')
    r = _run("dp-eval", "--checkpoint", LEGACY / "policy", "--device", "cpu", "--backend", "onnx",
             PYTHONPATH=str(tmp_path / "hide"))  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("dp-eval: error: the onnx backend needs onnxruntime"), last
    assert "install the 'onnx' extra: pip install -e \".[onnx]\"" in last, last


def test_the_traceback_is_kept_on_request(tmp_path):
    env_run = subprocess.run(
        [str(BIN / "dp-eval"), "--checkpoint", str(tmp_path / "nowhere")],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "DPLITE_TRACEBACK": "1", "MUJOCO_GL": "egl"},
    )  # fmt: skip
    assert env_run.returncode == 1 and "Traceback" in env_run.stderr
