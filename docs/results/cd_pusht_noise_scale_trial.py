"""The trial behind docs/distillation.md's "smaller initial noise" row: a distilled policy's
1-step sampler with its initial noise multiplied by a scale, on PushT's training-check seeds
(101000-101049, not the held-out ones), Ta = 2, sampler-noise seeds 0-2.

    python docs/results/cd_pusht_noise_scale_trial.py outputs/runs/pusht_cd14k_huber \
        docs/results/cd_pusht_noise_scale_trial.json [SCALE ...]

The project has no option for this. The trial wraps the policy's predict_action and passes it
the initial noise as `noise=`: drawn from the same per-episode generators, and in the same way,
as predict_action draws it itself, then multiplied by the scale exactly once. With one
consistency step the sampler draws nothing else, so scale 1.0 is the unmodified sampler.

The first version of this script patched the module's noise helper instead. That helper calls
itself once per row when given one generator per episode (as rollouts do), so the patched
function multiplied twice and the initial noise was scaled by scale**2. The recorded JSON was
measured with that version: its requested scales 1.0, 0.7, 0.5, 0.3 were in effect 1.0, 0.49,
0.25, 0.09. The default SCALES below are those effective values, so that this version repeats
the recorded measurement.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from collections.abc import Sequence
from contextlib import contextmanager

import torch

from dplite.envs import EVAL_SEED_START
from dplite.envs.evaluate import evaluate_policy
from dplite.envs.tasks import task_from_metadata
from dplite.policy.actor import PolicyActor
from dplite.policy.diffusion import DiffusionPolicy

SCALES = (1.0, 0.49, 0.25, 0.09)
NOISE_SEEDS = (0, 1, 2)


def initial_noise(
    shape: tuple[int, ...],
    generator: torch.Generator | Sequence[torch.Generator] | None,
    device: torch.device,
) -> torch.Tensor:
    """The draw predict_action makes for its initial sample: one row per generator when given
    a sequence of them (each row depends on its own generator only), else one draw."""
    if generator is None:
        return torch.randn(shape, device=device)
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=generator.device).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
    rows = [torch.randn((1, *shape[1:]), generator=g, device=g.device) for g in generator]
    return torch.cat(rows).to(device)


@contextmanager
def scaled_initial_noise(policy: DiffusionPolicy, scale: float):
    """Within the block, policy.predict_action starts from `scale` times its usual noise."""
    original = policy.predict_action

    def predict_action(
        obs, sampler=None, num_inference_steps=None, generator=None, noise=None, **kw
    ):
        if noise is None:
            batch = next(iter(obs.values())).shape[0]
            shape = (batch, policy.cfg.horizon, policy.cfg.action_dim)
            noise = initial_noise(shape, generator, policy.device)
        return original(
            obs, sampler, num_inference_steps, generator=generator, noise=noise * scale, **kw
        )

    policy.predict_action = predict_action  # an instance attribute: shadows the method
    try:
        yield
    finally:
        del policy.predict_action


def main(checkpoint: str, out: str, scales: Sequence[float] = SCALES) -> None:
    policy = DiffusionPolicy.from_pretrained(checkpoint)
    spec = task_from_metadata(policy.metadata)
    seeds = list(range(EVAL_SEED_START + 1000, EVAL_SEED_START + 1050))
    runs = []
    for scale in scales:
        rates = []
        with scaled_initial_noise(policy, scale):
            for noise_seed in NOISE_SEEDS:
                actor = PolicyActor(policy, "consistency", 1, noise_seed, n_action_steps=2)
                summary, _ = evaluate_policy(actor, spec, seeds)
                rates.append(summary["success_rate"])
        runs.append(
            {"scale": scale, "success_by_noise_seed": rates, "success": sum(rates) / len(rates)}
        )
        print(f"scale {scale}: {rates} mean {sum(rates) / len(rates):.3f}", flush=True)
    what = (
        f"1-step consistency sampler of {checkpoint}, initial noise times scale (applied once); "
        f"PushT, seeds {seeds[0]}-{seeds[-1]}, Ta 2, noise seeds {list(NOISE_SEEDS)}, "
        "50 episodes each"
    )
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    info = {
        "what": what,
        "machine": machine,
        "date": datetime.date.today().isoformat(),
        "runs": runs,
    }
    with open(out, "w") as f:
        json.dump(info, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], [float(s) for s in sys.argv[3:]] or SCALES)
