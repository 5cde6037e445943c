"""The "bf16" inference backend (DiffusionPolicy.use_backend: the network under bfloat16
autocast) against its oracle, the float32 network: both UNet sizes of the benchmark and the
transformer at batch 1 and 50; never a stale weight; gradients still in float32.

Tolerance. bfloat16 keeps 8 significant bits (unit roundoff 2^-9 = 0.2 %); autocast rounds the
inputs and weights of every matmul and convolution and accumulates in float32, so one network
evaluation lands within 2 % (relative, in the 2-norm over the batch) of the float32 one;
measured: 0.7-1.2 %. Whole chunks are not compared: the x_0 estimate divides eps by
sqrt(alpha_bar_t) (about 0.006 at t = 99), so a random network's chunks can cross the clip
boundary apart. What a trained policy does with bf16 is measured on PushT success instead
(docs/benchmarks.md).
"""

import pytest
import torch

from dplite.policy.diffusion import DiffusionPolicy, PolicyConfig
from dplite.policy.fast_layers import fast_paths_disabled
from dplite.scripts.benchmark.models import NETWORKS, OBS_SHAPES

REL_TOL = 2e-2


def _policy(network: dict) -> DiffusionPolicy:
    torch.manual_seed(0)
    return DiffusionPolicy(PolicyConfig(obs_shapes=OBS_SHAPES, action_dim=2, **network)).eval()


def _rel_err(policy: DiffusionPolicy, batch: int, t: int) -> float:
    """bf16's relative error against the plain float32 network (every fast path off: it reads
    the weights themselves) on one evaluation."""
    g = torch.Generator().manual_seed(batch + t)
    x = torch.randn(batch, 16, 2, generator=g)
    cond = torch.randn(batch, policy.cfg.global_cond_dim, generator=g)
    with torch.inference_mode():
        with fast_paths_disabled():
            ref = policy.use_backend("eager").denoise(x, torch.tensor([t]), cond)
        out = policy.use_backend("bf16").denoise(x, torch.tensor([t]), cond)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert not torch.equal(out, ref)  # it did run in bfloat16
    return ((out - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize(
    "name", ["5.4M", pytest.param("65.8M", marks=pytest.mark.slow), "transformer 9.0M"]
)
@pytest.mark.parametrize("batch", [1, 50])
def test_one_evaluation_is_the_float32_one_within_bf16_rounding(name, batch):
    policy = _policy(NETWORKS[name])
    for t in (0, 37, 99):
        assert _rel_err(policy, batch, t) < REL_TOL, (name, batch, t)


def test_it_reads_the_weights_of_every_call_and_guidance_stays_float32():
    policy = _policy({"down_dims": (16, 32, 64), "diffusion_step_embed_dim": 32})
    dc = policy.cfg.global_cond_dim
    with torch.inference_mode():  # the eager fast layers build their caches
        policy.use_backend("eager").denoise(torch.zeros(4, 16, 2), 50, torch.zeros(4, dc))
    before = _rel_err(policy, 4, 50)
    with torch.no_grad():
        for p in policy.net.parameters():
            p.mul_(1.5)  # an in-place write that no cache could see
    assert _rel_err(policy, 4, 50) < REL_TOL and before < REL_TOL
    # rtc guidance needs gradients, so its network calls run in float32 whatever the backend:
    # a guided chunk under bf16 is the eager one, bit for bit
    obs = {k: torch.randn(2, 2, *s) for k, s in OBS_SHAPES.items()}
    prefix, chunks = torch.randn(2, 4, 2), []
    for backend in ("eager", "bf16"):
        gen = torch.Generator().manual_seed(0)
        out = policy.use_backend(backend).predict_action(
            obs, "ddim", 3, generator=gen, prefix=prefix, prefix_mode="guidance"
        )
        chunks.append(out["action_pred"])
    assert torch.equal(*chunks)
