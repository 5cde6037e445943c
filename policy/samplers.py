"""Samplers: the ways DiffusionPolicy.predict_action turns noise into a normalized action chunk.

One small class per sampler behind one interface (BaseSampler), and one registry (SAMPLERS)
where get_sampler chooses among them, so that a new sampler is one class plus one entry:

- DDPM: ancestral sampling (Ho et al. 2020, arXiv 2006.11239, Algorithm 2), strided over k of
  the K training timesteps when k < K, as diffusers' DDPMScheduler.
- DDIM: the deterministic (eta = 0) DDIM update (Song et al. 2021, arXiv 2010.02502, eq. 12).
- Consistency: multistep consistency sampling (Song et al. 2023, arXiv 2303.01469, Algorithm 1)
  for a policy distilled by policy/consistency.py.
- OneShot: the "mse" objective's single network evaluation on a zero chunk at timestep 0.

A sampler is its k plus code. predict_action draws all its noise before the loop (the initial
noise, then ``num_draws`` per-step draws in step order) and passes the visited timesteps as a
device tensor, so that ``sample`` does device work only and a CUDA graph can capture it
(policy/cuda_graphs.py). The step math itself (posterior, DDIM update, re-noising) lives in
policy/schedule.py; a sampler says which of it to call, in which order, with which network.

A sampler may carry a ``Prefix``: actions the chunk must start with (real-time chunking, Black
et al. 2025, arXiv 2506.07339), enforced by guidance or by inpainting in every step, or, for a
policy trained with committed prefixes (PolicyConfig.train_max_delay), given to the network
clean (see Prefix).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import nn

if TYPE_CHECKING:  # a type only: diffusion.py imports this module
    from dplite.policy.diffusion import DiffusionPolicy, PolicyConfig

SamplerName = Literal["ddpm", "ddim", "consistency", "mse"]
PrefixMode = Literal["guidance", "inpaint", "conditioned"]
PREFIX_MODES: tuple[str, ...] = ("guidance", "inpaint", "conditioned")
RTC_MAX_GUIDANCE = 5.0
"""beta, the clip of the guidance weight (the RTC paper's value)."""


@contextlib.contextmanager
def _weights_frozen(module: nn.Module) -> Iterator[None]:
    """requires_grad off on every weight of `module` for the block: guidance needs the input's
    gradient only, so autograd records less and the fast layers keep their caches."""
    thawed = [p for p in module.parameters() if p.requires_grad]
    for p in thawed:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in thawed:
            p.requires_grad_(True)


@dataclass
class Prefix:
    """Where a sample must match given actions: real-time chunking's frozen prefix and soft
    overlap (Black et al. 2025, arXiv 2506.07339), for an epsilon-prediction sampler.

    ``target`` (B, T, Da) normalized actions and ``weights`` (T,) in [0, 1]: 1 freezes a row,
    values between pull it softly (in the first two modes), 0 leaves it free. Three ways to
    enforce it in each step:

    - "guidance" (the paper's, adapted from flow matching to DDPM / DDIM): pseudoinverse
      guidance (PiGDM, Song et al. 2023) with a noise-free observation of the weighted rows
      adds (1 / r_t^2) J^T W (y - x0_hat) to the score, J = d x0_hat / d x_t, r_t^2 = 1 - ab_t
      (the paper's r_tau^2 in this parametrization). Through Tweedie's formula
      x0_hat = (x_t + (1 - ab_t) score) / sqrt(ab_t) that moves the x_0 estimate by
      w_t J^T W (y - x0_hat) with w_t = 1 / sqrt(ab_t), clipped at ``max_guidance`` as the paper
      clips its weight; the step then runs on the eps consistent with the moved estimate.
      x0_hat is the clipped estimate the step itself uses (when the schedule clips): an
      epsilon network's unclipped estimate divides its error by sqrt(ab_t), which vanishes at
      the noisiest steps, and guiding through it wrecked the chunk there.
      One vector-Jacobian product (a backward pass through the network) per step. Near the
      data J -> I and w_t -> 1: the last steps replace x0_hat by W y + (1 - W) x0_hat.
    - "inpaint" (replacement, as in RePaint / Diffuser): after each step the weighted rows are
      blended toward the target noised to the step's new timestep,
      x <- W q(y | t_prev) + (1 - W) x; after the last step (t_prev = x_0) they are W y +
      (1 - W) x. No extra network work; ``noise`` holds one draw per step.

    - "conditioned" (training-time conditioning, for a policy trained with
      PolicyConfig.train_max_delay > 0): the network's input holds the rows of weight 1 clean,
      as every training chunk with a committed prefix did; rows of weight below 1 stay free
      (training knew no soft weights). No extra network work, nothing to tune.

    Every way, the rows of weight 1 of the final chunk are exactly the target after
    DiffusionPolicy.predict_action's last overwrite in raw units.
    """

    target: torch.Tensor  # (B, T, Da) normalized
    weights: torch.Tensor  # (T,)
    mode: PrefixMode = "guidance"
    max_guidance: float = RTC_MAX_GUIDANCE
    noise: torch.Tensor | None = None  # (k, B, T, Da): inpainting's per-step draws

    @property
    def w(self) -> torch.Tensor:
        return self.weights.reshape(1, -1, 1).to(self.target)  # (1, T, 1)

    def conditioned(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, Da) with its rows of weight 1 replaced by the clean target: the network
        input of "conditioned" mode."""
        return torch.where(self.w == 1, self.target, x)  # (B, T, Da)

    def correction(
        self,
        fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        x: torch.Tensor,
        ab_t: torch.Tensor,
        module: nn.Module,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """fn(x) -> (x0_hat, out) run with autograd on, the weights of `module` (the network
        fn runs) frozen; returns (out, the move of the x_0 estimate w_t J^T W (y - x0_hat)),
        both (B, T, Da) (class doc). An x0_hat detached by fn means a zero gradient: the
        backward pass is skipped."""
        with torch.inference_mode(False), torch.enable_grad(), _weights_frozen(module):
            # clones: tensors made in inference mode cannot enter autograd
            xg = x.clone().requires_grad_(True)  # (B, T, Da)
            x0, out = fn(xg)  # (B, T, Da) each
            err = self.w * (self.target - x0.detach())  # (B, T, Da)
            if x0.requires_grad:
                (vjp,) = torch.autograd.grad(x0, xg, grad_outputs=err)  # J^T W (y - x0_hat)
            else:  # fn says the gradient is zero: no backward pass
                vjp = torch.zeros_like(xg)
        weight = ab_t.rsqrt().clamp(max=self.max_guidance).to(x)  # w_t = min(beta, 1/sqrt(ab_t))
        return out.detach().to(x), (weight * vjp).to(x)

    def guided_eps(
        self, policy: DiffusionPolicy, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        """The network's eps at (x, t), replaced by the eps whose x_0 estimate is guided."""
        sched = policy.schedule
        ab_t = sched.alphas_cumprod.to(x.device)[t].reshape(-1, 1, 1)  # (1, 1, 1)

        def fn(xg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # inputs cloned: autograd
            eps = policy.net(xg, t.clone(), cond.clone())  # (B, T, Da)
            x0 = sched.predict_x0(eps, t.clone(), xg)  # (B, T, Da)
            # the estimate the step will use: clipped, so its Jacobian is zero where it clips.
            # Unclipped, eq. 15 divides the network's error by sqrt(ab_t) (5e-4 at t = K - 1
            # of the cosine schedule), and J^T W (y - x0_hat) moved a PushT chunk by 1e5
            if sched.clip_sample:
                r = sched.clip_sample_range
                if not ((x0.abs() <= r) & (self.w > 0)).any():
                    # every guided entry clipped (as at pure noise): J^T W (.) is exactly 0
                    x0 = x0.detach()
                x0 = x0.clamp(-r, r)
            return x0, eps

        eps, move = self.correction(fn, x, ab_t, policy.net)  # (B, T, Da) each
        # x_t = sqrt(ab) x0 + sqrt(1 - ab) eps (DDPM eq. 4): moving x0 by `move` at fixed x_t
        # moves eps by -sqrt(ab / (1 - ab)) move (rows without guidance keep eps exactly)
        return eps - (ab_t / (1 - ab_t)).sqrt() * move  # (B, T, Da)

    def inpaint(
        self, policy: DiffusionPolicy, i: int, x: torch.Tensor, prev_t: torch.Tensor
    ) -> torch.Tensor:
        """x (B, T, Da) at prev_t with the weighted rows blended toward the noised target."""
        noised = policy.schedule.add_noise(self.target, self.noise[i], prev_t.clamp(min=0))
        y_t = torch.where(prev_t < 0, self.target, noised)  # (B, T, Da); x_0 after the last step
        return self.w * y_t + (1 - self.w) * x  # (B, T, Da)


class BaseSampler(ABC):
    """One way to go from x at times[0] to a normalized chunk (B, T, Da) in k steps.

    Class methods decide whether and how the sampler applies to a policy config; an instance
    (made by get_sampler) holds k and runs the loop. A subclass sets `name` and writes `step`;
    the other methods have defaults that fit an epsilon-prediction diffusion policy (a
    consistency-distilled one is refused; k in [1, K], K by default; timesteps spaced by the
    schedule; no per-step draws).
    """

    name: ClassVar[str]
    starts_from_noise: ClassVar[bool] = True
    """x at times[0] is pure noise (the first draw, or predict_action's `noise`); False: zeros."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.prefix: Prefix | None = None
        """Actions the chunk must start with (set by predict_action), or None."""

    def eps(
        self, policy: DiffusionPolicy, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        """eps_theta(x_t, t), guided toward the prefix when there is one in "guidance" mode,
        with the prefix's frozen rows clean in its input in "conditioned" mode."""
        if self.prefix is not None and self.prefix.mode == "guidance":
            return self.prefix.guided_eps(policy, x, t, cond)
        if self.prefix is not None and self.prefix.mode == "conditioned":
            x = self.prefix.conditioned(x)  # (B, T, Da)
        return policy.denoise(x, t, cond)  # (B, T, Da), by the policy's backend

    def constrain(
        self, policy: DiffusionPolicy, i: int, x: torch.Tensor, prev_t: torch.Tensor
    ) -> torch.Tensor:
        """The sample after step i (at prev_t), inpainted when there is a prefix in "inpaint"
        mode."""
        if self.prefix is not None and self.prefix.mode == "inpaint":
            return self.prefix.inpaint(policy, i, x, prev_t)
        return x

    # ------------------------------------------------------------ choosing (config only)
    @classmethod
    def unfit_reason(cls, cfg: PolicyConfig) -> str | None:
        """Why this sampler cannot sample the policy of `cfg`, or None where it can."""
        if cfg.consistency_timesteps is not None:
            return "it was consistency-distilled (consistency_timesteps set)"
        return None

    @classmethod
    def check_fits(cls, cfg: PolicyConfig) -> None:
        """Refuse to sample the policy of `cfg` if unfit, naming the samplers that fit it."""
        reason = cls.unfit_reason(cfg)
        if reason is not None:
            fits = " or ".join(repr(n) for n, s in SAMPLERS.items() if s.unfit_reason(cfg) is None)
            raise ValueError(
                f"sampler {cls.name!r} does not fit this policy: {reason}; it samples with {fits}"
            )

    steps_limit: ClassVar[str] = "K, num_train_timesteps"  # what max_steps is, for messages

    @classmethod
    def max_steps(cls, cfg: PolicyConfig) -> int:
        return cfg.num_train_timesteps  # one network evaluation per training timestep at most

    @classmethod
    def default_steps(cls, cfg: PolicyConfig) -> int:
        """k when the caller gives none and this is not the config's sampler."""
        return cls.max_steps(cfg)

    @classmethod
    def check_steps(cls, cfg: PolicyConfig, k: int) -> None:
        hi = cls.max_steps(cfg)
        if not 1 <= k <= hi:
            raise ValueError(
                f"{cls.name} inference steps k={k} must be in [1, {hi}] ({cls.steps_limit})"
            )

    # ------------------------------------------------------------ sampling
    @property
    def num_draws(self) -> int:
        """Noise draws (B, T, Da) the loop takes after the initial noise: step_noise's length."""
        return 0

    def timesteps(self, policy: DiffusionPolicy) -> torch.Tensor:
        """The k timesteps the loop visits, descending, as a (k,) long tensor on the policy's
        device (a device-to-device move at most: nothing is read back to the host)."""
        spacing = policy.cfg.timestep_spacing
        return policy.schedule.inference_timesteps(self.k, spacing=spacing).to(policy.device)

    @abstractmethod
    def step(
        self,
        policy: DiffusionPolicy,
        i: int,
        x: torch.Tensor,
        cond: torch.Tensor,
        times: torch.Tensor,
        step_noise: torch.Tensor,
    ) -> torch.Tensor:
        """Step i: x (B, T, Da) at times[i] -> the next sample (B, T, Da). cond (B, Dc);
        times (k,); step_noise (num_draws, B, T, Da). Device work only."""

    def sample(
        self,
        policy: DiffusionPolicy,
        x: torch.Tensor,
        cond: torch.Tensor,
        step_noise: torch.Tensor,
        times: torch.Tensor,
        record: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """The loop from x (B, T, Da) at times[0] to a normalized chunk (B, T, Da). `record`
        sees each intermediate sample (not the last, which is the result)."""
        k = times.shape[0]
        for i in range(k):
            x = self.step(policy, i, x, cond, times, step_noise)
            if record is not None and i < k - 1:
                record(x)
        return x


def next_timestep(times: torch.Tensor, i: int) -> torch.Tensor:
    """(1,): the timestep visited after times[i], or -1 (the clean chunk, alpha_bar = 1) after
    the last. Where k divides K this is times[i] - K // k, diffusers' prev_timestep, for either
    spacing; otherwise trailing timesteps are unevenly spaced and only this form is right."""
    if i + 1 < times.shape[0]:
        return times[i + 1 : i + 2]
    return torch.full_like(times[i : i + 1], -1)  # a fill on the device, no host copy


class DDPM(BaseSampler):
    """Ancestral sampling, Ho et al. 2020 Algorithm 2; k = K by default (every timestep)."""

    name = "ddpm"

    @property
    def num_draws(self) -> int:
        return self.k  # z of every step (the last one, onto x_0, multiplies it by 0)

    def step(
        self,
        policy: DiffusionPolicy,
        i: int,
        x: torch.Tensor,
        cond: torch.Tensor,
        times: torch.Tensor,
        step_noise: torch.Tensor,
    ) -> torch.Tensor:
        t, prev_t = times[i : i + 1], next_timestep(times, i)  # (1,): broadcast over the batch
        # 1. eps_theta(x_t, t), the network's noise estimate (eq. 11), guided by a prefix
        eps = self.eps(policy, x, t, cond)  # (B, T, Da)
        # 2. x_{t-1} ~ q(x_{t-1} | x_t, x_0): x_0 from eq. 15 (clipped), posterior mean from
        #    eq. 7, plus sigma_t z (eq. 6, Algorithm 2 line 4); strided when prev_t < t - 1
        x = policy.schedule.ddpm_step(eps, t, x, step_noise[i], prev_t=prev_t)  # (B, T, Da)
        # 3. a prefix to inpaint: its rows replaced by the target noised to prev_t
        return self.constrain(policy, i, x, prev_t)


class DDIM(BaseSampler):
    """Deterministic DDIM, Song et al. 2021 eq. 12 with eta = 0; k = 5 by default (10 for a
    policy with leading spacing, whose DDIM 5 starts from t = 80 rather than pure noise)."""

    name = "ddim"

    @classmethod
    def default_steps(cls, cfg: PolicyConfig) -> int:
        return 5 if cfg.timestep_spacing == "trailing" else 10

    def step(
        self,
        policy: DiffusionPolicy,
        i: int,
        x: torch.Tensor,
        cond: torch.Tensor,
        times: torch.Tensor,
        step_noise: torch.Tensor,
    ) -> torch.Tensor:
        t, prev_t = times[i : i + 1], next_timestep(times, i)  # (1,)
        # 1. eps_theta(x_t, t), the network's noise estimate, guided by a prefix
        eps = self.eps(policy, x, t, cond)  # (B, T, Da)
        # 2. x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev) eps (eq. 12, sigma = 0), with
        #    x0_hat = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t) clipped ("predicted x_0")
        x = policy.schedule.ddim_step(eps, t, prev_t, x)  # (B, T, Da)
        # 3. a prefix to inpaint: its rows replaced by the target noised to prev_t
        return self.constrain(policy, i, x, prev_t)


class Consistency(BaseSampler):
    """Multistep consistency sampling, Song et al. 2023 Algorithm 1: jump from noise to x_0
    with the consistency function, then re-noise the estimate to a lower grid timestep and jump
    again. Only for a distilled policy; k in [1, len(consistency_timesteps)]."""

    name = "consistency"
    steps_limit = "the size of consistency_timesteps, the distillation grid"

    @classmethod
    def unfit_reason(cls, cfg: PolicyConfig) -> str | None:
        if cfg.consistency_timesteps is None:
            return "it is a diffusion policy; 'consistency' needs a policy distilled by scripts.distill"
        return None

    @classmethod
    def max_steps(cls, cfg: PolicyConfig) -> int:
        return len(cfg.consistency_timesteps)

    @classmethod
    def default_steps(cls, cfg: PolicyConfig) -> int:
        return cfg.num_inference_steps  # a distilled policy's sampler is always its config's

    @property
    def num_draws(self) -> int:
        return self.k - 1  # one per re-noising

    def timesteps(self, policy: DiffusionPolicy) -> torch.Tensor:
        """The grid's first (top) timestep, where the student learned to map pure noise, then
        evenly spaced grid points below it (grid 90, 80, ..., 0: k=2 -> 90, 40)."""
        grid = policy.cfg.consistency_timesteps
        points = [grid[i * len(grid) // self.k] for i in range(self.k)]
        return torch.tensor(points, device=policy.device)  # (k,)

    def step(
        self,
        policy: DiffusionPolicy,
        i: int,
        x: torch.Tensor,
        cond: torch.Tensor,
        times: torch.Tensor,
        step_noise: torch.Tensor,
    ) -> torch.Tensor:
        t = times[i : i + 1]  # (1,)
        # 1. re-noise the previous x_0 estimate to t (Algorithm 1 line 5, in the VP form of
        #    DDPM eq. 4: x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) z); the first step starts at noise
        if i > 0:
            x = policy.schedule.add_noise(x, step_noise[i - 1], t)  # (B, T, Da)
        # 2. x_0 = f_theta(x_t, t), the consistency function (Algorithm 1 lines 2 and 6), moved
        #    toward a prefix: by guidance (f estimates x_0 as x0_hat does), or by replacement
        if self.prefix is not None and self.prefix.mode == "guidance":
            ab_t = policy.schedule.alphas_cumprod.to(x.device)[t].reshape(-1, 1, 1)  # (1, 1, 1)

            def fn(xg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                x0 = policy.consistency_fn(xg, t.clone(), cond.clone())  # (B, T, Da)
                return x0, x0

            x0, move = self.prefix.correction(fn, x, ab_t, policy)
            x = x0 + move  # (B, T, Da)
        else:
            x = policy.consistency_fn(x, t, cond)  # (B, T, Da)
            if self.prefix is not None:  # inpaint: the clean estimate, so no noise
                x = self.prefix.w * self.prefix.target + (1 - self.prefix.w) * x
        # 3. clip to the normalized action range, as the diffusion samplers clip x_0
        if policy.schedule.clip_sample:
            x = x.clamp(-policy.schedule.clip_sample_range, policy.schedule.clip_sample_range)
        return x


class OneShot(BaseSampler):
    """The "mse" objective's prediction: one network evaluation on a zero chunk at timestep 0,
    so that the only input that varies is the condition (compute_loss fits this call). No
    noise, and k = 1; get_sampler picks it for every "mse" policy, whatever was asked."""

    name = "mse"
    starts_from_noise = False
    steps_limit = "one network evaluation"

    @classmethod
    def unfit_reason(cls, cfg: PolicyConfig) -> str | None:
        if cfg.objective != "mse":
            return "'mse' is the one-shot prediction of objective 'mse'"
        return None

    @classmethod
    def max_steps(cls, cfg: PolicyConfig) -> int:
        return 1

    def timesteps(self, policy: DiffusionPolicy) -> torch.Tensor:
        return torch.zeros(1, dtype=torch.long, device=policy.device)  # (1,): timestep 0

    def step(
        self,
        policy: DiffusionPolicy,
        i: int,
        x: torch.Tensor,
        cond: torch.Tensor,
        times: torch.Tensor,
        step_noise: torch.Tensor,
    ) -> torch.Tensor:
        # 1. the chunk is the network's output for the zero chunk x at timestep 0
        return policy.denoise(x, times[i : i + 1], cond)  # (B, T, Da)


# The registry: a new sampler is a class above plus its entry here (and its name in
# SamplerName, for type checkers).
SAMPLERS: dict[str, type[BaseSampler]] = {s.name: s for s in (DDPM, DDIM, Consistency, OneShot)}


def sampler_class(name: str) -> type[BaseSampler]:
    """The registered sampler called `name`; unknown names are refused with the known ones."""
    if name not in SAMPLERS:
        known = ", ".join(repr(n) for n in SAMPLERS)
        raise ValueError(f"unknown sampler {name!r}; use one of {known}")
    return SAMPLERS[name]


def get_sampler(
    cfg: PolicyConfig, name: SamplerName | None = None, k: int | None = None
) -> BaseSampler:
    """The sampler predict_action runs for a policy with config `cfg`: the one place a
    sampler is chosen. name None takes the config's sampler; k None takes the config's
    num_inference_steps for the config's own sampler, else the sampler's default (K for DDPM,
    5 for DDIM, 10 with leading spacing); k = 0 is refused. An "mse" policy runs OneShot whatever the name and k
    (an unknown name is still refused)."""
    if name is not None:
        sampler_class(name)
    if cfg.objective == "mse":
        name, k = OneShot.name, None
    cls = sampler_class(name or cfg.sampler)
    cls.check_fits(cfg)
    if k is None and cls.name == cfg.sampler:
        k = cfg.num_inference_steps
    if k is None:
        k = cls.default_steps(cfg)
    cls.check_steps(cfg, k)  # k = 0 is refused, not read as the default
    return cls(k)


__all__ = [
    "DDIM",
    "DDPM",
    "PREFIX_MODES",
    "SAMPLERS",
    "BaseSampler",
    "Consistency",
    "OneShot",
    "Prefix",
    "PrefixMode",
    "SamplerName",
    "get_sampler",
    "next_timestep",
    "sampler_class",
]
