"""Noise schedule and samplers for epsilon-prediction diffusion.

Follows DDPM (Ho et al. 2020, arXiv 2006.11239) for the forward process, the posterior and the
ancestral step, DDIM (Song et al. 2021, arXiv 2010.02502) for the deterministic (eta = 0) or
partly stochastic step, and the cosine schedule of Nichol & Dhariwal 2021 (arXiv 2102.09672),
named "squaredcos_cap_v2" as in diffusers. The numbers match diffusers' DDPMScheduler and
DDIMScheduler (epsilon prediction, set_alpha_to_one=True, steps_offset=0, "leading" spacing).

Tables are built and kept in float64 so that coefficients such as 1 / sqrt(alpha_bar_t) stay
accurate where alpha_bar_t is tiny; each coefficient is cast to the dtype of the sample it
multiplies. Randomness is always the caller's: every step takes its noise as an argument.
"""

from __future__ import annotations

import logging
import math
from fractions import Fraction
from typing import Literal

import torch

logger = logging.getLogger(__name__)

BetaSchedule = Literal["linear", "squaredcos_cap_v2"]
VarianceType = Literal["fixed_small", "fixed_large"]
Sampler = Literal["ddpm", "ddim"]
Timestep = int | torch.Tensor  # python int, 0-d or (B,) long tensor
BETA_SCHEDULES = ("linear", "squaredcos_cap_v2")
VARIANCE_TYPES = ("fixed_small", "fixed_large")
SAMPLERS = ("ddpm", "ddim")
Spacing = Literal["leading", "trailing"]
SPACINGS = ("leading", "trailing")


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Betas of Nichol & Dhariwal 2021, eq. 17: alpha_bar(u) = cos((u + s) / (1 + s) * pi / 2)^2.

    beta_t = 1 - alpha_bar((t + 1) / K) / alpha_bar(t / K), capped at max_beta so that the last
    step (where alpha_bar reaches 0) stays finite. Returns (K,) float64.
    """
    u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps  # (K + 1,)
    alpha_bar = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # (K + 1,)
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)  # (K,)


class NoiseSchedule:
    """Forward process q(x_t | x_0), posterior q(x_{t-1} | x_t, x_0) and DDPM / DDIM steps.

    Timesteps t run 0 .. K-1 (K = num_train_timesteps); a negative previous timestep means "x_0",
    whose alpha_bar is 1. Every method takes t as a python int, a 0-d tensor or a (B,) long
    tensor, and broadcasts over any trailing shape of the samples, e.g. (B, T, Da).
    """

    def __init__(
        self,
        num_train_timesteps: int = 100,
        beta_schedule: BetaSchedule = "squaredcos_cap_v2",
        beta_start: float = 1e-4,
        beta_end: float = 2e-2,
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        variance_type: VarianceType = "fixed_small",
    ) -> None:
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps={num_train_timesteps!r}; expected an int >= 1")
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule={beta_schedule!r}; expected one of {BETA_SCHEDULES}")
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"variance_type={variance_type!r}; expected one of {VARIANCE_TYPES}")
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(
                f"beta_start={beta_start}, beta_end={beta_end}; "
                "expected 0 < beta_start <= beta_end < 1"
            )
        if clip_sample_range <= 0:
            raise ValueError(f"clip_sample_range={clip_sample_range}; expected > 0")
        self.num_train_timesteps = num_train_timesteps
        self.beta_schedule = beta_schedule
        self.clip_sample = clip_sample
        self.clip_sample_range = clip_sample_range
        self.variance_type = variance_type

        K = num_train_timesteps
        if beta_schedule == "linear":  # DDPM paper, sec. 4: 1e-4 .. 0.02 over K steps
            betas = torch.linspace(beta_start, beta_end, K, dtype=torch.float64)  # (K,)
        else:
            betas = cosine_betas(K)  # (K,)
        self._alpha_bar = torch.cumprod(1 - betas, dim=0)  # (K,) float64, used by all the math
        self.betas = betas.float()  # (K,)
        self.alphas = (1 - betas).float()  # (K,)
        self.alphas_cumprod = self._alpha_bar.float()  # (K,)
        logger.debug(
            "NoiseSchedule %s K=%d alpha_bar[-1]=%.3g", beta_schedule, K, self._alpha_bar[-1]
        )

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """Move the tables to `device` (done lazily on first use otherwise). Returns self."""
        device = torch.device(device)
        # MPS has no float64; the float32 table is the best it can do.
        table = self._alpha_bar if device.type != "mps" else self._alpha_bar.float()
        self._alpha_bar = table.to(device)
        self.betas, self.alphas = self.betas.to(device), self.alphas.to(device)
        self.alphas_cumprod = self.alphas_cumprod.to(device)
        return self

    @property
    def tables(self) -> tuple[torch.Tensor, ...]:
        """The tensors the step functions read (replaced, not written, by `to`)."""
        return self._alpha_bar, self.betas, self.alphas, self.alphas_cumprod

    # ------------------------------------------------------------------ table look-ups
    def _t(self, t: Timestep, ref: torch.Tensor, lo: float = 0) -> torch.Tensor:
        """t as a long tensor on the tables' device (moving the tables to ref's device).

        Python ints are range-checked here (any negative prev_t means x_0); tensors are not,
        since that would sync a GPU.
        """
        if self._alpha_bar.device != ref.device:
            self.to(ref.device)
        if isinstance(t, torch.Tensor):
            if t.is_floating_point() or t.is_complex():
                raise ValueError(f"timesteps must be an integer tensor, got dtype {t.dtype}")
            return t.to(self._alpha_bar.device, torch.long)
        if not lo <= t < self.num_train_timesteps:
            raise ValueError(f"timestep {t} outside [{lo}, {self.num_train_timesteps - 1}]")
        return torch.tensor(t, device=self._alpha_bar.device)

    def _alpha_bars(
        self, t: Timestep, prev_t: Timestep | None, ref: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """float64 alpha_bar_t and alpha_bar_prev (1 where prev_t < 0), shaped () or (B, 1, ...)."""
        t = self._t(t, ref)
        prev_t = t - 1 if prev_t is None else self._t(prev_t, ref, lo=-math.inf)
        ab_t = self._alpha_bar[t]  # () or (B,)
        ab_prev = torch.where(prev_t >= 0, self._alpha_bar[prev_t.clamp(min=0)], 1.0)
        # trailing singleton axes so that (B,) coefficients broadcast over (B, T, Da)
        n = ref.ndim - ab_t.ndim
        return ab_t.reshape(*ab_t.shape, *[1] * n), ab_prev.reshape(*ab_prev.shape, *[1] * n)

    # ------------------------------------------------------------------ forward process
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: Timestep) -> torch.Tensor:
        """q_sample, DDPM eq. 4: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
        ab_t, _ = self._alpha_bars(t, None, x0)
        return _c(ab_t.sqrt(), x0) * x0 + _c((1 - ab_t).sqrt(), x0) * noise  # (B, ...)

    def predict_x0(self, eps: torch.Tensor, t: Timestep, x_t: torch.Tensor) -> torch.Tensor:
        """DDPM eq. 15 for x_0: x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        ab_t, _ = self._alpha_bars(t, None, x_t)
        return _x0_from_eps(eps, x_t, ab_t)  # (B, ...)

    def predict_x0_from_v(self, v: torch.Tensor, t: Timestep, x_t: torch.Tensor) -> torch.Tensor:
        """x_0 from a velocity v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans &
        Ho 2022, arXiv 2202.00512): x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v. Unlike
        eq. 15 it never divides by sqrt(alpha_bar_t), so it stays well conditioned at high noise."""
        ab_t, _ = self._alpha_bars(t, None, x_t)
        return _c(ab_t.sqrt(), x_t) * x_t - _c((1 - ab_t).sqrt(), x_t) * v  # (B, ...)

    def _posterior_terms(
        self, ab_t: torch.Tensor, ab_prev: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """DDPM eq. 7 between t and prev_t: (x_0 coefficient, x_t coefficient, beta_tilde, beta)."""
        alpha = ab_t / ab_prev  # one (possibly strided) step's alpha_t
        beta = 1 - alpha
        coef_x0 = ab_prev.sqrt() * beta / (1 - ab_t)
        coef_xt = alpha.sqrt() * (1 - ab_prev) / (1 - ab_t)
        return coef_x0, coef_xt, (1 - ab_prev) / (1 - ab_t) * beta, beta

    def posterior(
        self,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: Timestep,
        prev_t: Timestep | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q(x_{prev_t} | x_t, x_0), DDPM eq. 6-7: (mean (B, ...), variance beta_tilde (B, 1, ...)).

        prev_t defaults to t - 1; the variance is the true posterior one whatever variance_type.
        """
        ab_t, ab_prev = self._alpha_bars(t, prev_t, x_t)
        coef_x0, coef_xt, var, _ = self._posterior_terms(ab_t, ab_prev)
        return _c(coef_x0, x_t) * x0 + _c(coef_xt, x_t) * x_t, _c(var, x_t)

    # ------------------------------------------------------------------ samplers
    def ddpm_step(
        self,
        eps: torch.Tensor,
        t: Timestep,
        x_t: torch.Tensor,
        noise: torch.Tensor,
        prev_t: Timestep | None = None,
    ) -> torch.Tensor:
        """One ancestral step x_t -> x_{prev_t} (DDPM Algorithm 2); prev_t defaults to t - 1.

        With k < K inference steps pass prev_t = t - K // k (diffusers' strided DDPM). `noise`
        (~ N(0, I), shaped like x_t) is not used where t == 0, the step that lands on x_0.
        """
        # 1. alpha/beta products: alpha_bar_t, alpha_bar_prev (= 1 past x_0)
        ab_t, ab_prev = self._alpha_bars(t, prev_t, x_t)
        # 2. x_0 from eps, eq. 15: x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)
        x0 = _x0_from_eps(eps, x_t, ab_t)  # (B, ...)
        # 3. clip: actions are normalized to [-1, 1], so an x_0 outside is known to be wrong
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        # 4. posterior mean, eq. 7: mu = sqrt(ab_prev) beta / (1 - ab_t) x_0
        #                               + sqrt(alpha) (1 - ab_prev) / (1 - ab_t) x_t
        coef_x0, coef_xt, beta_tilde, beta = self._posterior_terms(ab_t, ab_prev)
        mean = _c(coef_x0, x_t) * x0 + _c(coef_xt, x_t) * x_t  # (B, ...)
        # 5. add variance, sec. 3.2: sigma^2 = beta_tilde (fixed_small) or beta (fixed_large);
        #    no noise on the step to x_0 (Algorithm 2, "z = 0 if t = 1")
        var = beta_tilde if self.variance_type == "fixed_small" else beta
        t_long = self._t(t, x_t)
        std = var.sqrt() * (t_long > 0).reshape(*t_long.shape, *[1] * (var.ndim - t_long.ndim))
        return mean + _c(std, x_t) * noise  # (B, ...)

    def ddim_step(
        self,
        eps: torch.Tensor,
        t: Timestep,
        prev_t: Timestep,
        x_t: torch.Tensor,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One DDIM step x_t -> x_{prev_t} (DDIM eq. 12); prev_t < 0 jumps to x_0.

        eta = 0 is deterministic; eta > 0 needs `noise` (~ N(0, I), shaped like x_t).
        """
        if eta < 0:
            raise ValueError(f"eta={eta}; expected >= 0")
        if eta > 0 and noise is None:
            raise ValueError(f"ddim_step with eta={eta} > 0 needs noise shaped like x_t")
        # 1. alpha/beta products
        ab_t, ab_prev = self._alpha_bars(t, prev_t, x_t)
        # 2. x_0 from eps ("predicted x_0" of eq. 12)
        x0 = _x0_from_eps(eps, x_t, ab_t)  # (B, ...)
        # 3. clip
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        # 4. sigma_t, eq. 16: eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev)
        sigma = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).sqrt()
        # 5. eq. 12: sqrt(ab_prev) x_0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z
        direction = (1 - ab_prev - sigma**2).clamp(min=0).sqrt()
        x_prev = _c(ab_prev.sqrt(), x_t) * x0 + _c(direction, x_t) * eps  # (B, ...)
        return x_prev if eta == 0 else x_prev + _c(sigma, x_t) * noise

    def inference_timesteps(
        self, k: int, sampler: Sampler = "ddpm", spacing: Spacing = "leading"
    ) -> torch.Tensor:
        """k descending timesteps out of K (spaced_timesteps), on the tables' device.

        DDPM with k == K gives K-1 .. 0 with either spacing; DDIM k=10, K=100 gives 90, ..., 0
        (leading) or 99, 89, ..., 9 (trailing). Step from ts[i] to ts[i + 1] (-1 after the last).
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r}; expected one of {SAMPLERS}")
        K = self.num_train_timesteps
        if not isinstance(k, int) or not 1 <= k <= K:
            raise ValueError(f"{sampler} inference steps k={k!r}; expected an int in [1, {K}]")
        return spaced_timesteps(K, k, spacing).to(self._alpha_bar.device)  # (k,)


