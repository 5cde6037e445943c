"""Tests for the captured sampling loop (policy/cuda_graphs.py, DiffusionPolicy.use_cuda_graphs).

On any machine: predict_action's loop, which pre-draws all its noise so that a graph can replay
it, equals a loop written here from the schedule's step functions with python-int timesteps,
draw for draw; the fast-path switch gives the plain layers; asking for graphs on the CPU is
refused with a message. On a CUDA machine (scripts/gpu_check.sh runs this file there): the
replayed graph gives the eager chunk, sees in-place weight writes, and captures again after
the parameters are replaced.
"""

import pytest
import torch
import torch.nn.functional as F

from dplite.policy.diffusion import DiffusionPolicy, PolicyConfig
from dplite.policy.fast_layers import BatchedFiLM, FastConv1d, fast_paths_disabled

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

OBS = {"s": (3,)}
GRID = (90, 70, 50, 30, 10)


def _policy(
    distilled: bool = False, seed: int = 0, objective: str = "diffusion"
) -> DiffusionPolicy:
    torch.manual_seed(seed)
    extra = dict(consistency_timesteps=GRID, sampler="consistency", num_inference_steps=1)
    cfg = PolicyConfig(
        objective=objective,
        obs_shapes=OBS,
        action_dim=2,
        horizon=8,
        n_obs_steps=2,
        n_action_steps=4,
        down_dims=(16, 32),
        diffusion_step_embed_dim=16,
        timestep_spacing="leading",  # what _hand_loop lists
        **(extra if distilled else {}),
    )
    return DiffusionPolicy(cfg).eval()


def _obs(batch: int, device="cpu") -> dict:
    return {"s": torch.randn(batch, 2, 3, generator=torch.Generator().manual_seed(1)).to(device)}


def _hand_loop(policy: DiffusionPolicy, obs, sampler: str, k: int, seed: int) -> torch.Tensor:
    """predict_action's contract, written out: the initial noise is the generator's first draw,
    then each DDPM step (or consistency re-noising) draws its noise in step order."""
    gen = torch.Generator().manual_seed(seed)
    sched, cfg = policy.schedule, policy.cfg
    shape = (obs["s"].shape[0], cfg.horizon, cfg.action_dim)
    with torch.no_grad():
        cond = policy.encode_obs(obs)
        x = torch.randn(shape, generator=gen)
        if sampler == "consistency":
            for i, t in enumerate(policy.consistency_timesteps(k)):
                if i > 0:
                    x = sched.add_noise(x, torch.randn(shape, generator=gen), t)
                x = policy.consistency_fn(x, t, cond).clamp(-1, 1)
        else:
            stride = cfg.num_train_timesteps // k
            for t in range(stride * (k - 1), -1, -stride):
                eps = policy.net(x, t, cond)
                if sampler == "ddpm":
                    z = torch.randn(shape, generator=gen)
                    x = sched.ddpm_step(eps, t, x, z, prev_t=t - stride)
                else:
                    x = sched.ddim_step(eps, t, t - stride, x)
    return policy.normalizer.unnormalize("action", x)


@pytest.mark.parametrize(
    "distilled, sampler, k", [(False, "ddpm", 5), (False, "ddim", 4), (True, "consistency", 3)]
)
def test_loop_draws_noise_in_step_order_and_matches_the_schedule_steps(distilled, sampler, k):
    policy = _policy(distilled)
    obs = _obs(3)
    out = policy.predict_action(obs, sampler, k, generator=torch.Generator().manual_seed(7))
    expected = _hand_loop(policy, obs, sampler, k, seed=7)
    torch.testing.assert_close(out["action_pred"], expected, rtol=1e-5, atol=1e-5)
    # one generator per row (what scripts.eval passes): row i is the one-row loop on seed i
    gens = [torch.Generator().manual_seed(s) for s in (11, 12, 13)]
    out = policy.predict_action(obs, sampler, k, generator=gens)["action_pred"]
    for i, s in enumerate((11, 12, 13)):
        row = {"s": obs["s"][i : i + 1]}
        torch.testing.assert_close(
            out[i : i + 1], _hand_loop(policy, row, sampler, k, seed=s), rtol=1e-5, atol=1e-5
        )


