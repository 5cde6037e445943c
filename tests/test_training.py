"""The one training loop (policy/training.py): its contract on a tiny policy, and scripts.train
and scripts.distill, which both run it, against hand-written loops that follow the documented
order of every random draw and update step (so a refactor that moves a draw fails here)."""

import copy
import json
import math

import numpy as np
import pytest
import torch

from dplite.data.dataset import WindowDataset
from dplite.policy.checkpoint import find_policy_dir
from dplite.policy.consistency import ConsistencyDistiller, ddim_grid, teacher_gap
from dplite.policy.diffusion import DiffusionPolicy, PolicyConfig
from dplite.policy.ema import EMA
from dplite.policy.training import (
    LoopConfig,
    TrainLoop,
    barrier,
    dist_rank_world,
    mean_over_ranks,
    warmup_cosine,
)
from dplite.scripts import collect, distill, train

TINY = dict(horizon=8, n_action_steps=4, down_dims=(8, 16), diffusion_step_embed_dim=8)


def _policy(seed: int = 0) -> DiffusionPolicy:
    torch.manual_seed(seed)
    return DiffusionPolicy(PolicyConfig(obs_shapes={"s": (2,)}, **TINY))


class Windows:
    """A seeded batch source with a checkpointable stream, like scripts.train's."""

    def __init__(self, seed: int = 0):
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self) -> dict:
        obs = torch.rand(4, 2, 2, generator=self.gen)  # (B, To, Do)
        return {"obs": {"s": obs}, "action": obs[:, -1:].expand(4, 8, 2) * 0.5}  # (B, T, Da)

    def state_dict(self) -> dict:
        return {"windows_rng": self.gen.get_state()}

    def load_state_dict(self, state) -> None:
        self.gen.set_state(state["windows_rng"])


def _loss(model, batch):
    return model(batch)  # compute_loss, its noise from torch's global generator


