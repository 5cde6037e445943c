"""The one training loop: every command that optimizes a policy (train, distill) runs TrainLoop.

TrainLoop knows nothing of datasets or environments. It is handed a policy, a source of
batches and a loss function, and does the rest: AdamW with a warm-up + cosine learning rate,
gradient clipping, bf16 autocast, an EMA of the weights (the policy that is saved), logs to
<out>/metrics.jsonl and the console, and, when asked, periodic evaluation (best/ keeps the
best EMA policy) and checkpoints that resume exactly:

    <out>/checkpoints/step_XXXXXXX/   EMA policy (config.json + model.safetensors) + state
    <out>/checkpoints/latest.json     {"name", "step"}: written last, so it always points at
                                      a complete checkpoint
    <out>/best/                       EMA policy with the best evaluation so far (ties: the
                                      later one)

One step, in this order (the order fixes the numerics, so a refactor must keep it):
batch = next batch; loss = loss_fn(model, batch) under autocast; zero_grad; backward;
clip_grad_norm_; optimizer step; LR step; after_step(); EMA update; step += 1.

Under torchrun (DistributedDataParallel) every rank runs the loop on its share of the batch
and the model handed to loss_fn is the DDP wrapper, whose backward averages the gradients;
rank 0 logs, evaluates and writes while the others wait. The process-group helpers live here
too: backend_for, dist_rank_world, rank_device, mean_over_ranks, barrier.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from dplite.policy.checkpoint import atomic_dir, atomic_write, load_state, recover_dir, save_state
from dplite.policy.diffusion import DiffusionPolicy
from dplite.policy.ema import EMA
from dplite.policy.transformer import TransformerForDiffusion

log = logging.getLogger(__name__)

Batch = Any  # whatever the batch source yields and loss_fn takes
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


class Stateful(Protocol):
    """Something whose state a checkpoint keeps: the batch source's random streams."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at `total` steps."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


# ---------------------------------------------------------------------------- process group


def backend_for(device: torch.device) -> str:
    """The process-group backend for tensors on ``device``: NCCL for CUDA, gloo for anything
    else (a --device cpu run on a GPU host too: NCCL cannot move CPU tensors)."""
    return "nccl" if device.type == "cuda" else "gloo"


def dist_rank_world(device: torch.device) -> tuple[int, int]:
    """(rank, world size): joins the process group, with the backend ``device`` needs, when
    started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend_for(device))
    return dist.get_rank(), dist.get_world_size()


def rank_device(device: torch.device, world: int) -> torch.device:
    """Under torchrun on CUDA each process takes its own GPU (LOCAL_RANK)."""
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return device


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def mean_over_ranks(value: float, device: torch.device) -> float:
    """The mean of `value` over all processes (itself outside torchrun); every rank calls it."""
    if not _distributed():
        return value
    x = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(x)
    return float(x.item()) / dist.get_world_size()


def barrier() -> None:
    if _distributed():
        dist.barrier()


# ---------------------------------------------------------------------------- the loop


def optimizer_groups(
    policy: DiffusionPolicy, weight_decay: float, transformer_weight_decay: float | None = None
) -> list[dict]:
    """AdamW parameter groups. One group at `weight_decay` (every parameter, in
    policy.parameters() order), unless `transformer_weight_decay` is set and the network is a
    TransformerForDiffusion: then the reference's split of the network (its Linear weights at
    transformer_weight_decay, its biases, LayerNorm weights and position embeddings at 0, as
    TransformerForDiffusion.optim_groups) and a third group at `weight_decay` for everything
    else (camera encoders), as the reference's image transformer decays its encoder apart."""
    net = policy.net
    if transformer_weight_decay is None or not isinstance(net, TransformerForDiffusion):
        return [{"params": list(policy.parameters()), "weight_decay": weight_decay}]
    groups = net.optim_groups(transformer_weight_decay)
    in_net = {id(p) for p in net.parameters()}
    rest = [p for p in policy.parameters() if id(p) not in in_net]
    if rest:
        groups.append({"params": rest, "weight_decay": weight_decay})
    return groups


