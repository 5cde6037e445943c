"""A DiffusionPolicy as a rollout actor: numpy observations in, numpy actions out.

The batched rollout (envs/evaluate.py, envs/rollout.py) knows no torch; this adapter moves
each batch of observations to the policy's device, samples a chunk and returns every action
from the newest observation on, of which the rollout executes Ta (more under an inference
delay). Sampler noise is drawn per episode from a generator fixed by (noise seed, episode
seed), so an episode's result does not depend on which other episodes share its batch.

For real-time chunking the rollout passes ``prefix`` (B, P, Da) and ``prefix_weights`` (P,),
aligned with the first returned action; the actor shifts them to chunk index To - 1 (the
earlier indices, before the newest observation, stay free) and samples with
DiffusionPolicy.predict_action's prefix, by ``rtc_method`` guidance, inpainting or (for a
policy trained with committed prefixes) conditioning.
"""

from __future__ import annotations

import numpy as np
import torch

from dplite.policy.diffusion import DiffusionPolicy, Sampler
from dplite.policy.samplers import PREFIX_MODES, RTC_MAX_GUIDANCE, PrefixMode


def episode_generator(noise_seed: int, episode_seed: int, device: torch.device) -> torch.Generator:
    """The sampler noise of one episode: a stream fixed by (noise seed, episode seed) only."""
    seed = int(np.random.SeedSequence([noise_seed, episode_seed]).generate_state(1, np.uint64)[0])
    return torch.Generator(device).manual_seed(seed)


class PolicyActor:
    """``policy`` sampled with (sampler, k) as an envs.evaluate actor. The policy is put in
    eval mode until ``close``. A sampler that does not fit the policy, or a Ta outside
    [1, T - To + 1], is refused here, before any episode. ``rtc_method`` and
    ``max_guidance`` say how a prefix is enforced (only used when the rollout passes one)."""

    accepts_prefix = True

    def __init__(
        self,
        policy: DiffusionPolicy,
        sampler: Sampler | None = None,
        inference_steps: int | None = None,
        noise_seed: int = 0,
        n_action_steps: int | None = None,
        rtc_method: PrefixMode = "guidance",
        max_guidance: float = RTC_MAX_GUIDANCE,
    ) -> None:
        cfg = policy.cfg
        self.n_action_steps = cfg.n_action_steps if n_action_steps is None else n_action_steps
        if not 1 <= self.n_action_steps <= cfg.horizon - cfg.n_obs_steps + 1:
            raise ValueError(
                f"n_action_steps={self.n_action_steps} must be in [1, T - To + 1 = "
                f"{cfg.horizon - cfg.n_obs_steps + 1}]"
            )
        if rtc_method not in PREFIX_MODES:
            raise ValueError(f"unknown rtc_method {rtc_method!r}; use one of {PREFIX_MODES}")
        self.rtc_method, self.max_guidance = rtc_method, max_guidance
        # what will run, e.g. ("mse", 1) for the regression baseline
        used, k = policy.sampler_settings(sampler, inference_steps)
        if rtc_method == "conditioned":
            policy.check_conditioned(used)  # before any episode, not at the first prefix
        self.policy, self.sampler, self.inference_steps = policy, sampler, inference_steps
        self.noise_seed = noise_seed
        self.n_obs_steps = cfg.n_obs_steps
        self.obs_shapes = cfg.obs_shapes
        self.action_dim = cfg.action_dim
        self.info = {"sampler": used, "inference_steps": k}
        self.generators: dict[int, torch.Generator] = {}
        self.was_training = policy.training
        policy.eval()

    def __call__(
        self,
        obs: dict[str, np.ndarray],
        seeds: np.ndarray,
        prefix: np.ndarray | None = None,
        prefix_weights: np.ndarray | None = None,
    ) -> np.ndarray:
        dev = self.policy.device
        batch = {k: torch.from_numpy(obs[k]).to(dev) for k in self.obs_shapes}  # (B, To, ...)
        gens = [
            self.generators.setdefault(int(s), episode_generator(self.noise_seed, int(s), dev))
            for s in seeds
        ]
        kwargs = {}
        if prefix is not None:
            # the rollout's actions start at chunk index To - 1: free rows before them
            prefix = np.asarray(prefix, dtype=np.float32)  # (B, P, Da)
            P, skip = prefix.shape[1], self.n_obs_steps - 1
            w = np.ones(P) if prefix_weights is None else np.asarray(prefix_weights, np.float32)
            kwargs = {
                "prefix": np.concatenate([np.zeros_like(prefix[:, :skip]), prefix], axis=1)
                if skip
                else prefix,  # (B, To - 1 + P, Da)
                "prefix_weights": np.concatenate([np.zeros(skip, np.float32), w]),
                "prefix_mode": self.rtc_method,
                "max_guidance": self.max_guidance,
            }
        out = self.policy.predict_action(
            batch, self.sampler, self.inference_steps, generator=gens, **kwargs
        )
        # every action from the newest observation on; the rollout executes n_action_steps
        return out["action_pred"][:, self.n_obs_steps - 1 :].float().cpu().numpy()

    def close(self) -> None:
        self.policy.train(self.was_training)