def test_fast_paths_disabled_runs_the_plain_layers():
    torch.manual_seed(0)
    conv = FastConv1d(8, 12, 5, padding=2).eval()
    film = BatchedFiLM([torch.nn.Linear(6, 4), torch.nn.Linear(6, 2)]).eval()
    x, cond = torch.randn(1, 8, 16), torch.randn(1, 6)
    with torch.inference_mode(), fast_paths_disabled():
        y = conv(x)
        assert film(cond) == [None, None]  # the caller runs its own Linears
        with fast_paths_disabled():  # nests: still off after the inner block
            pass
        conv(x)
        assert conv._fast is None and film._fast is None
        torch.testing.assert_close(
            y, F.conv1d(x, conv.weight, conv.bias, padding=2), rtol=0, atol=0
        )
    with torch.inference_mode():
        conv(x)
    assert conv._fast is not None  # on again after the block


def test_graphs_on_the_cpu_are_refused_with_a_message():
    policy = _policy().use_cuda_graphs()
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        policy.predict_action(_obs(1))
    # trajectories are always eager, and switching off restores eager sampling
    k = policy.cfg.num_inference_steps  # the noise, then one chunk per step
    assert len(policy.predict_action(_obs(1), return_trajectory=True)["trajectory"]) == k + 1
    policy.use_cuda_graphs(False).predict_action(_obs(1))
    # the MSE baseline's one call is a sampler like the others: graphed too
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        _policy(objective="mse").use_cuda_graphs().predict_action(_obs(1))


@pytest.fixture
def fp32_cuda():
    """Full-precision cuDNN / cuBLAS: with TF32 (cuDNN's default for convolutions) two runs that
    pick different algorithms differ by ~1e-4, which would hide a real mismatch."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@cuda
@pytest.mark.parametrize(
    "distilled, sampler, k, batch",
    [
        (False, "ddim", 10, 1),
        (False, "ddpm", 20, 3),
        (True, "consistency", 2, 4),
        (False, "mse", 1, 2),
    ],
)
def test_graph_replays_the_eager_chunk(fp32_cuda, distilled, sampler, k, batch):
    objective = "mse" if sampler == "mse" else "diffusion"
    policy = _policy(distilled, objective=objective).cuda()
    obs = [_obs(batch, "cuda"), {"s": torch.randn(batch, 2, 3, device="cuda")}]

    def sample(o, seed):
        gen = torch.Generator("cuda").manual_seed(seed)
        return policy.predict_action(o, sampler, k, generator=gen)["action_pred"]

    calls = [(0, 0), (1, 1), (0, 1)]  # (observation, noise seed): capture, then two replays
    with fast_paths_disabled():  # the layers the graph records (no batched FiLM matmul)
        eager = [sample(obs[o], seed) for o, seed in calls]
    policy.use_cuda_graphs()
    graphed = [sample(obs[o], seed) for o, seed in calls]
    assert len(policy._graphs) == 1
    for g, e in zip(graphed, eager, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    if sampler != "mse":  # the one-shot call draws no noise
        assert not torch.allclose(graphed[0], graphed[2])  # new noise is copied in each call
    # a shrinking batch (episodes that finish) replays the same graph, padded
    if batch > 1:
        small = {"s": obs[1]["s"][:2]}
        with fast_paths_disabled():
            policy.use_cuda_graphs(False)
            expected = sample(small, 5)
        policy.use_cuda_graphs()
        sample(obs[0], 0)  # capture at the full batch
        graph = next(iter(policy._graphs.values()))
        torch.testing.assert_close(sample(small, 5), expected, rtol=1e-5, atol=1e-5)
        assert list(policy._graphs.values()) == [graph]


@cuda
def test_graph_sees_in_place_weight_writes_and_recaptures_after_replacement(fp32_cuda):
    policy = _policy().cuda().use_cuda_graphs()
    obs, noise = _obs(2, "cuda"), torch.randn(2, 8, 2, device="cuda")
    before = policy.predict_action(obs, noise=noise)["action_pred"]
    graph = next(iter(policy._graphs.values()))
    other = _policy(seed=1).cuda()
    with torch.no_grad():
        for p, q in zip(policy.net.parameters(), other.net.parameters(), strict=True):
            p.copy_(q)  # in place, as an optimizer or EMA.update writes: same graph, new weights
    after = policy.predict_action(obs, noise=noise)["action_pred"]
    assert next(iter(policy._graphs.values())) is graph
    with fast_paths_disabled():
        expected = other.predict_action(obs, noise=noise)["action_pred"]
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after, before)
    # new parameter memory (as .to() gives): the graph would read the old memory, which is
    # zeroed here, so only a fresh capture can give the expected chunk
    old = []
    with torch.no_grad():
        for p in policy.net.parameters():
            old.append(p.data)
            p.data = p.data.clone()
        for o in old:
            o.zero_()
    again = policy.predict_action(obs, noise=noise)["action_pred"]
    assert next(iter(policy._graphs.values())) is not graph
    torch.testing.assert_close(again, expected, rtol=1e-5, atol=1e-5)
