"""The MSE baseline (PolicyConfig.objective = "mse"): its loss is the chunk MSE of the same
UNet fed a zero chunk at timestep 0, it acts with one network evaluation, and it goes through
the diffusion policy's interface: train -> checkpoint -> scripts.eval."""

import json

import numpy as np
import pytest
import torch
import tyro

from dplite.policy.diffusion import DiffusionPolicy, PolicyConfig
from dplite.policy.normalizer import Normalizer
from dplite.scripts import collect, train
from dplite.scripts import eval as eval_script

T, TO, DA = 8, 2, 2
TOY = ["--env-id", "ToyReach-v0", "--env-import", "tests.toy_envs"]
SMALL = ["--down-dims", "8", "16", "--diffusion-step-embed-dim", "8", "--horizon", T,
         "--batch-size", "8", "--steps", "2", "--warmup-steps", "1", "--log-every", "1",
         "--save-every", "1", "--eval-every", "-1", "--val-ratio", "0", "--no-progress"]  # fmt: skip


def cli(module, args):
    return module.main(tyro.cli(module.Config, args=[str(a) for a in args]))


def _policy(objective: str = "mse") -> DiffusionPolicy:
    """An anchored policy with non-trivial statistics: actions relative to `pos`."""
    torch.manual_seed(0)
    cfg = PolicyConfig(
        obs_shapes={"pos": (2,), "goal": (3,)},
        action_dim=DA,
        horizon=T,
        n_obs_steps=TO,
        n_action_steps=4,
        down_dims=(8, 16),
        diffusion_step_embed_dim=8,
        action_anchor="pos",
        objective=objective,
    )
    stats = {
        "pos": {"min": np.array([-2.0, -1.0]), "max": np.array([2.0, 3.0])},
        "goal": {"min": np.zeros(3), "max": np.array([1.0, 2.0, 4.0])},
        "action": {
            "min": np.full((T, DA), -0.5),
            "max": np.linspace(0.5, 1.5, T * DA).reshape(T, DA),
        },
    }
    return DiffusionPolicy(cfg, Normalizer.from_stats(stats))


def _batch(b: int = 5) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "obs": {"pos": torch.randn(b, 3, 2, generator=g), "goal": torch.rand(b, 3, 3, generator=g)},
        "action": torch.randn(b, T, DA, generator=g),
    }


def _by_hand(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(condition (B, To * Do), target chunk (B, T, Da)) from the min-max formula itself."""
    pos, goal = batch["obs"]["pos"][:, :TO], batch["obs"]["goal"][:, :TO]
    pos_n = 2 * (pos - torch.tensor([-2.0, -1.0])) / torch.tensor([4.0, 4.0]) - 1
    goal_n = 2 * goal / torch.tensor([1.0, 2.0, 4.0]) - 1
    cond = torch.cat([pos_n, goal_n], dim=-1).flatten(1)  # (B, To * 5), keys in config order
    lo = torch.full((T, DA), -0.5)
    hi = torch.linspace(0.5, 1.5, T * DA).reshape(T, DA)
    rel = batch["action"] - pos[:, -1:]  # relative to the newest pos of the window's To steps
    return cond, 2 * (rel - lo) / (hi - lo) - 1


def test_mse_loss_is_the_chunk_mse_of_the_net_on_a_zero_chunk():
    policy, batch = _policy(), _batch()
    cond, target = _by_hand(batch)
    with torch.no_grad():
        pred = policy.net(torch.zeros(5, T, DA), 0, cond)  # (B, T, Da)
        expected = ((pred - target) ** 2).mean()
        loss = policy.compute_loss(batch)
        # the diffusion draws (which scripts.train passes on) do not enter the regression
        drawn = policy.compute_loss(batch, noise=torch.randn(5, T, DA), timesteps=torch.arange(5))
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    assert drawn == loss
    # ... and it is not the diffusion objective of the same weights
    diffusion = _policy("diffusion")
    diffusion.load_state_dict(policy.state_dict())
    assert not torch.isclose(diffusion.compute_loss(batch), loss)


def test_mse_predicts_with_one_network_evaluation():
    policy = _policy().eval()
    batch = _batch(3)
    batch["obs"] = {k: v[:, :TO] for k, v in batch["obs"].items()}  # an episode's To steps
    cond, _ = _by_hand(batch)
    calls = []
    policy.net.register_forward_hook(lambda *a: calls.append(1))
    out = policy.predict_action(
        batch["obs"], "ddpm", 100, generator=torch.Generator().manual_seed(5)
    )
    assert len(calls) == 1  # sampler and k are ignored
    with torch.no_grad():
        pred = policy.net(torch.zeros(3, T, DA), 0, cond)
    lo, hi = torch.full((T, DA), -0.5), torch.linspace(0.5, 1.5, T * DA).reshape(T, DA)
    expected = (pred + 1) / 2 * (hi - lo) + lo + batch["obs"]["pos"][:, -1:]  # raw units
    torch.testing.assert_close(out["action_pred"], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["action"], expected[:, TO - 1 : TO - 1 + 4])
    assert policy.sampler_settings() == ("mse", 1)
    assert policy.sampler_settings("ddpm", 50) == ("mse", 1)
    again = policy.predict_action(batch["obs"], generator=torch.Generator().manual_seed(6))
    assert torch.equal(again["action_pred"], out["action_pred"])  # deterministic


def test_objective_is_checked_and_old_checkpoints_load_as_diffusion(tmp_path):
    with pytest.raises(ValueError, match="unknown objective 'l1'"):
        PolicyConfig(objective="l1")
    policy = _policy("diffusion")
    policy.save_pretrained(tmp_path)
    info = json.loads((tmp_path / "config.json").read_text())
    del info["config"]["objective"]  # a checkpoint written before the field existed
    (tmp_path / "config.json").write_text(json.dumps(info))
    assert DiffusionPolicy.from_pretrained(tmp_path).cfg.objective == "diffusion"


def test_mse_trains_saves_loads_and_evaluates_like_the_diffusion_policy(tmp_path):
    data, run = tmp_path / "toy.zarr", tmp_path / "run"
    cli(collect, [*TOY, "--expert", "tests.toy_envs:ToyReachExpert", "--episodes", 3,
                  "--out", data, "--no-progress"])  # fmt: skip
    cli(train, ["--dataset", data, "--out", run, *TOY, *SMALL, "--objective", "mse"])
    policy = DiffusionPolicy.from_pretrained(run / "checkpoints" / "step_0000002")
    assert policy.cfg.objective == "mse" and policy.metadata["step"] == 2
    # the saved weights are the ones that act: same prediction after another round trip
    policy.save_pretrained(tmp_path / "copy", metadata=policy.metadata)
    copy = DiffusionPolicy.from_pretrained(tmp_path / "copy")
    obs = {"pos": torch.randn(2, TO, 2), "target_xy": torch.randn(2, TO, 2)}
    assert torch.equal(policy.predict_action(obs)["action"], copy.predict_action(obs)["action"])

    summary = cli(eval_script, ["--checkpoint", run, "--episodes", 2, "--videos", 0,
                                "--json", tmp_path / "r.json", "--no-progress"])  # fmt: skip
    written = json.loads((tmp_path / "r.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert (written["sampler"], written["inference_steps"]) == ("mse", 1)
    assert written["episodes"] == 2 and written["env_id"] == "ToyReach-v0"
