"""The trial behind README's "Not a smaller initial noise": a distilled policy's 1-step sampler with
its initial noise multiplied by a scale, on PushT's training-check seeds (not the held-out ones).

    python docs/results/cd_pusht_noise_scale_trial.py outputs/runs/pusht_cd14k_huber \
        docs/results/cd_pusht_noise_scale_trial.json

The project has no option for this; the trial patches the sampler's noise draw. With one step
the consistency sampler draws only the initial noise, so the patch scales exactly that.
"""

import json
import sys

import policy.diffusion as diffusion
from envs import EVAL_SEED_START
from scripts.eval import evaluate_policy, policy_task

SCALES = (1.0, 0.7, 0.5, 0.3)
NOISE_SEEDS = (0, 1, 2)


def main(checkpoint: str, out: str) -> None:
    policy = diffusion.DiffusionPolicy.from_pretrained(checkpoint)
    spec = policy_task(policy)
    seeds = list(range(EVAL_SEED_START + 1000, EVAL_SEED_START + 1050))
    draw = diffusion._randn
    runs = []
    for scale in SCALES:
        diffusion._randn = lambda *args, scale=scale: draw(*args) * scale
        rates = []
        for noise_seed in NOISE_SEEDS:
            summary, _ = evaluate_policy(
                policy, spec, seeds, "consistency", 1, noise_seed=noise_seed, n_action_steps=2
            )
            rates.append(summary["success_rate"])
        runs.append(
            {"scale": scale, "success_by_noise_seed": rates, "success": sum(rates) / len(rates)}
        )
        print(f"scale {scale}: {rates} mean {sum(rates) / len(rates):.3f}", flush=True)
    diffusion._randn = draw
    what = (
        f"1-step consistency sampler of {checkpoint}, initial noise times scale; PushT, "
        f"seeds {seeds[0]}-{seeds[-1]}, Ta 2, noise seeds {list(NOISE_SEEDS)}, 50 episodes each"
    )
    info = {"what": what, "machine": "2-core AMD EPYC, no GPU", "date": "2026-11-26", "runs": runs}
    with open(out, "w") as f:
        json.dump(info, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
