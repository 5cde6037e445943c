"""Policy benchmarks of dp-benchmark: predict_action latency ("inference"), image policies
("vision") and the training step ("train"), on PushT-shaped random inputs (weights do not
change the cost)."""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Sequence

import torch

from dplite.policy.diffusion import Backend, DiffusionPolicy, PolicyConfig
from dplite.policy.fast_layers import fast_paths_disabled
from dplite.policy.timing import interleaved_median_ms, median_ms

# the reference PushT low-dim setting: keypoints (9, 2) + agent position, To = 2 -> cond 40
OBS_SHAPES = {"keypoint": (9, 2), "agent_pos": (2,)}
SIZES = {"65.8M": (256, 512, 1024), "5.4M": (64, 128, 256)}
# the networks the inference section times: the UNet at both widths, the reference's PushT
# low-dim transformer (PolicyConfig's transformer defaults: 8 layers, 4 heads, 256 wide) and
# the small one the project trains on CPU (4 layers, 128 wide; docs/transformer.md)
NETWORKS = {
    **{name: {"down_dims": dims} for name, dims in SIZES.items()},
    "transformer 9.0M": {"backbone": "transformer"},
    "transformer 1.2M": {"backbone": "transformer", "n_layer": 4, "n_emb": 128},
}
# batch 1 targets of the default sampler (trailing DDIM 5, within 0.02 of DDIM 10 on PushT)
# and of the 1-step consistency student
LATENCY_TARGET_MS = {
    ("65.8M", 1, "ddim", 5): 60.0,
    ("5.4M", 1, "ddim", 5): 15.0,
    ("65.8M", 1, "consistency", 1): 25.0,
    ("5.4M", 1, "consistency", 1): 10.0,
}


def _policy(network: dict, distilled: bool = False) -> DiffusionPolicy:
    """A PushT-shaped policy with the network options `network` (PolicyConfig fields);
    `distilled`: its consistency-distilled form (same network)."""
    grid = tuple(range(90, -1, -10))
    extra = dict(consistency_timesteps=grid, sampler="consistency", num_inference_steps=1)
    cfg = PolicyConfig(
        obs_shapes=OBS_SHAPES, action_dim=2, **network, **(extra if distilled else {})
    )
    return DiffusionPolicy(cfg)


# the inference section's cells: each network at each batch with each of these (sampler, k)
BATCHES = (1, 50)
SAMPLERS = (("ddim", 5), ("ddim", 10), ("ddpm", 100), ("consistency", 1), ("consistency", 2))


