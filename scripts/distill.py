"""Distill a trained diffusion policy into a consistency policy that acts in 1 or 2 steps.

    python -m dplite.scripts.distill --checkpoint outputs/runs/pusht --out outputs/runs/pusht_cd
    python -m dplite.scripts.eval --checkpoint outputs/runs/pusht_cd --sampler consistency \\
        --inference-steps 1

--checkpoint is the teacher: a policy folder, or a training run (its best/ policy). It is not
changed. The student (policy/consistency.py) starts as a copy of it and is trained with the
consistency distillation loss on the teacher's dataset (its metadata names it; --dataset
overrides), then written to --out as an ordinary policy folder (config.json +
model.safetensors, the EMA of the student's weights) whose config marks it as distilled, so
scripts.eval and predict_action sample it with sampler "consistency". --out must not exist yet;
the folder is written under a temporary name and renamed into place when complete
(policy.checkpoint.atomic_dir; a failed run leaves nothing). Progress goes to
<out>.tmp/metrics.jsonl and ends up in <out>/metrics.jsonl. At the end it reports the
teacher gap (policy/consistency.py: the mean |difference| between the 1-step chunk and the
teacher's DDIM chunk from the same noise, on 512 windows; lower is better) and, with
--eval-episodes > 0, rolls the 1-step student out on the seeds training-time checks use.

The optimization is dplite.policy.training.TrainLoop, the loop scripts.train runs, with the
distillation loss and the target network's update after each step. Random streams, seeded by
--seed: torch.manual_seed before the student is built; per step, a numpy Generator draws the
batch's window indices, then the loss draws its noise and grid positions from torch's global
generator. The teacher gap uses streams of its own (seed + 1).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from dplite.data.dataset import WindowDataset
from dplite.envs import EVAL_SEED_START
from dplite.envs.evaluate import evaluate_policy
from dplite.envs.options import run_command
from dplite.envs.tasks import task_from_metadata
from dplite.policy.actor import PolicyActor
from dplite.policy.checkpoint import atomic_dir, find_policy_dir
from dplite.policy.consistency import ConsistencyDistiller, ddim_grid, teacher_gap
from dplite.policy.device import resolve_device
from dplite.policy.diffusion import DiffusionPolicy
from dplite.policy.training import LoopConfig, TrainLoop

log = logging.getLogger(__name__)


@dataclass
class Config:
    checkpoint: Path
    """The teacher: a policy folder or a training run folder (its best/ policy)."""
    out: Path
    """Folder for the distilled policy; must not exist yet."""
    dataset: Path | None = None
    """Zarr dataset to distill on (default: the one the teacher was trained on)."""
    steps: int = 14000
    """Optimizer steps (PushT, 1.2 M UNet: about 27 min on a 2-core CPU; more did not help,
    docs/distillation.md)."""
    batch_size: int = 256
    lr: float = 1e-3
    """Peak learning rate (warm-up, then cosine decay to 0)."""
    warmup_steps: int = 100
    grid_steps: int = 10
    """N: the teacher's ODE is followed on the timesteps of a DDIM-N sample (K = 100, N = 10:
    99, 89, ..., 9 trailing, 90, 80, ..., 0 leading); 1- and 2-step sampling start from the
    top one."""
    grid_spacing: Literal["leading", "trailing"] | None = None
    """Spacing of that grid (default: the teacher's own timestep_spacing)."""
    target_decay: float = 0.95
    """mu, the decay of the target network's moving average of the student."""
    distance: Literal["l2", "huber"] = "huber"
    """Distance between the student's and the target's chunks: pseudo-Huber or squared error
    (policy/consistency.py); pseudo-Huber weighs a few far-off chunks less, and rolled out
    better on PushT (docs/distillation.md)."""
    ema_power: float = 0.75
    """Warm-up power of the moving average of the student that is saved (as in training)."""
    grad_clip: float = 1.0
    """Max gradient norm (0 turns clipping off)."""
    n_action_steps: int | None = None
    """Ta of the distilled policy (default: the teacher's)."""
    eval_episodes: int = 20
    """Roll out the 1-step student on this many episodes at the end (0: skip)."""
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    """bf16 autocast for the student's forward/backward pass (the teacher's ODE step and the
    target stay in float32)."""
    log_every: int = 100
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grid_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if self.lr <= 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if self.eval_episodes < 0:
            raise ValueError(f"--eval-episodes must be >= 0, got {self.eval_episodes}")


def load_teacher(checkpoint: Path, device: torch.device) -> DiffusionPolicy:
    path = find_policy_dir(checkpoint)
    teacher = DiffusionPolicy.from_pretrained(path, device=device)
    if teacher.cfg.consistency_timesteps is not None:
        raise ValueError(f"{path} is already a distilled policy; distill its teacher instead")
    if teacher.cfg.objective != "diffusion":
        raise ValueError(
            f"{path} has objective {teacher.cfg.objective!r}; only a diffusion policy "
            "(epsilon prediction) can be distilled"
        )
    teacher.source = path
    return teacher


def open_dataset(cfg: Config, teacher: DiffusionPolicy) -> tuple[WindowDataset, str]:
    """The teacher's dataset (or --dataset), windowed as the teacher was trained."""
    pcfg = teacher.cfg
    path = cfg.dataset or teacher.metadata.get("dataset")
    if path is None:
        raise ValueError(f"{teacher.source}: its metadata names no dataset; pass --dataset")
    if not Path(path).exists():
        raise FileNotFoundError(
            f"dataset {path} (the teacher's, from {teacher.source}/config.json) not found; "
            "pass --dataset"
        )
    data = WindowDataset(
        path,
        obs_keys=tuple(pcfg.obs_shapes),
        image_keys=tuple(pcfg.cameras),
        horizon=pcfg.horizon,
        n_obs_steps=pcfg.n_obs_steps,
        n_action_steps=pcfg.n_action_steps,
        val_ratio=0.0,
        seed=cfg.seed,
        in_memory=True,
        obs_steps_only=True,
        pad_after=teacher.metadata.get("pad_after"),  # as the teacher was trained; None: T - To
    )
    return data, str(path)


def distill(cfg: Config) -> dict:
    """Distill cfg.checkpoint into cfg.out (written whole, or not at all); returns the summary
    {"distill_s", "grid", "teacher_gap"[, "eval_success", "eval_s"]}."""
    if cfg.out.exists():
        raise FileExistsError(f"--out {cfg.out} exists; choose a new folder (nothing was changed)")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    teacher = load_teacher(cfg.checkpoint, device)
    data, data_path = open_dataset(cfg, teacher)
    # the dataset's keys and shapes must be the ones the teacher was trained on
    shapes = {k: tuple(data.shapes[k]) for k in teacher.cfg.obs_shapes}
    if shapes != teacher.cfg.obs_shapes or data.action_dim != teacher.cfg.action_dim:
        raise ValueError(
            f"dataset observation shapes {shapes} / action size {data.action_dim} differ from "
            f"the teacher's {teacher.cfg.obs_shapes} / {teacher.cfg.action_dim}"
        )
    spacing = cfg.grid_spacing or teacher.cfg.timestep_spacing
    grid = ddim_grid(teacher.cfg.num_train_timesteps, cfg.grid_steps, spacing)
    distiller = ConsistencyDistiller(
        teacher, grid=grid, target_decay=cfg.target_decay, distance=cfg.distance
    )
    student = distiller.student.train()
    if cfg.n_action_steps is not None:  # re-validated against T and To
        student.cfg = dataclasses.replace(student.cfg, n_action_steps=cfg.n_action_steps)
    rng = np.random.default_rng(cfg.seed)

    def windows() -> dict:
        """A batch of training windows; the loss draws its noise and grid positions from
        torch's global generator."""
        b = data.get_batch(rng.integers(0, len(data), size=cfg.batch_size))
        return {"obs": {k: v.to(device) for k, v in b["obs"].items()}, "action": b["action"]}

    loop_cfg = LoopConfig(
        steps=cfg.steps,
        lr=cfg.lr,
        weight_decay=0.01,  # AdamW's default, which distillation has always used
        warmup_steps=cfg.warmup_steps,
        grad_clip=cfg.grad_clip,
        ema_power=cfg.ema_power,
        amp=cfg.amp,
        log_every=cfg.log_every,
        progress=cfg.progress,
    )
    log.info(
        "distilling %s (%.2f M parameters) on %s, %d windows; grid %s",
        teacher.source,
        sum(p.numel() for p in student.parameters()) / 1e6,
        data_path,
        len(data),
        list(grid),
    )
    with atomic_dir(cfg.out) as tmp:  # progress goes to <out>.tmp/metrics.jsonl meanwhile
        loop = TrainLoop(
            student,
            loop_cfg,
            tmp,
            windows,
            lambda _, batch: distiller.loss(batch),
            after_step=distiller.update_target,
        )
        seconds = loop.run()["wall_time_s"]
        summary = finish(cfg, teacher, loop.ema.model, data, data_path, grid, seconds, tmp)
    log.info("distilled policy in %s (%.1f min)", cfg.out, seconds / 60)
    return summary


def finish(
    cfg: Config,
    teacher: DiffusionPolicy,
    student: DiffusionPolicy,
    data: WindowDataset,
    data_path: str,
    grid: tuple[int, ...],
    seconds: float,
    folder: Path,
) -> dict:
    """Measure the (EMA) student's teacher gap, roll it out with one step if asked, and save
    it into `folder` with its metadata."""
    meta = dict(teacher.metadata)
    meta["distilled_from"] = str(teacher.source)
    meta["dataset"] = data_path
    meta["distill"] = {
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "grid": list(grid),
        "target_decay": cfg.target_decay,
        "distance": cfg.distance,
        "wall_time_s": seconds,
    }
    # rollout-free quality: the 1-step chunk against the teacher's DDIM-N chunk, same noise
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    b = data.get_batch(np.random.default_rng(cfg.seed + 1).integers(0, len(data), size=512))
    noise = torch.randn(512, *b["action"].shape[1:], generator=gen)  # (512, T, Da)
    gap = teacher_gap(teacher, student.eval(), b, noise)
    meta["distill"]["teacher_gap"] = gap
    log.info("1-step chunk vs the teacher's DDIM %d chunk: mean |diff| %.4f", len(grid), gap)
    summary: dict = {"distill_s": seconds, "grid": list(grid), "teacher_gap": gap}
    if cfg.eval_episodes > 0:
        seeds = list(range(EVAL_SEED_START + 1000, EVAL_SEED_START + 1000 + cfg.eval_episodes))
        actor = PolicyActor(student, "consistency", 1)
        result, _ = evaluate_policy(actor, task_from_metadata(teacher.metadata), seeds)
        summary.update(eval_success=result["success_rate"], eval_s=result["wall_time_s"])
        with open(folder / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": cfg.steps, **summary}) + "\n")
        log.info("1-step student on %d episodes: success %.2f", len(seeds), result["success_rate"])
    student.save_pretrained(folder, metadata=meta)
    return summary


def cli() -> None:
    run_command(distill, Config, "dp-distill")


if __name__ == "__main__":
    cli()