@dataclass
class LoopConfig:
    """How TrainLoop optimizes, and how often it logs, evaluates and saves."""

    steps: int
    lr: float = 1e-3
    """Peak learning rate (linear warm-up, then cosine decay to 0 at `steps`)."""
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = 1e-6
    transformer_weight_decay: float | None = None
    """For a policy whose network is a TransformerForDiffusion: AdamW groups as the reference's
    (optimizer_groups), this decay on its Linear weights. None: `weight_decay` on every
    parameter, whatever the network."""
    warmup_steps: int = 200
    grad_clip: float = 1.0
    """Max gradient norm (0 turns clipping off)."""
    ema_power: float = 0.75
    amp: bool = False
    """bf16 autocast around loss_fn."""
    log_every: int = 100
    eval_every: int = -1
    """Call `evaluate` every N steps (0: only at the end; -1: never)."""
    save_every: int | None = None
    """Checkpoint every N steps and at the end (None: never; nothing to resume then)."""
    keep_checkpoints: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoopConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.save_every is not None and self.save_every < 1:
            raise ValueError(f"LoopConfig.save_every must be None or >= 1, got {self.save_every}")


class TrainLoop:
    """Optimizes `policy` on `loss_fn(model, batch)` over batches from `batches`, writing
    into the folder `out` (which it creates). See the module docstring for one step's order.

    batches      a callable returning the next batch, or an iterable of batches
    loss_fn      (model, batch) -> scalar loss; model is `policy`, or its DDP wrapper when
                 world > 1 (call it, rather than `policy`, so that gradients are averaged)
    evaluate     (EMA policy) -> metrics to log, holding "eval_success" (a rate that picks
                 best/); rank 0 only, at LoopConfig.eval_every
    validate     (EMA policy, step) -> extra metrics for each log record; rank 0 only
    after_step   called after each optimizer step, before the EMA update (e.g. moving a
                 distillation target network)
    rng_state    its state_dict() entries are stored at the top level of each checkpoint's
                 state and handed back to load_state_dict() on resume
    metadata     saved with every policy folder, plus "step"
    rank, world  this process in a torchrun group (see dist_rank_world)
    """

    def __init__(
        self,
        policy: DiffusionPolicy,
        cfg: LoopConfig,
        out: Path,
        batches: Callable[[], Batch] | Iterable[Batch],
        loss_fn: LossFn,
        *,
        evaluate: Callable[[DiffusionPolicy], Mapping[str, float]] | None = None,
        validate: Callable[[DiffusionPolicy, int], Mapping[str, float]] | None = None,
        after_step: Callable[[], None] | None = None,
        rng_state: Stateful | None = None,
        metadata: Mapping[str, Any] | None = None,
        rank: int = 0,
        world: int = 1,
    ):
        self.cfg, self.out, self.policy = cfg, Path(out), policy
        self.next_batch = batches if callable(batches) else iter(batches).__next__
        self.loss_fn, self.evaluate, self.validate = loss_fn, evaluate, validate
        self.after_step, self.rng_state = after_step, rng_state
        self.metadata = dict(metadata or {})
        self.rank, self.world, self.device = rank, world, policy.device
        # forward() is compute_loss; DDP averages the gradients of the ranks' slices
        self.model = DistributedDataParallel(policy) if world > 1 else policy
        self.ema = EMA(policy, power=cfg.ema_power)
        self.opt = torch.optim.AdamW(  # every parameter: the network and the camera encoders
            optimizer_groups(policy, cfg.weight_decay, cfg.transformer_weight_decay),
            lr=cfg.lr,
            betas=cfg.betas,
            weight_decay=cfg.weight_decay,
        )
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, warmup_cosine(cfg.warmup_steps, cfg.steps)
        )
        self.step = 0
        self.best_success = -1.0
        self.last_eval: dict[str, float] = {}
        self.ckpt_dir = self.out / "checkpoints"

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
            **(self.rng_state.state_dict() if self.rng_state is not None else {}),
            "cuda_rng": torch.cuda.get_rng_state() if self.device.type == "cuda" else None,
        }

    def try_resume(self) -> bool:
        """Load the state of checkpoints/latest.json, if there is one."""
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
        if self.rng_state is not None:
            self.rng_state.load_state_dict(state)
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.step, self.best_success = int(state["step"]), float(state["best_success"])
        log.info("resumed from %s at step %d", self.ckpt_dir / name, self.step)
        return True

    def save_checkpoint(self) -> Path:
        """A whole step folder swapped into place, then latest.json repointed, then pruning."""
        name = f"step_{self.step:07d}"
        final = self.write_policy_dir(self.ckpt_dir / name, with_state=True)
        atomic_write(self.ckpt_dir / "latest.json", json.dumps({"name": name, "step": self.step}))
        old = sorted(p for p in self.ckpt_dir.glob("step_*") if p.is_dir() and p.suffix == "")
        for p in old[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(p)
        return final

    def write_policy_dir(self, final: Path, with_state: bool) -> Path:
        """EMA policy (+ training state), written whole and swapped in for `final`."""
        with atomic_dir(final) as tmp:
            self.ema.model.save_pretrained(tmp, metadata={**self.metadata, "step": self.step})
            if with_state:
                save_state(self.state(), tmp)
        return final

    # ---------------------------------------------------------------- loop
    def log(self, record: dict) -> None:
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        log.info(
            " | ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
            )
        )

    def run(self) -> dict:
        """Train from the latest checkpoint (or step 0) to cfg.steps; returns {"step",
        "best_success", "last_eval", "wall_time_s"}."""
        cfg, lead = self.cfg, self.rank == 0
        if lead:
            self.out.mkdir(parents=True, exist_ok=True)
            recover_dir(self.out / "best")
        self.try_resume()
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.amp)
        bar = tqdm(
            total=cfg.steps, initial=self.step, disable=not (cfg.progress and lead), unit="step"
        )
        losses: list[float] = []
        t0 = t_last = time.perf_counter()
        self.policy.train()
        with logging_redirect_tqdm():  # log lines above the progress bar, not through it
            while self.step < cfg.steps:
                batch = self.next_batch()
                with autocast:
                    loss = self.loss_fn(self.model, batch)
                value = loss.item()
                if not math.isfinite(value):  # it would poison the weights, EMA and checkpoints
                    raise FloatingPointError(f"loss is {value} at step {self.step + 1}")
                self.opt.zero_grad(set_to_none=True)
                loss.backward()  # under DDP: gradients averaged over the ranks here
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
                self.opt.step()
                self.lr_sched.step()
                if self.after_step is not None:
                    self.after_step()
                self.ema.update(self.policy)
                self.step += 1
                losses.append(value)
                bar.update(1)
                done = self.step == cfg.steps
                if self.step % cfg.log_every == 0 or done:
                    now = time.perf_counter()
                    record = {
                        "step": self.step,
                        "loss": mean_over_ranks(float(np.mean(losses)), self.device),
                        "lr": self.lr_sched.get_last_lr()[0],
                        "it_s": len(losses) / (now - t_last),
                        "elapsed_s": now - t0,
                    }
                    if lead:
                        if self.validate is not None:
                            record.update(self.validate(self.ema.model, self.step))
                        self.log(record)
                    losses, t_last = [], now
                if self.evaluate is not None and self.due(cfg.eval_every, done):
                    if lead:
                        self.run_evaluation()
                    barrier()  # the other ranks wait for rank 0's rollouts
                    t_last = time.perf_counter()  # keep it/s about training only
                if cfg.save_every is not None and (self.step % cfg.save_every == 0 or done):
                    if lead:
                        self.save_checkpoint()
                    barrier()
        bar.close()
        return {
            "step": self.step,
            "best_success": self.best_success,
            "last_eval": self.last_eval,
            "wall_time_s": time.perf_counter() - t0,
        }

    def due(self, every: int, done: bool) -> bool:
        """every N steps and at the end; 0: only at the end; -1: never."""
        return every >= 0 and ((every > 0 and self.step % every == 0) or done)

    def run_evaluation(self) -> None:
        assert self.evaluate is not None
        self.last_eval = dict(self.evaluate(self.ema.model))
        self.log({"step": self.step, **self.last_eval})
        # ties go to the later checkpoint: 20 rollouts often tie at the top, and the later
        # one has trained longer at a lower learning rate
        if self.last_eval["eval_success"] >= self.best_success:
            self.best_success = self.last_eval["eval_success"]
            self.write_policy_dir(self.out / "best", with_state=False)