def bench_inference(
    repeats: int,
    device: str = "cpu",
    backends: Sequence[Backend] = ("eager",),
    networks: Sequence[str] | None = None,
    batches: Sequence[int] = BATCHES,
    samplers: Sequence[tuple[str, int]] | None = None,
    rtc: bool = False,
) -> list[dict]:
    """predict_action latency: by default DDIM 5 (the default), DDIM 10 and DDPM 100 of a
    trained policy, and 1 and 2 steps of its consistency-distilled form (the same network;
    weights do not change the cost), for each of `networks` (names of NETWORKS, default all) at
    each batch size; `samplers` (default SAMPLERS) picks other (sampler, k).

    One row per cell, with the median ms of each mode and each mode's ratio to "plain", the
    modes timed in turns in this process (policy.timing.interleaved_median_ms: a busy machine
    slows them alike): "plain" is the same call with every fast path off
    (policy.fast_layers.fast_paths_disabled: the nn layers alone, the baseline); "eager" is
    predict_action as shipped (with the fast layers); "onnx" and "bf16" (named in `backends`)
    those backends (DiffusionPolicy.use_backend), onnx exported in the warm-up call; on CUDA,
    "graph" replays the loop as a CUDA graph (DiffusionPolicy.use_cuda_graphs), captured in
    the warm-up call. With `rtc`, the DDIM and DDPM cells also time real-time chunking's call
    ("rtc-guidance", "rtc-inpaint": predict_action with RTC_PREFIX_WEIGHTS) and report its
    ratio to "eager", the same call without a prefix."""
    cuda = torch.device(device).type == "cuda"
    rows = []
    for name in NETWORKS if networks is None else networks:
        network = NETWORKS[name]
        eager = {
            "diffusion": _policy(network).to(device).eval(),
            "distilled": _policy(network, distilled=True).to(device).eval(),
        }
        # one policy per mode; onnx and graph on copies that keep their export / capture
        policies = {"plain": eager, "eager": eager}
        for b in dict.fromkeys(backends):
            if b != "eager":
                policies[b] = {k: copy.deepcopy(p).use_backend(b) for k, p in eager.items()}
        if cuda:
            policies["graph"] = {k: copy.deepcopy(p).use_cuda_graphs() for k, p in eager.items()}
        for batch in batches:
            obs = {k: torch.randn(batch, 2, *s, device=device) for k, s in OBS_SHAPES.items()}
            for sampler, k in SAMPLERS if samplers is None else samplers:
                kind = "distilled" if sampler == "consistency" else "diffusion"
                reps = repeats if k <= 10 or batch == 1 else max(1, repeats // 3)

                def call(mode: str, policy=None, obs=obs, sampler=sampler, k=k):
                    switch = fast_paths_disabled() if mode == "plain" else contextlib.nullcontext()
                    with switch:
                        return policy.predict_action(obs, sampler, k)

                calls = {m: functools.partial(call, m, p[kind]) for m, p in policies.items()}
                if rtc and kind == "diffusion":
                    for method in ("guidance", "inpaint"):
                        calls[f"rtc-{method}"] = functools.partial(
                            _rtc_call, eager[kind], obs, sampler, k, method
                        )
                ms = interleaved_median_ms(calls, reps, warmup=1)
                row: dict = {"model": name, "batch": batch, "sampler": sampler, "k": k}
                row.update({f"{m}_ms": v for m, v in ms.items()})
                for m, v in ms.items():  # rtc against the same call without a prefix
                    if m != "plain":
                        base = "eager" if m.startswith("rtc-") else "plain"
                        row[f"{m}/{base}"] = v / ms[base]
                row["target_ms"] = LATENCY_TARGET_MS.get((name, batch, sampler, k))
                rows.append(row)
        del policies  # the onnx sessions' copies of the weights, the captured graphs
    return rows


# the prefix of an rtc call at delay d = 4 with 4 blend steps, To = 2: the row before the
# newest observation free, 4 frozen rows, 4 soft ones (envs.rollout.rtc_prefix_weights' shape)
RTC_PREFIX_WEIGHTS = (0.0, 1.0, 1.0, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2)


def _rtc_call(
    policy: DiffusionPolicy, obs: dict, sampler: str, k: int, method: str
) -> dict[str, torch.Tensor]:
    batch = next(iter(obs.values())).shape[0]
    prefix = torch.zeros(batch, len(RTC_PREFIX_WEIGHTS), policy.cfg.action_dim)
    return policy.predict_action(
        obs, sampler, k, prefix=prefix, prefix_weights=RTC_PREFIX_WEIGHTS, prefix_mode=method
    )


def bench_vision(repeats: int, steps: int, device: str = "cpu") -> list[dict]:
    """Image policies in the PushT image setting (96 x 96 camera cropped to 84 + agent
    position, To = 2, the training default 1.2 M UNet): predict_action at batch 1 (DDIM 10)
    and training samples/s at batch 64, per camera backbone."""
    from dplite.policy.encoders import CameraConfig

    rows = []
    dev = torch.device(device)
    for backbone in ("small", "resnet18"):
        cfg = PolicyConfig(
            obs_shapes={"img": (96, 96, 3), "agent_pos": (2,)},
            cameras={"img": CameraConfig(backbone=backbone, crop_size=(84, 84))},
            action_dim=2,
            down_dims=(32, 64, 128),
            diffusion_step_embed_dim=64,
        )
        policy = DiffusionPolicy(cfg).to(dev)

        def obs(batch: int) -> dict:
            img = torch.randint(0, 256, (batch, 2, 96, 96, 3), dtype=torch.uint8, device=dev)
            return {"img": img, "agent_pos": torch.randn(batch, 2, 2, device=dev)}

        one = obs(1)
        policy.eval()
        latency = median_ms(lambda p=policy, o=one: p.predict_action(o, "ddim", 10), repeats)
        policy.train()
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
        batch = {"obs": obs(64), "action": torch.randn(64, 16, 2, device=dev)}

        def step(policy=policy, opt=opt, batch=batch):
            opt.zero_grad(set_to_none=True)
            policy.compute_loss(batch).backward()
            opt.step()

        step_ms = median_ms(step, steps, warmup=1)
        rows.append(
            {
                "backbone": backbone,
                "params_M": sum(p.numel() for p in policy.parameters()) / 1e6,
                "predict_ms_b1_ddim10": latency,
                "train_step_ms_b64": step_ms,
                "train_samples_per_s": 64 * 1000 / step_ms,
            }
        )
    return rows


def bench_train(steps: int, device: str = "cpu") -> list[dict]:
    rows = []
    batch_size = 256
    dev = torch.device(device)
    for name, dims in SIZES.items():
        for amp in (False, True):
            policy = _policy({"down_dims": dims}).to(dev).train()
            opt = torch.optim.AdamW(policy.net.parameters(), lr=1e-4)
            batch = {
                "obs": {
                    k: torch.randn(batch_size, 2, *s, device=dev) for k, s in OBS_SHAPES.items()
                },
                "action": torch.randn(batch_size, 16, 2, device=dev),
            }

            def step(policy=policy, opt=opt, batch=batch, amp=amp):
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                    loss = policy.compute_loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            ms = median_ms(step, steps, warmup=2)
            rows.append(
                {
                    "model": name,
                    "batch": batch_size,
                    "precision": "bf16" if amp else "fp32",
                    "ms_per_step": ms,
                    "samples_per_s": batch_size / ms * 1000,
                }
            )
    return rows


__all__ = ["BATCHES", "NETWORKS", "SAMPLERS", "bench_inference", "bench_train", "bench_vision"]
