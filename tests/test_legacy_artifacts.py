"""Datasets and policies written before the packages moved under ``dplite`` still load, train,
collect and evaluate: a fixture written by main 79d1b22 (tests/fixtures/legacy_79d1b22)."""

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import tyro

from dplite.data.replay_buffer import ReplayBuffer
from dplite.envs.tasks import TaskSpec
from dplite.policy.diffusion import DiffusionPolicy
from dplite.scripts import collect, train
from dplite.scripts import eval as eval_script

LEGACY = Path(__file__).parent / "fixtures" / "legacy_79d1b22"


def cli(module, args):
    return module.main(tyro.cli(module.Config, args=[str(a) for a in args]))


def test_old_module_paths_map_to_the_namespace():
    meta = json.loads((LEGACY / "policy" / "config.json").read_text())["metadata"]["env"]
    assert meta["env_imports"] == ["envs"] and meta["expert"].startswith("envs.experts:")
    spec = TaskSpec.from_dict(meta)
    assert spec.env_imports == ("dplite.envs",)
    assert spec.expert == "dplite.envs.experts:make_pusht_expert"
    # a spec written now keeps a user's own module named envs as it is
    mine = spec.replace(env_imports=("envs",), expert="envs.mine:make")
    assert TaskSpec.from_dict(json.loads(json.dumps(mine.to_dict()))) == mine


def test_old_policy_gives_the_chunks_it_gave_before():
    golden = json.loads((LEGACY / "golden_actions.json").read_text())
    policy = DiffusionPolicy.from_pretrained(LEGACY / "policy")
    obs = {k: torch.tensor(v)[None] for k, v in golden["obs"].items()}  # (1, To, ...)
    for name, (sampler, k) in {"ddim10": ("ddim", 10), "ddim2": ("ddim", 2),
                               "ddpm100": ("ddpm", 100)}.items():  # fmt: skip
        out = policy.predict_action(obs, sampler, k, generator=torch.Generator().manual_seed(0))
        # pixels on a 512 px field: float32 rounding differs between CPUs (3e-3 px seen on AMD
        # against Intel-made goldens over DDPM's 100 steps); a spacing or schedule change moves
        # chunks by whole pixels
        np.testing.assert_allclose(out["action_pred"][0].numpy(), golden[name], atol=0.02)


def test_old_policy_evaluates_from_its_folder_alone(tmp_path):
    summary = cli(eval_script, ["--checkpoint", LEGACY / "policy", "--episodes", 1,
                                "--inference-steps", 2, "--videos", 0, "--no-progress",
                                "--json", tmp_path / "r.json"])  # fmt: skip
    assert summary["episodes"] == 1 and summary["task"] == "pusht" and not summary["errors"]
    assert json.loads((tmp_path / "r.json").read_text())["episodes"] == 1


def test_old_dataset_resumes_collection_and_trains(tmp_path):
    data = tmp_path / "pusht.zarr"
    shutil.copytree(LEGACY / "pusht.zarr", data)
    assert ReplayBuffer.open(data).n_episodes == 2
    cli(collect, ["--task", "pusht", "--episodes", 3, "--out", data, "--no-progress"])
    rb = ReplayBuffer.open(data)
    assert rb.n_episodes == 3 and rb.attrs["env"]["expert"].startswith("envs.")  # kept as written
    summary = cli(train, ["--dataset", data, "--out", tmp_path / "run", "--steps", 2,
                          "--down-dims", 8, 16, 32, "--diffusion-step-embed-dim", 8,
                          "--batch-size", 8, "--eval-every", -1, "--val-ratio", 0,
                          "--no-progress"])  # fmt: skip
    assert summary["step"] == 2
    saved = json.loads(
        (tmp_path / "run" / "checkpoints" / "step_0000002" / "config.json").read_text()
    )
    assert saved["metadata"]["env"]["env_imports"] == ["dplite.envs"]
