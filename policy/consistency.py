"""Consistency distillation: a trained diffusion policy becomes one that acts in 1 or 2 steps.

Consistency models (Song et al. 2023, arXiv 2303.01469, Algorithm 2 "consistency
distillation"), applied to action chunks as in Consistency Policy (Prasad et al. 2024,
arXiv 2405.07503). The teacher is a trained epsilon-prediction DiffusionPolicy; its weights
are not changed.
Its probability-flow ODE is solved with DDIM steps (eta = 0) on a grid of its timesteps

    tau_1 > tau_2 > ... > tau_N,  then tau_{N+1} = -1 (the clean chunk, alpha_bar = 1)

(default: the DDIM-10 grid 90, 80, ..., 0, so the student learns the chunk DDIM 10 would end
at). The student has the teacher's network architecture, normalizer and config, and its
consistency function reads the network's output as a velocity (Salimans & Ho 2022):

    f(x, tau) = sqrt(alpha_bar_tau) x - sqrt(1 - alpha_bar_tau) v(x, tau),  f(x, -1) = x,

which needs no division by sqrt(alpha_bar_tau) (the epsilon form amplifies the network's error
by 1 / sqrt(alpha_bar) = 7 at tau = 90; on the two-mode toy of tests/test_consistency.py that
left the 1-step chunk 2-3 times further from the teacher's than the velocity form). The student
starts from the teacher's weights: its features and conditioning carry over, and at low noise,
where v ~ eps, so does its output. It is trained so that f is the same all along each teacher
trajectory:

    x_n      ~ q(x_tau_n | x_0)   (n = 1: pure noise, which is where sampling starts)
    x_hat    = DDIM_teacher(x_n, tau_n -> tau_{n+1})
    loss     = d(f_theta(x_n, tau_n), f_target(x_hat, tau_{n+1})),  n ~ U{1..N}

with d the squared error (mean over the chunk) or the pseudo-Huber distance of Song & Dhariwal
2023 (arXiv 2310.14189), sqrt(||a - b||^2 + c^2) - c per chunk with c = 0.00054 sqrt(T Da),
which grows like the error itself rather than its square, so that a few far-off chunks weigh
less; and where the target network is a short exponential moving average of the student (decay mu,
default 0.95; mu = 0 makes it the student itself) and f_target(x, -1) = x pins the chain to the
teacher's clean end. The consistency sampler (DiffusionPolicy.predict_action with sampler
"consistency") then evaluates f once from noise at tau_1, or re-noises that estimate to a lower
grid timestep and evaluates f again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from dplite.policy.diffusion import DiffusionPolicy
from dplite.policy.ema import EMA
from dplite.policy.samplers import DDIM, Consistency
from dplite.policy.schedule import Spacing, spaced_timesteps


def ddim_grid(num_train_timesteps: int, n: int, spacing: Spacing = "leading") -> tuple[int, ...]:
    """The teacher timesteps of a DDIM-n sample (schedule.spaced_timesteps): K=100, n=10 ->
    90 ... 0 (leading) or 99, 89, ..., 9 (trailing)."""
    if not 1 <= n <= num_train_timesteps:
        raise ValueError(f"grid size n={n} must be in [1, K={num_train_timesteps}]")
    return tuple(spaced_timesteps(num_train_timesteps, n, spacing).tolist())


class ConsistencyDistiller:
    """Holds the frozen teacher, the student being trained and the student's target network.

    `loss(batch)` is the consistency distillation loss of one batch of training windows (the
    same {"obs", "action"} batches compute_loss takes); after each optimizer step on the
    student, call `update_target()`. The teacher module is put in eval mode with gradients off
    (its weights are never changed). The grid's top timestep is fed pure noise, which matches
    the teacher's own sampler only when it is a DDIM start point (as ddim_grid's are).
    `distance` is "l2" (the squared error of the paper) or "huber" (pseudo-Huber; scripts.distill's
    default, ahead on PushT: 1-step success 0.92 against 0.87 over 500 episodes).
    Camera keys: the student encodes its own random crop (train mode) while the teacher and
    the target see the centre crop, so the student also learns to match them across crops.
    """

    def __init__(
        self,
        teacher: DiffusionPolicy,
        grid: tuple[int, ...] | None = None,
        target_decay: float = 0.95,
        distance: str = "l2",
    ):
        tcfg = teacher.cfg
        if tcfg.objective != "diffusion" or tcfg.consistency_timesteps is not None:
            raise ValueError(
                "the teacher must be a diffusion policy (objective 'diffusion', not already "
                f"distilled); got objective={tcfg.objective!r}, "
                f"consistency_timesteps={tcfg.consistency_timesteps}"
            )
        if not 0 <= target_decay < 1:
            raise ValueError(f"target_decay={target_decay}: expected 0 <= mu < 1")
        if distance not in ("l2", "huber"):
            raise ValueError(f"distance={distance!r}: expected 'l2' or 'huber'")
        self.distance = distance
        if grid is None:  # the teacher's own DDIM 10
            grid = ddim_grid(tcfg.num_train_timesteps, 10, tcfg.timestep_spacing)
        grid = tuple(grid)
        cfg = dataclasses.replace(
            tcfg,
            consistency_timesteps=grid,
            sampler="consistency",
            num_inference_steps=1,
            train_max_delay=0,  # distillation shows no committed prefixes
        )  # validates the grid
        self.grid = cfg.consistency_timesteps
        self.teacher = teacher.eval().requires_grad_(False)
        self.student = DiffusionPolicy(cfg).to(teacher.device)
        self.student.load_state_dict(teacher.state_dict())  # network, encoders, normalizer
        # mu = 0.95 after a short warm-up (the first update copies the student)
        self.target = EMA(self.student, power=0.75, max_decay=target_decay)
        self._times = torch.tensor([*self.grid, -1])  # tau_1 .. tau_N, then -1 (clean)

    def update_target(self) -> None:
        self.target.update(self.student)

    def loss(
        self,
        batch: Mapping,
        noise: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Consistency distillation loss on a batch of windows {"obs": {key: (B, >= To, ...)},
        "action": (B, T, Da)} in raw units; float32 whatever the autocast. `noise` (B, T, Da)
        and `index` (B,), each row's grid position n - 1 in [0, N), may be given (default:
        drawn from torch's global RNG)."""
        student = self.student
        dev = student.device
        obs, x0 = student.training_chunk(batch)  # (B, To, ...), (B, T, Da) normalized
        b, n_grid = x0.shape[0], len(self.grid)
        noise = torch.randn_like(x0) if noise is None else noise.to(dev)
        if noise.shape != x0.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {tuple(x0.shape)}")
        if index is None:
            n = torch.randint(0, n_grid, (b,), device=dev)
        else:
            n = index.to(dev)
            if n.shape != (b,) or not 0 <= int(n.min()) <= int(n.max()) < n_grid:
                raise ValueError(
                    f"index {n.tolist()}: expected shape ({b},) and grid positions in [0, {n_grid})"
                )
        times = self._times.to(dev)
        t_hi, t_lo = times[n], times[n + 1]  # (B,), t_lo = -1 past the grid
        top = (n == 0).reshape(b, 1, 1)
        x_hi = torch.where(top, noise, student.schedule.add_noise(x0, noise, t_hi))

        # the teacher's ODE step and the target in full precision, even under bf16 autocast:
        # at tau = 90 the DDIM step multiplies the teacher's epsilon error by 7
        with torch.no_grad(), torch.autocast(dev.type, enabled=False):
            teacher = self.teacher
            eps = teacher.net(x_hi, t_hi, teacher.encode_obs(obs))
            x_lo = teacher.schedule.ddim_step(eps, t_hi, t_lo, x_hi)  # one ODE step
            target_net = self.target.model
            f_lo = target_net.consistency_fn(x_lo, t_lo.clamp(min=0), target_net.encode_obs(obs))
            target = torch.where((t_lo < 0).reshape(b, 1, 1), x_lo, f_lo)  # f(x, -1) = x
        pred = student.consistency_fn(x_hi, t_hi, student.encode_obs(obs)).float()
        if self.distance == "l2":
            return F.mse_loss(pred, target)
        c = 0.00054 * pred[0].numel() ** 0.5
        return ((pred - target).square().sum(dim=(1, 2)) + c**2).sqrt().sub(c).mean()


@torch.no_grad()
def teacher_gap(
    teacher: DiffusionPolicy, student: DiffusionPolicy, batch: Mapping, noise: torch.Tensor
) -> float:
    """How far the student's 1-step chunk is from where the teacher's DDIM ODE ends, from the
    same noise: mean |f_student(noise, tau_1) - DDIM_N(noise)| over a batch of windows, in
    normalized action units (both clipped as their samplers clip). A rollout-free measure of
    distillation quality; noise (B, T, Da)."""
    grid = student.cfg.consistency_timesteps
    if grid is None:
        raise ValueError("student is not a consistency-distilled policy")
    obs, _ = teacher.training_chunk(batch)
    noise = noise.to(teacher.device)
    times = torch.tensor(grid, device=teacher.device)
    empty = noise.new_zeros((0, *noise.shape))
    # the teacher's DDIM ODE over the whole grid, and the student's 1-step jump from its top
    ode_end = DDIM(len(grid)).sample(teacher, noise, teacher.encode_obs(obs), empty, times)
    jump = Consistency(1).sample(student, noise, student.encode_obs(obs), empty, times[:1])
    return (jump - ode_end).abs().mean().item()


__all__ = ["ConsistencyDistiller", "ddim_grid", "teacher_gap"]
