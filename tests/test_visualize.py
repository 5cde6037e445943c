"""dplite.scripts.visualize: the drawn chunks are the policy's own denoising trajectory, mapped onto
the PushT frame where the renderer really shows them; and predict_action's trajectory option."""

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import tyro

from dplite.envs import EVAL_SEED_START
from dplite.envs.tasks import get_task, make_env
from dplite.policy.diffusion import DiffusionPolicy, PolicyConfig
from dplite.policy.normalizer import Normalizer
from dplite.scripts import visualize

T, TO = 8, 2
PUSHT = get_task("pusht")


def _pusht_policy(init_seed: int, objective: str = "diffusion") -> DiffusionPolicy:
    """An untrained PushT policy whose chunks spread over +-100 px around the pusher."""
    torch.manual_seed(init_seed)
    cfg = PolicyConfig(
        obs_shapes={"keypoint": (9, 2), "agent_pos": (2,)},
        horizon=T,
        n_obs_steps=TO,
        n_action_steps=4,
        down_dims=(8, 16),
        diffusion_step_embed_dim=8,
        action_anchor="agent_pos",
        num_inference_steps=4,
        objective=objective,
    )
    stats = {
        "keypoint": {"min": np.zeros((9, 2)), "max": np.full((9, 2), 512.0)},
        "agent_pos": {"min": np.zeros(2), "max": np.full(2, 512.0)},
        "action": {"min": np.full((T, 2), -100.0), "max": np.full((T, 2), 100.0)},
    }
    policy = DiffusionPolicy(cfg, Normalizer.from_stats(stats)).eval()
    policy.metadata = {"env": PUSHT.to_dict(), "step": 0}
    return policy


def test_pusht_top_camera_shows_the_workspace_on_the_whole_frame():
    """Put the pusher at known positions and find its blue disc where to_image says."""
    env = make_env(PUSHT, render=True)
    bounds = visualize.SCENE_BOUNDS["PushT-v0"]
    for agent, block in (
        ((100, 400), (400, 120)),
        ((450, 60), (120, 400)),
        ((30, 480), (300, 200)),
    ):
        env.reset(options={"reset_to_state": [*agent, *block, 0.3]})
        frame = env.render()
        size = frame.shape[1]
        disc = np.abs(frame.astype(int) - (65, 105, 225)).sum(-1) < 40  # the pusher's colour
        rows, cols = np.nonzero(disc)
        centre = np.array([cols.mean(), rows.mean()]) + 0.5  # pixel i covers [i, i + 1)
        np.testing.assert_allclose(centre, visualize.to_image(agent, bounds, size), atol=0.5)
        radius = np.sqrt(disc.sum() / np.pi) * 512 / size
        assert abs(radius - 15) < 1.5  # 15 px pusher: the scale is right too
    env.close()


def test_trajectory_starts_at_the_noise_and_ends_at_the_plan():
    policy = _pusht_policy(0)
    obs = {"keypoint": torch.rand(3, TO, 9, 2) * 512, "agent_pos": torch.rand(3, TO, 2) * 512}
    noise = torch.randn(3, T, 2)
    for sampler, k in (("ddim", 4), ("ddpm", 5)):
        kw = dict(noise=noise, generator=torch.Generator().manual_seed(3))
        out = policy.predict_action(obs, sampler, k, return_trajectory=True, **kw)
        traj = out["trajectory"]
        assert len(traj) == k + 1 and all(x.shape == (3, T, 2) for x in traj)
        anchor = obs["agent_pos"][:, -1:]
        torch.testing.assert_close(traj[0], noise * 100 + anchor)  # unnormalized noise
        assert torch.equal(traj[-1], out["action_pred"])
        assert not torch.allclose(traj[1], traj[0])
        # asking for the trajectory does not change the sample
        kw = dict(noise=noise, generator=torch.Generator().manual_seed(3))
        assert torch.equal(policy.predict_action(obs, sampler, k, **kw)["action_pred"], traj[-1])


def test_drawn_chunks_are_the_policy_trajectory_on_the_frame():
    policy = _pusht_policy(0)
    seed, samples = EVAL_SEED_START + 2, 3
    panels = visualize.denoising_panels(policy, PUSHT, seed, samples, noise_seed=7)
    assert panels.steps == [0, 1, 2, 3, 4] and panels.sampler == "ddim"
    assert panels.frame.shape == (256, 256, 3)  # the task's video size

    # the same sampling by hand: the env's reset observation, repeated, the same noise seed
    env = make_env(PUSHT, obs_keys=["keypoint"])
    obs, _ = env.reset(seed=seed)
    env.close()
    batch = {k: torch.from_numpy(np.repeat(obs[k][None, None], TO, 1)).repeat_interleave(samples, 0)
             for k in ("keypoint", "agent_pos")}  # fmt: skip
    traj = policy.predict_action(
        batch, generator=torch.Generator().manual_seed(7), return_trajectory=True
    )["trajectory"]
    for step, drawn in zip(panels.steps, panels.chunks, strict=True):
        np.testing.assert_allclose(drawn, traj[step].numpy() * 256 / 512, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(panels.anchor, obs["agent_pos"] * 256 / 512, rtol=1e-6)

    # another checkpoint, or other noise, draws something else
    other = visualize.denoising_panels(_pusht_policy(1), PUSHT, seed, samples, noise_seed=7)
    renoised = visualize.denoising_panels(policy, PUSHT, seed, samples, noise_seed=8)
    assert not np.allclose(other.chunks[-1], panels.chunks[-1])
    assert not np.allclose(renoised.chunks[-1], panels.chunks[-1])
    with pytest.raises(ValueError, match=r"--steps \[0, 9\]: each must be in \[0, 4\]"):
        visualize.denoising_panels(policy, PUSHT, seed, samples, steps=[0, 9])


def test_cli_writes_a_png_of_one_panel_per_step(tmp_path):
    _pusht_policy(0).save_pretrained(tmp_path / "policy", metadata={"env": PUSHT.to_dict()})
    out = visualize.main(
        tyro.cli(
            visualize.Config,
            args=[
                "--checkpoint",
                str(tmp_path / "policy"),
                "--out",
                str(tmp_path / "a.png"),
                "--samples",
                "4",
                "--sampler",
                "ddpm",
                "--inference-steps",
                "6",
                "--steps",
                "0",
                "3",
                "6",
            ],
        )  # fmt: skip
    )
    image = iio.imread(out)
    assert image.shape[:2] == (340, 3 * 320)  # PANEL_IN at DPI, three panels
    assert image[..., :3].std() > 10  # not blank

    # the MSE baseline has one panel: its single evaluation
    _pusht_policy(0, "mse").save_pretrained(tmp_path / "mse", metadata={"env": PUSHT.to_dict()})
    out = visualize.main(
        visualize.Config(checkpoint=tmp_path / "mse", out=tmp_path / "m.png", samples=2)
    )
    assert iio.imread(out).shape[:2] == (340, 320)