def _records(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- the loop itself
def test_step_order_hook_and_logs(tmp_path):
    policy = _policy()
    seen = []  # (optimizer steps, EMA updates, LR) when the hook runs
    cfg = LoopConfig(steps=5, warmup_steps=2, log_every=2, progress=False)

    def hook() -> None:
        adam_steps = loop.opt.state_dict()["state"][0]["step"].item()
        seen.append((adam_steps, loop.ema.step, loop.lr_sched.last_epoch))

    batches = iter([Windows()() for _ in range(5)])  # an iterable works as well as a callable
    loop = TrainLoop(policy, cfg, tmp_path / "run", batches, _loss, after_step=hook)
    result = loop.run()
    # after the optimizer and LR steps, before the EMA update
    assert seen == [(k, k - 1, k) for k in range(1, 6)]
    assert result["step"] == 5 and result["best_success"] == -1.0 and result["last_eval"] == {}
    assert [r["step"] for r in _records(tmp_path / "run")] == [2, 4, 5]
    assert all({"loss", "lr", "it_s", "elapsed_s"} <= r.keys() for r in _records(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()  # save_every None: no checkpoints
    assert _records(tmp_path / "run")[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(2, 5)(0) == 0.5 and warmup_cosine(2, 5)(5) == pytest.approx(0.0)


def test_evaluation_picks_best_later_on_ties_and_checkpoints_are_pruned(tmp_path):
    rates = iter([0.5, 0.25, 0.5, 0.0])
    cfg = LoopConfig(steps=4, log_every=4, eval_every=1, save_every=1, keep_checkpoints=2,
                     progress=False)  # fmt: skip
    loop = TrainLoop(_policy(), cfg, tmp_path, Windows(), _loss,
                     evaluate=lambda p: {"eval_success": next(rates), "eval_s": 0.1},
                     validate=lambda p, step: {"val_loss": float(step)},
                     metadata={"task": "toy"})  # fmt: skip
    result = loop.run()
    assert result["best_success"] == 0.5 and result["last_eval"]["eval_success"] == 0.0
    best = DiffusionPolicy.from_pretrained(tmp_path / "best")
    assert best.metadata == {"task": "toy", "step": 3}  # the tie at step 3 wins over step 1
    evals = [r for r in _records(tmp_path) if "eval_success" in r]
    assert [(r["step"], r["eval_success"]) for r in evals] == [
        (1, 0.5),
        (2, 0.25),
        (3, 0.5),
        (4, 0.0),
    ]
    assert [r["val_loss"] for r in _records(tmp_path) if "loss" in r] == [4.0]
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["latest.json", "step_0000003", "step_0000004"]
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text())["step"] == 4


def test_resume_restores_weights_optimizer_and_streams(tmp_path):
    cfg = LoopConfig(steps=4, warmup_steps=1, log_every=1, save_every=2, progress=False)
    src = Windows()
    whole = TrainLoop(_policy(), cfg, tmp_path / "whole", src, _loss, rng_state=src)
    whole.run()

    def killed_loss(model, batch):
        if loop.step == 2:
            raise KeyboardInterrupt("killed")
        return _loss(model, batch)

    src = Windows()
    loop = TrainLoop(_policy(), cfg, tmp_path / "killed", src, killed_loss, rng_state=src)
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    src = Windows(seed=123)  # a fresh process: the checkpoint restores the stream
    resumed = TrainLoop(_policy(seed=5), cfg, tmp_path / "killed", src, _loss, rng_state=src)
    resumed.run()
    assert resumed.step == 4 and resumed.ema.step == 4
    for a, b in zip(resumed.ema.model.parameters(), whole.ema.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(resumed.policy.parameters(), whole.policy.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_non_finite_loss_stops_before_the_weights_change(tmp_path):
    policy = _policy()
    before = copy.deepcopy(policy.state_dict())
    cfg = LoopConfig(steps=3, save_every=1, progress=False)
    loop = TrainLoop(policy, cfg, tmp_path, Windows(), lambda m, b: _loss(m, b) * math.nan)
    with pytest.raises(FloatingPointError, match="loss is nan at step 1"):
        loop.run()
    assert all(torch.equal(v, before[k]) for k, v in policy.state_dict().items())
    assert not (tmp_path / "checkpoints").exists()


def test_process_group_helpers_outside_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dist_rank_world(torch.device("cpu")) == (0, 1)
    assert mean_over_ranks(0.25, torch.device("cpu")) == 0.25
    barrier()  # a no-op


# ---------------------------------------------------------------- the scripts' numerics
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pusht.zarr"
    collect.main(collect.Config(episodes=2, out=path, progress=False))
    return path


def _windows(path, pcfg: PolicyConfig) -> WindowDataset:
    return WindowDataset(path, obs_keys=tuple(pcfg.obs_shapes), horizon=pcfg.horizon,
                         n_obs_steps=pcfg.n_obs_steps, n_action_steps=pcfg.n_action_steps,
                         val_ratio=0.0, seed=0, in_memory=True, obs_steps_only=True,
                         pad_after=pcfg.horizon - pcfg.n_obs_steps)  # fmt: skip


def _assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def test_train_is_the_documented_loop(dataset, tmp_path):
    """scripts.train's weights after 5 steps, bit for bit, from: torch.manual_seed(seed) before
    the policy is built; per step a numpy default_rng(seed) draws the global batch's window
    indices, a CPU torch.Generator(seed) its noise (B, T, Da) and then its timesteps (B,);
    forward, zero_grad, backward, clip, AdamW step, LR step, EMA update."""
    cfg = train.Config(dataset=dataset, out=tmp_path / "run", down_dims=(16, 32, 64),
                       diffusion_step_embed_dim=16, batch_size=8, steps=5, warmup_steps=2,
                       grad_clip=0.5, log_every=2, save_every=3, eval_every=-1, val_ratio=0.0,
                       progress=False)  # fmt: skip
    loop = train.setup(cfg)
    pcfg = loop.policy.cfg
    torch.manual_seed(cfg.seed)
    ref = DiffusionPolicy(pcfg, copy.deepcopy(loop.policy.normalizer))
    _assert_same(ref, loop.policy)  # the initial weights: nothing drew in between
    loop.run()

    data = _windows(dataset, pcfg)
    ema = EMA(ref, power=cfg.ema_power)
    opt = torch.optim.AdamW(ref.parameters(), lr=cfg.lr, betas=cfg.betas,
                            weight_decay=cfg.weight_decay)  # fmt: skip
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup_steps, cfg.steps))
    rng, gen = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    ref.train()
    for _ in range(cfg.steps):
        batch = data.get_batch(rng.integers(0, len(data), size=cfg.batch_size))
        noise = torch.randn((cfg.batch_size, pcfg.horizon, pcfg.action_dim), generator=gen)
        t = torch.randint(0, pcfg.num_train_timesteps, (cfg.batch_size,), generator=gen)
        loss = ref.compute_loss(batch, noise=noise, timesteps=t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        ema.update(ref)
    _assert_same(loop.policy, ref)
    _assert_same(loop.ema.model, ema.model)
    saved = DiffusionPolicy.from_pretrained(tmp_path / "run" / "checkpoints" / "step_0000005")
    _assert_same(saved, ema.model)


def test_distill_is_the_documented_loop(dataset, tmp_path):
    """scripts.distill's student after 3 steps, bit for bit, from: torch.manual_seed(seed)
    before the teacher is loaded and the student built; per step a numpy default_rng(seed)
    draws the window indices and the loss draws from torch's global generator; AdamW (its
    default weight decay), LR step, target update, EMA update."""
    train.main(train.Config(dataset=dataset, out=tmp_path / "run", down_dims=(16, 32, 64),
                            diffusion_step_embed_dim=16, batch_size=8, steps=2, warmup_steps=1,
                            eval_every=-1, val_ratio=0.0, progress=False))  # fmt: skip
    cfg = distill.Config(checkpoint=tmp_path / "run", out=tmp_path / "cd", steps=3, batch_size=8,
                         warmup_steps=1, log_every=2, eval_episodes=0, progress=False)  # fmt: skip
    summary = distill.distill(cfg)
    assert [r["step"] for r in _records(tmp_path / "cd")] == [2, 3]

    torch.manual_seed(cfg.seed)
    teacher = DiffusionPolicy.from_pretrained(find_policy_dir(tmp_path / "run"))
    grid = ddim_grid(teacher.cfg.num_train_timesteps, cfg.grid_steps, teacher.cfg.timestep_spacing)
    distiller = ConsistencyDistiller(teacher, grid=grid, target_decay=cfg.target_decay,
                                     distance=cfg.distance)  # fmt: skip
    student = distiller.student.train()
    data = _windows(dataset, teacher.cfg)
    ema = EMA(student, power=cfg.ema_power)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, betas=(0.95, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup_steps, cfg.steps))
    rng = np.random.default_rng(cfg.seed)
    for _ in range(cfg.steps):
        loss = distiller.loss(data.get_batch(rng.integers(0, len(data), size=cfg.batch_size)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        distiller.update_target()
        ema.update(student)
    _assert_same(DiffusionPolicy.from_pretrained(tmp_path / "cd"), ema.model)
    # and the teacher gap at the end, on its own streams (seed + 1)
    b = data.get_batch(np.random.default_rng(cfg.seed + 1).integers(0, len(data), size=512))
    noise = torch.randn(512, *b["action"].shape[1:], generator=torch.Generator().manual_seed(1))
    assert summary["teacher_gap"] == teacher_gap(teacher, ema.model.eval(), b, noise)


def test_backend_follows_the_device_not_the_host():
    from dplite.policy.training import backend_for

    assert backend_for(torch.device("cpu")) == "gloo"  # also on a host with a GPU
    assert backend_for(torch.device("cuda", 1)) == "nccl"
