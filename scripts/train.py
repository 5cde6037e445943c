"""Train a diffusion policy on a zarr demonstration dataset, with periodic rollout evaluation.

    python -m dplite.scripts.train --dataset outputs/data/pusht.zarr --task pusht --out outputs/runs/pusht

The environment (for rollout evaluation, and recorded in every saved policy so that
scripts.eval needs only the checkpoint) is --task NAME or --env-id ID [--env-import ...]; by
default the one scripts.collect recorded in the dataset. Observation keys and the action anchor
default to the task's (PushT: keypoint + agent_pos, actions relative to agent_pos); for an
--env-id environment they are all of its observation keys and absolute actions. Dataset keys or
an action size that do not fit the environment are refused before training starts.

Run folder layout:
    config.json                 this Config
    metrics.jsonl               one JSON object per log / eval interval
    checkpoints/step_XXXXXXX/   EMA policy (config.json + model.safetensors) + training state
    checkpoints/latest.json     {"name": ..., "step": ...}: written last, so it always points
                                at a complete checkpoint
    best/                       EMA policy with the best rollout success so far (ties: the
                                later one)
Running the same command again resumes from checkpoints/latest.json (same step, optimizer,
LR schedule, EMA and RNG state).

Several processes (DistributedDataParallel; NCCL on CUDA, one GPU per process, gloo on CPU):

    torchrun --nproc-per-node 2 -m dplite.scripts.train --dataset ... --out ...

--batch-size is the global batch. Every rank draws the same global batch of windows, noise and
diffusion steps from one seeded stream and keeps its own slice of it, so N processes compute
the gradient of the same batch as one process (equal to float rounding). Rank 0 logs, writes
checkpoints and runs the rollout evaluation while the others wait; the checkpoint format is the
single-process one, and resuming works the same under torchrun.

This file is the Config and the setup that needs data/ and envs/ (windows, normalizer
statistics, the policy's config, the rollout check); the loop itself (AdamW, LR schedule, EMA,
clipping, autocast, DDP, logs, checkpoints, resume) is dplite.policy.training.TrainLoop.
Random streams, all seeded by --seed: torch.manual_seed (initial weights, anything else that
draws from torch's global generator); per step, a numpy Generator draws the global batch's
window indices, then a CPU torch.Generator its noise (B, T, Da), its diffusion steps (B,) and
the crop offsets of each cropped camera (B, To, 2); validation draws its windows, noise and
steps from generators seeded by (seed, step).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from dplite.data.dataset import WindowDataset
from dplite.data.replay_buffer import ReplayBuffer
from dplite.envs import EVAL_SEED_START
from dplite.envs.evaluate import evaluate_policy
from dplite.envs.options import EnvArgs, EnvOptions, run_command
from dplite.envs.tasks import (
    TaskSpec,
    check_env_fits,
    flat_obs_shapes,
    make_env,
    output_name,
    task_from_metadata,
)
from dplite.policy.actor import PolicyActor
from dplite.policy.checkpoint import atomic_write
from dplite.policy.device import resolve_device
from dplite.policy.diffusion import DEFAULT_SPACING, DiffusionPolicy, PolicyConfig
from dplite.policy.encoders import CameraConfig, random_offsets
from dplite.policy.normalizer import Normalizer
from dplite.policy.training import (
    LoopConfig,
    TrainLoop,
    dist_rank_world,
    rank_device,
    warmup_cosine,
)

log = logging.getLogger(__name__)


@dataclass
class Config:
    dataset: Path
    """Zarr demonstration dataset (data/<key> + meta/episode_ends)."""
    env: EnvArgs = field(default_factory=EnvOptions)
    out: Path | None = None
    """Run folder (default outputs/runs/<task>); an existing one is resumed."""
    obs_keys: tuple[str, ...] | None = None
    """Observation keys of the dataset that condition the policy (default: the task's, or
    every key an --env-id environment emits)."""
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 2
    """Ta, the actions executed per chunk. 2 rather than the paper's 8: on PushT re-planning
    often pays (docs/benchmarks.md)."""
    train_max_delay: int = 0
    """Train for real-time chunking under inference delays up to N steps: each chunk gets
    d ~ U{0..N} committed actions from the newest observation's step on, given clean and left
    out of the loss (PolicyConfig.train_max_delay); evaluate with --execution rtc
    --rtc-method conditioned. 0: plain training."""
    pad_after: int | None = None
    """Rows a training window may run past its episode's end (repeating the last frame);
    default T - To, so that every frame, the last ones near the goal too, is the newest
    observation of some window."""
    down_dims: tuple[int, ...] = (32, 64, 128)
    """UNet widths (1.2 M parameters); (256, 512, 1024) is the paper's 65.8 M network."""
    diffusion_step_embed_dim: int = 64
    backbone: Literal["unet", "transformer"] = "unet"
    """Denoising network: the 1D temporal "unet" (--down-dims, --diffusion-step-embed-dim) or
    the paper's time-series diffusion "transformer" (--n-layer ... --n-cond-layers,
    --transformer-weight-decay; docs/transformer.md)."""
    n_layer: int = 8
    """Transformer decoder blocks (n_layer ... n_cond_layers default to the reference's PushT
    low-dim transformer, 9 M parameters)."""
    n_head: int = 4
    """Transformer attention heads (must divide --n-emb)."""
    n_emb: int = 256
    """Transformer token width."""
    p_drop_emb: float = 0.0
    """Transformer dropout on token + position embeddings."""
    p_drop_attn: float = 0.01
    """Transformer dropout on attention weights, residual branches and MLP hidden units."""
    causal_attn: bool = True
    """Transformer: chunk index i attends only to indices <= i and observation steps <= i."""
    n_cond_layers: int = 0
    """Transformer: 0 gives each conditioning token an MLP; N > 0 runs N encoder blocks."""
    objective: Literal["diffusion", "mse"] = "diffusion"
    """"diffusion": the diffusion policy; "mse": the regression baseline (the same UNet maps
    the observations straight to the chunk, fit by MSE, one network evaluation to act)."""
    action_anchor: str = "task"
    """Obs key (e.g. agent_pos) that actions are made relative to; 'none': absolute actions;
    'task': the task's default (PushT: agent_pos; an --env-id environment: none)."""
    image_backbone: Literal["small", "resnet18"] = "small"
    """CNN for each camera key: "small" (about 0.1 M parameters, trains on a CPU) or the
    paper's "resnet18" with GroupNorm (11.2 M); both end in a spatial softmax."""
    image_crop: tuple[int, int] | None = (84, 84)
    """Random crop (training) / centre crop (evaluation) of camera images; None: whole image."""
    image_feature_dim: int = 64
    """Features per camera and observation step."""
    num_train_timesteps: int = 100
    beta_schedule: Literal["squaredcos_cap_v2", "linear"] = "squaredcos_cap_v2"
    batch_size: int = 256
    steps: int = 9000
    """Optimizer steps."""
    lr: float = 1e-3
    """Peak learning rate (the paper's 1e-4 suits its 65.8 M network and GPU-days)."""
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = 1e-6
    transformer_weight_decay: float = 1e-1
    """AdamW weight decay of the transformer's Linear weights (the reference's 0.1); its
    biases, LayerNorm weights and position embeddings get none, camera encoders
    --weight-decay. Unused by the UNet, whose parameters all take --weight-decay."""
    warmup_steps: int = 200
    grad_clip: float = 1.0
    """Max gradient norm (0 turns clipping off)."""
    ema_power: float = 0.75
    val_ratio: float = 0.05
    split_seed: int = 0
    """Seed of the train / validation split by episode; apart from --seed, so that every
    training seed trains on the same episodes."""
    max_train_episodes: int | None = None
    seed: int = 0
    device: str = "auto"
    """'auto' (cuda when available), 'cpu', 'cuda', ..."""
    amp: bool = False
    """bf16 autocast for the forward/backward pass (CPU with AVX512-BF16/AMX, or CUDA)."""
    log_every: int = 100
    eval_every: int = 3000
    """Roll out the EMA policy every N steps (0: only at the end; -1: never)."""
    eval_episodes: int = 20
    eval_sampler: Literal["ddpm", "ddim"] = "ddim"
    eval_inference_steps: int = 5
    """k of the rollout checks, recorded as the policy's default k."""
    timestep_spacing: Literal["leading", "trailing"] = DEFAULT_SPACING
    """Which timesteps DDPM / DDIM with k < K visit; recorded in the policy
    (policy/schedule.py, spaced_timesteps)."""
    save_every: int = 1500
    keep_checkpoints: int = 2
    """How many step checkpoints to keep (the best policy is kept separately)."""
    progress: bool = True
    """Show a progress bar (turn off for CI logs)."""
    extend_steps: bool = False
    """Resume a run with a larger --steps than it was started with. The warm-up + cosine LR
    schedule is then laid over the new total from step 0, so the LR jumps to where the new
    schedule is at the resumed step (after 9000 of 9000 steps, resumed with --steps 20000, from
    0 to about 0.64 of the peak) and decays to 0 at the new end. Without it a changed --steps
    is refused like any other changed setting."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "steps", "log_every", "save_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if not 0 <= self.val_ratio < 1:
            raise ValueError(f"--val-ratio must be in [0, 1), got {self.val_ratio}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")


def anchored_action_stats(data: WindowDataset, key: str, n_obs_steps: int) -> dict:
    """Min / max of every training chunk relative to its newest `key` observation: (T, Da)."""
    if key not in data.obs_keys:
        raise ValueError(f"--action-anchor {key!r} must be one of --obs-keys {data.obs_keys}")
    b = data.get_batch(np.arange(len(data)), obs_keys=(key,))  # never gathers camera frames
    rel = b["action"] - b["obs"][key][:, n_obs_steps - 1 : n_obs_steps]  # (N, T, Da)
    return {"min": rel.amin(0).numpy(), "max": rel.amax(0).numpy()}


def camera_keys(path: Path, spec: TaskSpec, obs_keys: tuple[str, ...]) -> tuple[str, ...]:
    """The observation keys that are camera images: the task's image keys, and any uint8
    (N, H, W, C) array of the dataset (an --env-id environment's camera)."""
    rb = ReplayBuffer.open(path)
    return tuple(
        k
        for k in obs_keys
        if k in spec.image_keys or (rb[k].dtype == np.uint8 and len(rb[k].shape) == 4)
    )


def dataset_task(path: Path) -> TaskSpec | None:
    """The environment scripts.collect recorded in a dataset's attributes, if any."""
    attrs = ReplayBuffer.open(path).attrs
    return task_from_metadata(attrs) if "env" in attrs or "task" in attrs else None


def resolve_obs_and_anchor(cfg: Config, spec: TaskSpec) -> tuple[tuple[str, ...], str | None]:
    """Observation keys and action anchor: the flags, else the task's defaults."""
    obs_keys = cfg.obs_keys or spec.obs_keys
    if obs_keys is None:  # an --env-id environment: everything it emits
        env = make_env(spec)
        obs_keys = tuple(flat_obs_shapes(env.observation_space))
        env.close()
    if cfg.action_anchor == "none":
        return tuple(obs_keys), None
    anchor = spec.action_anchor if cfg.action_anchor == "task" else cfg.action_anchor
    if anchor is not None and anchor not in obs_keys:
        raise ValueError(
            f"action anchor {anchor!r} ({'task ' + spec.name + ' default' if cfg.action_anchor == 'task' else '--action-anchor'}) "
            f"is not among the observation keys {list(obs_keys)}; add it to --obs-keys or pass "
            "--action-anchor none"
        )
    return tuple(obs_keys), anchor


def check_dataset_fits_env(path: Path, spec: TaskSpec, obs_keys: tuple[str, ...]) -> None:
    """Refuse, before any training step, a dataset that lacks the observation keys or whose
    shapes and action size differ from what the environment emits and takes."""
    rb = ReplayBuffer.open(path)
    missing = [k for k in (*obs_keys, "action") if k not in rb.keys]
    if missing:
        raise ValueError(
            f"{path}: has keys {sorted(rb.keys)}, but training on task {spec.name!r} needs "
            f"{list(obs_keys)} and 'action' (missing {missing}); choose keys with --obs-keys"
        )
    shapes = {k: tuple(rb[k].shape[1:]) for k in obs_keys}
    check_env_fits(spec, shapes, int(rb["action"].shape[1]), f"dataset {path}")


class GlobalBatches:
    """The training stream: each call draws one global batch of windows (numpy) and its noise
    (B, T, Da), diffusion steps (B,), for cropped cameras crop offsets (B, To, 2) per camera
    and, with train_max_delay, committed-prefix lengths (B,) (torch, on the CPU so that they
    do not depend on the device), the same on every rank, and returns this rank's slice of
    it."""

    def __init__(
        self,
        data: WindowDataset,
        cfg: Config,
        pcfg: PolicyConfig,
        rank: int,
        world: int,
        device: torch.device,
    ):
        self.data, self.cfg, self.pcfg = data, cfg, pcfg
        self.rank, self.world, self.device = rank, world, device
        self.rng = np.random.default_rng(cfg.seed)
        self.noise_gen = torch.Generator().manual_seed(cfg.seed)
        self.crops = {  # camera key -> crop (h, w), for the cameras that crop at all
            key: cam.crop_size
            for key, cam in pcfg.cameras.items()
            if cam.crop_size is not None and cam.crop_size != pcfg.obs_shapes[key][:2]
        }

    def __call__(self) -> dict:
        b = window_batch(
            self.data, self.rng, self.cfg.batch_size, self.rank, self.world, self.device
        )
        size, n = self.cfg.batch_size, self.cfg.batch_size // self.world
        noise = torch.randn(
            (size, self.pcfg.horizon, self.pcfg.action_dim), generator=self.noise_gen
        )  # (B_global, T, Da)
        t = torch.randint(
            0, self.pcfg.num_train_timesteps, (size,), generator=self.noise_gen
        )  # (B_global,)
        rows = slice(self.rank * n, (self.rank + 1) * n)
        out = {**b, "noise": noise[rows].to(self.device), "timesteps": t[rows].to(self.device)}
        if self.pcfg.train_max_delay:  # drawn only then: plain runs keep their streams
            d = torch.randint(0, self.pcfg.train_max_delay + 1, (size,), generator=self.noise_gen)
            out["delays"] = d[rows].to(self.device)  # (B,) of (B_global,)
        if self.crops:  # camera crops from the same global stream: DDP equals one process
            out["crop_offsets"] = {
                key: random_offsets(
                    (size * self.pcfg.n_obs_steps, *self.pcfg.obs_shapes[key][:2]),
                    crop,
                    self.noise_gen,
                ).unflatten(0, (size, self.pcfg.n_obs_steps))[rows]  # (B, To, 2)
                for key, crop in self.crops.items()
            }
        return out

    def state_dict(self) -> dict:
        return {"noise_rng": self.noise_gen.get_state(), "numpy_rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping) -> None:
        self.noise_gen.set_state(state["noise_rng"])
        self.rng.bit_generator.state = state["numpy_rng"]


def window_batch(
    data: WindowDataset,
    rng: np.random.Generator,
    batch_size: int,
    rank: int,
    world: int,
    device: torch.device,
) -> dict:
    """This rank's slice of a global batch of windows drawn from `rng` (the same on every
    rank), on `device`."""
    idx = rng.integers(0, len(data), size=batch_size)
    n = batch_size // world
    b = data.get_batch(idx[rank * n : (rank + 1) * n])
    pin = device.type == "cuda"
    to = lambda x: (x.pin_memory() if pin else x).to(device, non_blocking=pin)  # noqa: E731
    return {"obs": {k: to(v) for k, v in b["obs"].items()}, "action": to(b["action"])}


def diffusion_loss(model: nn.Module, b: dict) -> torch.Tensor:
    """compute_loss through forward() (so that DDP averages the gradients), with the drawn
    noise (B, T, Da), diffusion steps (B,), camera crop offsets {key: (B, To, 2)} and delays
    (B,) of training-time real-time chunking."""
    batch = {"obs": b["obs"], "action": b["action"], "crop_offsets": b.get("crop_offsets")}
    return model(batch, noise=b["noise"], timesteps=b["timesteps"], delays=b.get("delays"))


def validation_loss(
    val_data: WindowDataset | None, cfg: Config, world: int, device: torch.device
) -> Callable[[DiffusionPolicy, int], dict]:
    """EMA loss on validation windows (rank 0's slice of 4 global batches). Windows, noise,
    diffusion steps (and committed-prefix lengths) all come from generators of their own
    seeded by (seed, step), and the EMA policy is in eval mode (centre crops), so validating
    never draws from a stream training uses: the weights do not depend on --log-every."""

    @torch.no_grad()
    def validate(policy: DiffusionPolicy, step: int) -> dict:
        if val_data is None or len(val_data) == 0:
            return {}
        rng = np.random.default_rng([cfg.seed, step])
        gen = torch.Generator().manual_seed(int(rng.integers(2**63)))
        losses = []
        for _ in range(4):
            b = window_batch(val_data, rng, cfg.batch_size, 0, world, device)
            shape = b["action"].shape  # (B, T, Da)
            noise = torch.randn(shape, generator=gen).to(device)  # (B, T, Da)
            t = torch.randint(0, policy.cfg.num_train_timesteps, shape[:1], generator=gen)  # (B,)
            n = policy.cfg.train_max_delay
            d = torch.randint(0, n + 1, shape[:1], generator=gen).to(device) if n else None  # (B,)
            loss = policy.compute_loss(b, noise=noise, timesteps=t.to(device), delays=d)
            losses.append(loss.item())
        return {"val_loss": float(np.mean(losses))}

    return validate


def rollout_check(spec: TaskSpec, cfg: Config) -> Callable[[DiffusionPolicy], dict]:
    """Roll the EMA policy out on eval_episodes seeds past the final evaluation's first 1000."""
    seeds = list(range(EVAL_SEED_START + 1000, EVAL_SEED_START + 1000 + cfg.eval_episodes))

    def evaluate(policy: DiffusionPolicy) -> dict:
        actor = PolicyActor(policy, cfg.eval_sampler, cfg.eval_inference_steps)
        summary, _ = evaluate_policy(actor, spec, seeds)
        return {
            "eval_success": summary["success_rate"],
            "eval_max_reward": summary["mean_max_reward"],
            "eval_s": summary["wall_time_s"],
        }

    return evaluate


def setup(cfg: Config) -> TrainLoop:
    """Everything that needs the dataset and the environment, in the order that fixes the
    random streams: checks, torch.manual_seed(seed), windows, normalizer statistics, the
    policy (its initial weights), then the loop (DDP, EMA, AdamW, LR schedule)."""
    spec = cfg.env.resolve(base=dataset_task(cfg.dataset))
    if cfg.out is None:
        cfg.out = Path("outputs/runs") / output_name(spec)
    check_resume(cfg)  # before the dataset is read, config.json rewritten or state loaded
    obs_keys, action_anchor = resolve_obs_and_anchor(cfg, spec)
    check_dataset_fits_env(cfg.dataset, spec, obs_keys)
    device = resolve_device(cfg.device)
    rank, world = dist_rank_world(device)
    device = rank_device(device, world)
    if cfg.batch_size % world:
        raise ValueError(
            f"--batch-size {cfg.batch_size} (the global batch) must be divisible by the "
            f"number of processes {world}"
        )
    torch.manual_seed(cfg.seed)
    image_keys = camera_keys(cfg.dataset, spec, obs_keys)
    data = WindowDataset(
        cfg.dataset,
        obs_keys=obs_keys,
        image_keys=image_keys,
        horizon=cfg.horizon,
        n_obs_steps=cfg.n_obs_steps,
        n_action_steps=cfg.n_action_steps,
        val_ratio=cfg.val_ratio,
        seed=cfg.split_seed,
        max_train_episodes=cfg.max_train_episodes,
        in_memory=True,
        obs_steps_only=True,
        pad_after=cfg.pad_after,  # None: T - To
    )
    val_data = data.get_validation_dataset() if cfg.val_ratio > 0 else None
    low_dim = [k for k in obs_keys if k not in image_keys]
    stats = data.stats(keys=[*low_dim, "action"])  # images are scaled, not normalized
    if action_anchor is not None:
        stats["action"] = anchored_action_stats(data, action_anchor, cfg.n_obs_steps)
    crop = None if cfg.image_crop is None else tuple(cfg.image_crop)
    pcfg = PolicyConfig(
        obs_shapes={k: tuple(data.shapes[k]) for k in obs_keys},
        cameras={
            k: CameraConfig(
                backbone=cfg.image_backbone, crop_size=crop, feature_dim=cfg.image_feature_dim
            )
            for k in image_keys
        },
        action_dim=data.action_dim,
        action_anchor=action_anchor,
        horizon=cfg.horizon,
        n_obs_steps=cfg.n_obs_steps,
        n_action_steps=cfg.n_action_steps,
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        down_dims=cfg.down_dims,
        diffusion_step_embed_dim=cfg.diffusion_step_embed_dim,
        backbone=cfg.backbone,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_emb=cfg.n_emb,
        p_drop_emb=cfg.p_drop_emb,
        p_drop_attn=cfg.p_drop_attn,
        causal_attn=cfg.causal_attn,
        n_cond_layers=cfg.n_cond_layers,
        objective=cfg.objective,
        sampler=cfg.eval_sampler,
        num_inference_steps=cfg.eval_inference_steps,
        timestep_spacing=cfg.timestep_spacing,
        train_max_delay=cfg.train_max_delay,
    )
    policy = DiffusionPolicy(pcfg, Normalizer.from_stats(stats)).to(device)
    batches = GlobalBatches(data, cfg, pcfg, rank, world, device)
    loop_cfg = LoopConfig(
        steps=cfg.steps,
        lr=cfg.lr,
        betas=cfg.betas,
        weight_decay=cfg.weight_decay,
        transformer_weight_decay=(
            cfg.transformer_weight_decay if cfg.backbone == "transformer" else None
        ),
        warmup_steps=cfg.warmup_steps,
        grad_clip=cfg.grad_clip,
        ema_power=cfg.ema_power,
        amp=cfg.amp,
        log_every=cfg.log_every,
        eval_every=cfg.eval_every,
        save_every=cfg.save_every,
        keep_checkpoints=cfg.keep_checkpoints,
        progress=cfg.progress,
    )
    metadata = {
        "task": spec.name,
        "env": spec.to_dict(),
        "dataset": str(cfg.dataset),
        "obs_keys": list(obs_keys),
        "pad_after": data.pad_after,  # how the windows were cut: distillation cuts them alike
    }
    log.info(
        "%d training windows, %s, %.2f M parameters, device %s%s",
        len(data),
        pcfg.backbone,
        sum(p.numel() for p in policy.parameters()) / 1e6,
        device,
        f", {world} processes" if world > 1 else "",
    )
    return TrainLoop(
        policy,
        loop_cfg,
        cfg.out,
        batches,
        diffusion_loss,
        evaluate=rollout_check(spec, cfg),
        validate=validation_loss(val_data, cfg, world, device),
        rng_state=batches,
        metadata=metadata,
        rank=rank,
        world=world,
    )


# Settings a run may resume with changed: they change what is logged, checked or shown, not the
# weights (the device neither, to float rounding: a run may move to another machine).
RESUMABLE = ("out", "log_every", "eval_every", "eval_episodes", "eval_sampler",
             "eval_inference_steps", "save_every", "keep_checkpoints", "progress", "device",
             "extend_steps")  # fmt: skip
# What a config.json written before a setting existed meant by it.
LEGACY = {
    "split_seed": lambda rec: rec.get("seed", 0),
    "timestep_spacing": lambda rec: "leading",
    "train_max_delay": lambda rec: 0,
}


def check_resume(cfg: Config) -> None:
    """Refuse to resume cfg.out with other settings than it was started with (its
    config.json), listing every field that differs; RESUMABLE fields may change, and --steps
    may grow with --extend-steps (the LR schedule is then laid over the new total)."""
    latest, recorded_path = cfg.out / "checkpoints" / "latest.json", cfg.out / "config.json"
    if not (latest.is_file() and recorded_path.is_file()):
        return  # nothing to resume
    recorded = json.loads(recorded_path.read_text())
    current = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    diffs: dict[str, str] = {}
    for key, new in current.items():
        if key in recorded:
            old = recorded[key]
        elif key in LEGACY:
            old = LEGACY[key](recorded)
        else:  # a setting newer than the run whose default meant what it did before
            old = new
        if key in RESUMABLE or old == new:
            continue
        if key == "dataset" and Path(old).resolve() == Path(new).resolve():
            continue
        if key == "steps" and cfg.extend_steps and new > old:
            step = json.loads(latest.read_text())["step"]
            lr_old = warmup_cosine(cfg.warmup_steps, old)(step)
            lr_new = warmup_cosine(cfg.warmup_steps, new)(step)
            log.info(
                "--extend-steps: %d -> %d steps; at step %d the LR goes from %.2f to %.2f of "
                "its peak and decays to 0 at step %d",
                old, new, step, lr_old, lr_new, new,
            )  # fmt: skip
            continue
        diffs[key] = f"  {key}: {old!r} -> {new!r}"
    if diffs:
        hint = " (or, for --steps, pass --extend-steps)" if "steps" in diffs else ""
        raise ValueError(
            f"{cfg.out} was started with other settings than these ({recorded_path}), and "
            "resuming would silently change the run:\n" + "\n".join(diffs.values()) + "\nResume "
            f"with the recorded settings, or train into a new --out{hint}"
        )


def main(cfg: Config) -> dict:
    """Train (or resume) the run cfg.out; returns TrainLoop.run's summary."""
    try:
        loop = setup(cfg)
        if loop.rank == 0:
            config = json.dumps(dataclasses.asdict(cfg), indent=2, default=str)
            atomic_write(cfg.out / "config.json", config)
        return loop.run()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def cli() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if int(os.environ.get("RANK", 0)) > 0:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 speaks for the run
    run_command(main, Config, "dp-train")


if __name__ == "__main__":
    cli()
