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
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
import tyro
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dplite.data.dataset import WindowDataset
from dplite.data.replay_buffer import ReplayBuffer
from dplite.envs import EVAL_SEED_START
from dplite.envs.evaluate import evaluate_policy
from dplite.envs.options import EnvArgs, EnvOptions
from dplite.envs.tasks import (
    TaskSpec,
    check_env_fits,
    flat_obs_shapes,
    make_env,
    output_name,
    task_from_metadata,
)
from dplite.policy.actor import PolicyActor
from dplite.policy.checkpoint import atomic_dir, atomic_write, load_state, recover_dir, save_state
from dplite.policy.device import resolve_device
from dplite.policy.diffusion import DiffusionPolicy, PolicyConfig
from dplite.policy.ema import EMA
from dplite.policy.encoders import CameraConfig
from dplite.policy.normalizer import Normalizer
from dplite.policy.training import warmup_cosine

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
    """Ta. 2 rather than the paper's 8: on PushT-MuJoCo re-planning often pays (50 held-out
    seeds, DDIM 10): Ta 8 -> 4 lifted a 6000-step policy from 0.42 to 0.72 success, and the
    quickstart policy went from 0.92 (Ta 4) to 0.96 (Ta 2)."""
    pad_after: int | None = None
    """Rows a training window may run past its episode's end (repeating the last frame);
    default T - To, so that every frame, the last ones near the goal too, is the newest
    observation of some window (Ta - 1, the reference's choice, leaves out the last
    T - To - Ta + 1 frames of every demonstration)."""
    down_dims: tuple[int, ...] = (32, 64, 128)
    """UNet widths (1.2 M parameters); (256, 512, 1024) is the paper's 65.8 M network."""
    diffusion_step_embed_dim: int = 64
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
    warmup_steps: int = 200
    grad_clip: float = 1.0
    """Max gradient norm (0 turns clipping off)."""
    ema_power: float = 0.75
    val_ratio: float = 0.05
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
    eval_inference_steps: int = 10
    save_every: int = 1500
    keep_checkpoints: int = 2
    """How many step checkpoints to keep (the best policy is kept separately)."""
    progress: bool = True
    """Show a progress bar (turn off for CI logs)."""

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


class Trainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.spec = cfg.env.resolve(base=dataset_task(cfg.dataset))
        if cfg.out is None:
            cfg.out = Path("outputs/runs") / output_name(self.spec)
        obs_keys, self.action_anchor = resolve_obs_and_anchor(cfg, self.spec)
        check_dataset_fits_env(cfg.dataset, self.spec, obs_keys)
        self.rank, self.world = dist_rank_world()
        self.device = resolve_device(cfg.device)
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(self.device)
        if cfg.batch_size % self.world:
            raise ValueError(
                f"--batch-size {cfg.batch_size} (the global batch) must be divisible by the "
                f"number of processes {self.world}"
            )
        torch.manual_seed(cfg.seed)
        # one stream, the same on every rank: windows (numpy) and noise + diffusion steps
        # (torch, drawn on the CPU so that they do not depend on the device either)
        self.rng = np.random.default_rng(cfg.seed)
        self.noise_gen = torch.Generator().manual_seed(cfg.seed)
        image_keys = camera_keys(cfg.dataset, self.spec, obs_keys)
        self.data = WindowDataset(
            cfg.dataset,
            obs_keys=obs_keys,
            image_keys=image_keys,
            horizon=cfg.horizon,
            n_obs_steps=cfg.n_obs_steps,
            n_action_steps=cfg.n_action_steps,
            val_ratio=cfg.val_ratio,
            seed=cfg.seed,
            max_train_episodes=cfg.max_train_episodes,
            in_memory=True,
            obs_steps_only=True,
            pad_after=cfg.horizon - cfg.n_obs_steps if cfg.pad_after is None else cfg.pad_after,
        )
        self.val_data = self.data.get_validation_dataset() if cfg.val_ratio > 0 else None
        low_dim = [k for k in obs_keys if k not in image_keys]
        stats = self.data.stats(keys=[*low_dim, "action"])  # images are scaled, not normalized
        obs_shapes = {k: tuple(self.data.shapes[k]) for k in obs_keys}
        cameras = {
            k: CameraConfig(
                backbone=cfg.image_backbone,
                crop_size=None if cfg.image_crop is None else tuple(cfg.image_crop),
                feature_dim=cfg.image_feature_dim,
            )
            for k in image_keys
        }
        if self.action_anchor is not None:
            stats["action"] = anchored_action_stats(self.data, self.action_anchor, cfg.n_obs_steps)
        pcfg = PolicyConfig(
            obs_shapes=obs_shapes,
            cameras=cameras,
            action_dim=self.data.action_dim,
            action_anchor=self.action_anchor,
            horizon=cfg.horizon,
            n_obs_steps=cfg.n_obs_steps,
            n_action_steps=cfg.n_action_steps,
            num_train_timesteps=cfg.num_train_timesteps,
            beta_schedule=cfg.beta_schedule,
            down_dims=cfg.down_dims,
            diffusion_step_embed_dim=cfg.diffusion_step_embed_dim,
            objective=cfg.objective,
            sampler=cfg.eval_sampler,
            num_inference_steps=cfg.eval_inference_steps,
        )
        self.policy = DiffusionPolicy(pcfg, Normalizer.from_stats(stats)).to(self.device)
        # forward() is compute_loss; DDP averages the gradients of the ranks' slices
        self.model = DistributedDataParallel(self.policy) if self.world > 1 else self.policy
        self.ema = EMA(self.policy, power=cfg.ema_power)
        self.opt = torch.optim.AdamW(  # the UNet and the camera encoders
            self.policy.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, warmup_cosine(cfg.warmup_steps, cfg.steps)
        )
        self.step = 0
        self.best_success = -1.0
        self.ckpt_dir = cfg.out / "checkpoints"

    # ---------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {
            "step": self.step,
            "best_success": self.best_success,
            "model": self.policy.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(),
            "lr_sched": self.lr_sched.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "noise_rng": self.noise_gen.get_state(),
            "numpy_rng": self.rng.bit_generator.state,
            "cuda_rng": torch.cuda.get_rng_state() if self.device.type == "cuda" else None,
        }

    def metadata(self) -> dict:
        return {
            "task": self.spec.name,
            "env": self.spec.to_dict(),
            "step": self.step,
            "dataset": str(self.cfg.dataset),
            "obs_keys": list(self.policy.cfg.obs_shapes),
        }

    def save_checkpoint(self) -> Path:
        """Write into a .tmp folder, rename it into place, then repoint latest.json."""
        name = f"step_{self.step:07d}"
        final = self.write_policy_dir(self.ckpt_dir / name, with_state=True)
        atomic_write(self.ckpt_dir / "latest.json", json.dumps({"name": name, "step": self.step}))
        old = sorted(p for p in self.ckpt_dir.glob("step_*") if p.is_dir() and p.suffix == "")
        for p in old[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(p)
        return final

    def try_resume(self) -> bool:
        latest = self.ckpt_dir / "latest.json"
        if not latest.is_file():
            return False
        name = json.loads(latest.read_text())["name"]
        state = load_state(self.ckpt_dir / name)
        self.policy.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.lr_sched.load_state_dict(state["lr_sched"])
        torch.set_rng_state(state["torch_rng"])
        self.noise_gen.set_state(state["noise_rng"])
        self.rng.bit_generator.state = state["numpy_rng"]
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.step, self.best_success = int(state["step"]), float(state["best_success"])
        log.info("resumed from %s at step %d", self.ckpt_dir / name, self.step)
        return True

    def save_best(self) -> None:
        self.write_policy_dir(self.cfg.out / "best", with_state=False)

    def write_policy_dir(self, final: Path, with_state: bool) -> Path:
        """EMA policy (+ training state), written whole and swapped in for `final`."""
        with atomic_dir(final) as tmp:
            self.ema.model.save_pretrained(tmp, metadata=self.metadata())
            if with_state:
                save_state(self.state(), tmp)
        return final

    # ---------------------------------------------------------------- loop
    def batch(self, data: WindowDataset, rng: np.random.Generator) -> dict:
        """This rank's slice of a global batch drawn from `rng` (the same on every rank)."""
        idx = rng.integers(0, len(data), size=self.cfg.batch_size)
        n = self.cfg.batch_size // self.world
        b = data.get_batch(idx[self.rank * n : (self.rank + 1) * n])
        pin = self.device.type == "cuda"
        to = lambda x: (x.pin_memory() if pin else x).to(self.device, non_blocking=pin)  # noqa: E731
        return {"obs": {k: to(v) for k, v in b["obs"].items()}, "action": to(b["action"])}

    def diffusion_draws(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slice of the global batch's noise (B, T, Da) and diffusion steps (B,)."""
        pcfg, n = self.policy.cfg, self.cfg.batch_size // self.world
        noise = torch.randn(
            (self.cfg.batch_size, pcfg.horizon, pcfg.action_dim), generator=self.noise_gen
        )  # (B_global, T, Da)
        t = torch.randint(
            0, pcfg.num_train_timesteps, (self.cfg.batch_size,), generator=self.noise_gen
        )  # (B_global,)
        rows = slice(self.rank * n, (self.rank + 1) * n)
        return noise[rows].to(self.device), t[rows].to(self.device)

    @torch.no_grad()
    def val_loss(self, n_batches: int = 4) -> float | None:
        """EMA loss on validation windows; its own RNG, so logging never shifts training."""
        if self.val_data is None or len(self.val_data) == 0:
            return None
        rng = np.random.default_rng([self.cfg.seed, self.step])
        return float(
            np.mean(
                [
                    self.ema.model.compute_loss(self.batch(self.val_data, rng)).item()
                    for _ in range(n_batches)
                ]
            )
        )

    def evaluate(self) -> dict:
        # training-time evaluation uses seeds past the final evaluation's first 1000
        seeds = list(range(EVAL_SEED_START + 1000, EVAL_SEED_START + 1000 + self.cfg.eval_episodes))
        actor = PolicyActor(self.ema.model, self.cfg.eval_sampler, self.cfg.eval_inference_steps)
        summary, _ = evaluate_policy(actor, self.spec, seeds)
        return summary

    def log(self, record: dict, bar: tqdm) -> None:
        with open(self.cfg.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        bar.write(
            " | ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
            )
        )

    def train(self) -> dict:
        cfg, lead = self.cfg, self.rank == 0
        if lead:
            cfg.out.mkdir(parents=True, exist_ok=True)
            (cfg.out / "config.json").write_text(
                json.dumps(dataclasses.asdict(cfg), indent=2, default=str)
            )
            recover_dir(cfg.out / "best")
        self.try_resume()
        n_params = sum(p.numel() for p in self.policy.parameters())
        log.info(
            "%d training windows, %.2f M parameters, device %s%s",
            len(self.data),
            n_params / 1e6,
            self.device,
            f", {self.world} processes" if self.world > 1 else "",
        )
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.amp)
        bar = tqdm(
            total=cfg.steps, initial=self.step, disable=not (cfg.progress and lead), unit="step"
        )
        losses, t_last, last_eval = [], time.perf_counter(), {}
        self.policy.train()
        while self.step < cfg.steps:
            batch = self.batch(self.data, self.rng)
            noise, t = self.diffusion_draws(batch)
            with autocast:
                loss = self.model(batch, noise=noise, timesteps=t)  # compute_loss
            self.opt.zero_grad(set_to_none=True)
            loss.backward()  # under DDP: gradients averaged over the ranks here
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
            self.opt.step()
            self.lr_sched.step()
            self.ema.update(self.policy)
            self.step += 1
            losses.append(loss.item())
            bar.update(1)
            done = self.step == cfg.steps
            if self.step % cfg.log_every == 0 or done:
                now = time.perf_counter()
                record = {
                    "step": self.step,
                    "loss": self.mean_over_ranks(float(np.mean(losses))),
                    "lr": self.lr_sched.get_last_lr()[0],
                    "it_s": len(losses) / (now - t_last),
                }
                if lead:
                    val = self.val_loss()
                    if val is not None:
                        record["val_loss"] = val
                    self.log(record, bar)
                losses, t_last = [], now
            if cfg.eval_every >= 0 and (
                (cfg.eval_every and self.step % cfg.eval_every == 0) or done
            ):
                if lead:
                    last_eval = self.evaluate()
                    self.log(
                        {
                            "step": self.step,
                            "eval_success": last_eval["success_rate"],
                            "eval_max_reward": last_eval["mean_max_reward"],
                            "eval_s": last_eval["wall_time_s"],
                        },
                        bar,
                    )
                    # ties go to the later checkpoint: 20 rollouts often tie at the top, and
                    # the later one has trained longer at a lower learning rate
                    if last_eval["success_rate"] >= self.best_success:
                        self.best_success = last_eval["success_rate"]
                        self.save_best()
                self.barrier()  # the other ranks wait for rank 0's rollouts
                t_last = time.perf_counter()  # keep it/s about training only
            if self.step % cfg.save_every == 0 or done:
                if lead:
                    self.save_checkpoint()
                self.barrier()
        bar.close()
        return {"step": self.step, "best_success": self.best_success, "last_eval": last_eval}

    def mean_over_ranks(self, value: float) -> float:
        if self.world == 1:
            return value
        x = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(x)
        return float(x.item()) / self.world

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size): joins the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def main(cfg: Config) -> dict:
    try:
        return Trainer(cfg).train()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def cli() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if int(os.environ.get("RANK", 0)) > 0:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 speaks for the run
    main(tyro.cli(Config))


if __name__ == "__main__":
    cli()
