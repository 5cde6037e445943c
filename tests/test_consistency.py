"""Consistency distillation: the loss and sampler against an exact denoiser, a distilled toy
policy against its teacher's ODE and on a two-mode task, checkpoints, and the script."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from dplite.policy.checkpoint import find_policy_dir
from dplite.policy.consistency import ConsistencyDistiller, ddim_grid, teacher_gap
from dplite.policy.diffusion import DiffusionPolicy, PolicyConfig
from dplite.policy.normalizer import Normalizer
from dplite.scripts import collect, distill, train
from dplite.scripts import eval as eval_script
from tests.test_diffusion import T, _mode_fractions, _two_mode_paths

TINY = dict(down_dims=(16, 32, 64), diffusion_step_embed_dim=32)


def test_ddim_grid_is_the_ddim_samplers_timesteps():
    policy = DiffusionPolicy(PolicyConfig(obs_shapes={"s": (2,)}, **TINY))
    for spacing in ("leading", "trailing"):
        for n in (1, 2, 3, 10, 100):
            expected = policy.schedule.inference_timesteps(n, "ddim", spacing).tolist()
            assert list(ddim_grid(100, n, spacing)) == expected
    with pytest.raises(ValueError, match="grid size"):
        ddim_grid(100, 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(consistency_timesteps=(10, 50), sampler="consistency", num_inference_steps=1),
            "descending",
        ),
        (
            dict(consistency_timesteps=(100, 0), sampler="consistency", num_inference_steps=1),
            "descending",
        ),
        (dict(consistency_timesteps=(90, 0)), "samples with 'consistency'"),
        (dict(sampler="consistency"), "needs a policy distilled"),
        (
            dict(consistency_timesteps=(90, 0), sampler="consistency", num_inference_steps=3),
            r"k=3 must be in \[1, 2\]",
        ),
    ],
)
def test_bad_consistency_config_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PolicyConfig(obs_shapes={"s": (2,)}, **TINY, **kwargs)


def test_sampler_must_fit_the_policy():
    teacher = DiffusionPolicy(PolicyConfig(obs_shapes={"s": (2,)}, **TINY))
    student = ConsistencyDistiller(teacher).student
    assert student.sampler_settings() == ("consistency", 1)
    assert student.sampler_settings(None, 2) == ("consistency", 2)
    grid = student.cfg.consistency_timesteps  # the teacher's DDIM 10 timesteps
    assert student.consistency_timesteps(2) == [grid[0], grid[5]]  # top, then halfway down
    with pytest.raises(ValueError, match="consistency-distilled"):
        student.sampler_settings("ddim", 10)
    with pytest.raises(ValueError, match=r"\[1, 10\]"):
        student.sampler_settings("consistency", 11)
    with pytest.raises(ValueError, match="needs a policy distilled"):
        teacher.sampler_settings("consistency", 1)


# ---------------------------------------------------------------- an exact denoiser
class ExactDenoiser(nn.Module):
    """The optimal output for data that is always the chunk c (normalized): the noise
    eps* = (x_t - sqrt(ab_t) c) / sqrt(1 - ab_t) (the teacher's parameterization), or the
    velocity v* = sqrt(ab_t) eps* - sqrt(1 - ab_t) c (the student's). Every point of every ODE
    trajectory then maps to c, so f(x, t) = c everywhere and the distillation loss is 0."""

    def __init__(self, alphas_cumprod, c, output: str, bias: float = 0.0):
        super().__init__()
        self.ab, self.c, self.output, self.bias = alphas_cumprod.double(), c.double(), output, bias
        self.dummy = nn.Parameter(torch.zeros(()))  # so that .device and optimizers work

    def forward(self, x, t, cond):
        t = torch.as_tensor(t).long().reshape(-1)
        ab = self.ab[t].reshape(-1, 1, 1)
        eps = (x.double() - ab.sqrt() * self.c) / (1 - ab).sqrt()
        out = eps if self.output == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * self.c
        return (out + self.bias).to(x.dtype) + 0 * self.dummy


def _exact_distiller(c: torch.Tensor, student_bias: float = 0.0) -> ConsistencyDistiller:
    """Teacher with the exact denoiser; student and target with it off by `student_bias`."""
    stats = {
        "s": {"min": -np.ones(2), "max": np.ones(2)},
        "action": {"min": -np.ones(2), "max": np.ones(2)},
    }
    cfg = PolicyConfig(obs_shapes={"s": (2,)}, horizon=8, n_action_steps=4, **TINY)
    distiller = ConsistencyDistiller(DiffusionPolicy(cfg, Normalizer.from_stats(stats)))
    ab = distiller.teacher.schedule.alphas_cumprod
    distiller.teacher.net = ExactDenoiser(ab, c, "eps")
    distiller.student.net = distiller.target.model.net = ExactDenoiser(ab, c, "v", student_bias)
    return distiller


def test_loss_is_zero_for_an_exact_denoiser_and_positive_otherwise():
    c = torch.linspace(-0.8, 0.8, 16).reshape(8, 2)  # the one chunk the data holds
    batch = {"obs": {"s": torch.zeros(64, 2, 2)}, "action": c.expand(64, 8, 2)}
    index = torch.arange(64) % 10  # every grid position, the top (pure noise) one included
    exact = _exact_distiller(c)
    assert exact.loss(batch, index=index).item() < 1e-10
    # the sampler lands on c from any noise, in 1 and in 2 steps
    for k in (1, 2):
        out = exact.student.predict_action({"s": torch.zeros(5, 2, 2)}, "consistency", k)
        torch.testing.assert_close(out["action_pred"], c.expand(5, 8, 2), atol=1e-5, rtol=0)
    # a velocity off by b everywhere moves f(x, t) by -b sqrt(1 - ab_t): the loss between grid
    # neighbours is then b^2 (sqrt(1 - ab_hi) - sqrt(1 - ab_lo))^2, with sqrt(1 - ab) = 0 at -1
    b = 0.1
    off = _exact_distiller(c, student_bias=b)
    ab = off.teacher.schedule.alphas_cumprod.double()
    sigma = [(1 - ab[t]).sqrt().item() for t in off.grid] + [0.0]
    expected = np.mean([b**2 * (sigma[n] - sigma[n + 1]) ** 2 for n in index.tolist()])
    assert off.loss(batch, index=index).item() == pytest.approx(expected, rel=1e-4)
    # the 1-step jump lands b sqrt(1 - ab_90) below c, where the teacher's ODE ends
    noise = torch.randn(64, 8, 2)
    assert teacher_gap(exact.teacher, exact.student, batch, noise) < 1e-5
    gap = teacher_gap(off.teacher, off.student, batch, noise)
    assert gap == pytest.approx(b * sigma[0], rel=1e-4)
    # pseudo-Huber: per chunk sqrt(16 b^2 (sigma_hi - sigma_lo)^2 + c^2) - c, c = 0.00054 * 4
    off.distance, h = "huber", 0.00054 * 16**0.5
    expected = np.mean(
        [np.sqrt(16 * b**2 * (sigma[n] - sigma[n + 1]) ** 2 + h**2) - h for n in index.tolist()]
    )
    assert off.loss(batch, index=index).item() == pytest.approx(expected, rel=1e-4)


def test_loss_matches_a_row_by_row_recomputation_from_the_ddpm_formulas():
    """Random teacher, student and target (all different): the batched loss equals the loss
    written out row by row with python-int timesteps and the closed-form DDPM / DDIM / v
    formulas (no schedule methods)."""
    torch.manual_seed(0)
    cfg = PolicyConfig(obs_shapes={"s": (3,)}, horizon=8, n_action_steps=4, **TINY)
    distiller = ConsistencyDistiller(DiffusionPolicy(cfg))
    for net in (distiller.student.net, distiller.target.model.net):  # three different networks
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
    batch = {"obs": {"s": torch.randn(20, 2, 3)}, "action": torch.rand(20, 8, 2) * 2 - 1}
    noise, index = torch.randn(20, 8, 2), torch.arange(20) % 10
    loss = distiller.loss(batch, noise=noise, index=index)

    ab = distiller.teacher.schedule.alphas_cumprod.double()
    times = [*distiller.grid, -1]
    nets = {"t": distiller.teacher, "s": distiller.student, "g": distiller.target.model}
    total = 0.0
    with torch.no_grad():
        for i in range(20):
            obs = {"s": batch["obs"]["s"][i : i + 1]}
            x0 = batch["action"][i : i + 1].double()  # stats are the identity here
            hi, lo = times[index[i]], times[index[i] + 1]
            a_hi, a_lo = ab[hi], (ab[lo] if lo >= 0 else torch.tensor(1.0, dtype=torch.float64))
            z = noise[i : i + 1].double()
            x_hi = z if index[i] == 0 else a_hi.sqrt() * x0 + (1 - a_hi).sqrt() * z

            def out(key, x, t, obs=obs):
                m = nets[key]
                return m.net(x.float(), t, m.encode_obs(obs)).double()

            eps = out("t", x_hi, hi)
            x0_hat = ((x_hi - (1 - a_hi).sqrt() * eps) / a_hi.sqrt()).clamp(-1, 1)
            x_lo = a_lo.sqrt() * x0_hat + (1 - a_lo).sqrt() * eps  # DDIM, eta = 0
            target = x_lo if lo < 0 else a_lo.sqrt() * x_lo - (1 - a_lo).sqrt() * out("g", x_lo, lo)
            pred = a_hi.sqrt() * x_hi - (1 - a_hi).sqrt() * out("s", x_hi, hi)
            total += ((pred - target) ** 2).mean().item()
    assert loss.item() == pytest.approx(total / 20, rel=1e-4)


def test_target_follows_the_student_at_the_set_decay():
    cfg = PolicyConfig(obs_shapes={"s": (2,)}, horizon=8, n_action_steps=4, **TINY)
    obs = {"s": torch.randn(1, 2, 2)}
    for mu in (0.0, 0.95):
        distiller = ConsistencyDistiller(DiffusionPolicy(cfg), target_decay=mu)
        distiller.target.step = 10**6  # past the warm-up: the decay is mu itself
        student_w = next(distiller.student.net.parameters())
        target_w = next(distiller.target.model.net.parameters())
        before = target_w.detach().clone()
        with torch.no_grad():
            student_w.add_(1.0)
        distiller.update_target()
        torch.testing.assert_close(target_w, before + (1 - mu) * 1.0)
        if mu == 0.0:  # the target is the student, and its no-grad fast path serves the new weights
            x = torch.randn(1, 8, 2)
            with torch.no_grad():
                cond = distiller.student.encode_obs(obs)
                torch.testing.assert_close(
                    distiller.target.model.consistency_fn(x, 50, cond),
                    distiller.student.eval().consistency_fn(x, 50, cond),
                )
    with pytest.raises(ValueError, match="index"):
        distiller.loss({"obs": obs, "action": torch.zeros(1, 8, 2)}, index=torch.tensor([10]))
    with pytest.raises(ValueError, match="batch\\['action'\\]"):
        distiller.loss({"obs": obs, "action": torch.zeros(1, 7, 2)})
    with pytest.raises(ValueError, match="distance='l1'"):
        ConsistencyDistiller(DiffusionPolicy(cfg), distance="l1")


# ---------------------------------------------------------------- a distilled toy policy
@pytest.fixture(scope="module")
def toy():
    """A teacher trained on the two-mode paths of test_diffusion, and its distilled student."""
    torch.manual_seed(0)
    obs, action = _two_mode_paths(1024, np.random.default_rng(0))
    stats = {
        "pos": {"min": obs.amin((0, 1)).numpy(), "max": obs.amax((0, 1)).numpy()},
        "action": {"min": action.amin((0, 1)).numpy(), "max": action.amax((0, 1)).numpy()},
    }
    cfg = PolicyConfig(obs_shapes={"pos": (2,)}, horizon=T, n_obs_steps=2, n_action_steps=8, **TINY)
    teacher = DiffusionPolicy(cfg, Normalizer.from_stats(stats))
    _fit(teacher, teacher.compute_loss, obs, action, steps=600, lr=3e-3)
    distiller = ConsistencyDistiller(teacher)
    init = DiffusionPolicy(distiller.student.cfg)
    init.load_state_dict(distiller.student.state_dict())
    _fit(distiller.student, distiller.loss, obs, action, 500, 1e-3, distiller.update_target)
    return teacher.eval(), init.eval(), distiller.student.eval(), obs


def _fit(model, loss_fn, obs, action, steps, lr, after_step=None):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(obs), (128,))
        loss = loss_fn({"obs": {"pos": obs[idx]}, "action": action[idx]})
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if after_step:
            after_step()


@torch.no_grad()
def test_student_maps_teacher_trajectory_points_to_the_teachers_ode_solution(toy):
    teacher, init, student, obs = toy
    test_obs = {"pos": obs[:256]}
    cond = teacher.encode_obs(test_obs)
    x = torch.randn(256, T, 2, generator=torch.Generator().manual_seed(3))
    points = []  # (t, x_t) along the teacher's DDIM-10 trajectory
    for t in student.cfg.consistency_timesteps:
        points.append((t, x))
        x = teacher.schedule.ddim_step(teacher.net(x, t, cond), t, t - 10, x)
    solution = x  # normalized chunk at the end of the teacher's ODE
    for t, x_t in points:
        err = (student.consistency_fn(x_t, t, cond).clamp(-1, 1) - solution).abs().mean().item()
        assert err < 0.12, (t, err)  # normalized units: actions span [-1, 1]
    # before distillation (the teacher's weights, read as a velocity) the top jump is far off
    err_init = init.consistency_fn(points[0][1], points[0][0], cond).clamp(-1, 1) - solution
    assert err_init.abs().mean().item() > 0.4


@torch.no_grad()
def test_one_step_student_samples_both_modes_not_their_average(toy):
    _, _, student, obs = toy
    test_obs = {"pos": obs[:200]}
    for k in (1, 2):
        gen = torch.Generator().manual_seed(1)
        paths = student.predict_action(test_obs, "consistency", k, generator=gen)["action_pred"]
        left, right, middle = _mode_fractions(paths)
        assert left >= 0.3 and right >= 0.3, (k, left, right)
        assert middle < 0.1, (k, middle)


def test_student_checkpoint_round_trip(toy, tmp_path):
    _, _, student, obs = toy
    student.save_pretrained(tmp_path / "cd")
    loaded = DiffusionPolicy.from_pretrained(tmp_path / "cd")
    # the default grid is the teacher's own DDIM 10 (its spacing: the default, trailing)
    assert loaded.cfg == student.cfg and loaded.cfg.consistency_timesteps == ddim_grid(
        100, 10, PolicyConfig().timestep_spacing
    )
    noise = torch.randn(4, T, 2)
    for k in (1, 2):
        a = student.predict_action(
            {"pos": obs[:4]}, None, k, torch.Generator().manual_seed(5), noise
        )
        b = loaded.predict_action(
            {"pos": obs[:4]}, None, k, torch.Generator().manual_seed(5), noise
        )
        torch.testing.assert_close(a["action_pred"], b["action_pred"], atol=0, rtol=0)


# ---------------------------------------------------------------- through the scripts
def test_distill_then_eval_through_the_scripts(tmp_path):
    data = tmp_path / "pusht.zarr"
    collect.main(collect.Config(episodes=3, out=data, progress=False))
    train.main(
        train.Config(
            dataset=data, out=tmp_path / "run", down_dims=(16, 32, 64),
            diffusion_step_embed_dim=16, batch_size=8, steps=2, warmup_steps=1,
            eval_every=-1, val_ratio=0.0, progress=False,
        )
    )  # fmt: skip
    cfg = distill.Config(
        checkpoint=tmp_path / "run", out=tmp_path / "cd", steps=3, batch_size=8,
        warmup_steps=1, log_every=1, eval_episodes=1, progress=False,
    )  # fmt: skip
    summary = distill.distill(cfg)
    # the teacher was trained with the default spacing: its DDIM 10 grid
    grid = list(ddim_grid(100, 10, PolicyConfig().timestep_spacing))
    assert summary["grid"] == grid and "eval_success" in summary
    assert not (tmp_path / "cd.tmp").exists()
    student = DiffusionPolicy.from_pretrained(tmp_path / "cd")
    teacher_dir = find_policy_dir(tmp_path / "run")
    assert student.metadata["distilled_from"] == str(teacher_dir)
    assert student.metadata["task"] == "pusht" and student.metadata["distill"]["steps"] == 3
    teacher = DiffusionPolicy.from_pretrained(teacher_dir)
    changed = [
        n for n, p in student.state_dict().items() if not torch.equal(p, teacher.state_dict()[n])
    ]
    assert any(n.startswith("net.") for n in changed)  # trained, starting from the teacher
    out = eval_script.main(
        eval_script.Config(
            checkpoint=tmp_path / "cd", episodes=1, inference_steps=2, videos=0, progress=False
        )
    )
    assert (out["sampler"], out["inference_steps"]) == ("consistency", 2)
    # nothing is overwritten, and a student is not a teacher
    with pytest.raises(FileExistsError, match="exists"):
        distill.distill(cfg)
    with pytest.raises(ValueError, match="already a distilled policy"):
        distill.distill(distill.Config(checkpoint=tmp_path / "cd", out=tmp_path / "cd2"))
    with pytest.raises(ValueError, match="consistency-distilled"):
        eval_script.main(
            eval_script.Config(
                checkpoint=tmp_path / "cd", sampler="ddim", episodes=1, videos=0, progress=False
            )
        )