def spaced_timesteps(
    num_train_timesteps: int, k: int, spacing: Spacing = "leading"
) -> torch.Tensor:
    """The k of K timesteps a k-step sampler visits, descending, as a (k,) long tensor.

    The one place the spacing is computed: DDPM / DDIM (inference_timesteps) and the
    consistency distillation grid (policy/consistency.py, ddim_grid) all come from here.
    Expects 1 <= k <= K (the callers check it, with their own messages).

    * "leading" (the DDIM paper's code, diffusers' default): (k-1) s, ..., s, 0 with s = K // k.
      K=100: k=10 -> 90, 80, ..., 0; k=2 -> 50, 0; k=1 -> 0. The first step treats pure noise
      as the sample at t = (k-1) s, far below K-1 for small k.
    * "trailing" (Lin et al. 2024, arXiv 2305.08891, Sec. 3.4): round(K - i K / k) - 1 for
      i = 0 .. k-1. K=100: k=10 -> 99, 89, ..., 9; k=2 -> 99, 49; k=1 -> 99. Every k starts
      at t = K-1, where the sample is (almost) pure noise, as the first step assumes.
    """
    K = num_train_timesteps
    if spacing == "leading":
        return torch.arange(k - 1, -1, -1, dtype=torch.long) * (K // k)  # (k,)
    if spacing == "trailing":
        # exact rationals, rounded half to even like numpy's round of K - i K / k
        return torch.tensor([round(Fraction(K * (k - i), k)) - 1 for i in range(k)])  # (k,)
    raise ValueError(f"timestep spacing {spacing!r}; expected one of {SPACINGS}")


def _x0_from_eps(eps: torch.Tensor, x_t: torch.Tensor, ab_t: torch.Tensor) -> torch.Tensor:
    """DDPM eq. 15 inverted: x_0 = x_t / sqrt(alpha_bar_t) - sqrt(1 / alpha_bar_t - 1) eps."""
    return _c(ab_t.rsqrt(), x_t) * x_t - _c((1 / ab_t - 1).sqrt(), x_t) * eps  # (B, ...)


def _c(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A float64 coefficient cast to the sample's dtype and device for the multiply."""
    return coef.to(device=like.device, dtype=like.dtype)
