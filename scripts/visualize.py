"""Draw the denoising of action chunks, from noise to plan, over the scene they act in.

    python -m dplite.scripts.visualize --checkpoint outputs/runs/pusht --out outputs/denoising.png
    python -m dplite.scripts.visualize --checkpoint C --out pic.png --seed 100002 --samples 8 \
        --sampler ddim --inference-steps 10 --steps 0 2 5 8 10

One observation: the environment reset at a held-out seed (default envs.EVAL_SEED_START), its
history that observation repeated To times (as at an episode's start). --samples chunks are
sampled for it in one batch from one generator (--noise-seed), and DiffusionPolicy.predict_action
(return_trajectory=True) hands back every intermediate chunk; the panels show the chunks after
the chosen denoising steps (0 = the initial noise, k = the plan). The executed actions (indices
To-1 ... To+Ta-2) are drawn thicker, the newest anchor observation (PushT: the pusher) as a
cross. An "mse" policy has one panel: its single network evaluation.

The scene is the task's render (rgb_array at its video size) where the mapping from actions to
image pixels is known: PushT's actions are positions in the reference's 512 x 512 pixel frame,
and its top camera (orthographic, 0.512 m wide, centred on the table, image rows = +y) shows
exactly that square, so a position p lands at image pixel p * size / 512 (tests/test_visualize.py
finds the rendered pusher there). Other tasks get the first two action dimensions on plain axes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")  # files only: no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

from dplite import envs  # noqa: E402
from dplite.envs.options import run_command  # noqa: E402
from dplite.envs.pusht import WORKSPACE  # noqa: E402
from dplite.envs.tasks import TaskSpec, flatten_obs, make_env, task_from_metadata  # noqa: E402
from dplite.policy.checkpoint import atomic_file, find_policy_dir  # noqa: E402
from dplite.policy.device import resolve_device  # noqa: E402
from dplite.policy.diffusion import DiffusionPolicy  # noqa: E402

log = logging.getLogger(__name__)

# Tasks whose rendered frame shows a known square [lo, hi]^2 of action space (x to the right,
# y down the image rows): {gymnasium id: (lo, hi)}.
SCENE_BOUNDS: dict[str, tuple[float, float]] = {"PushT-v0": (0.0, WORKSPACE)}
PANEL_IN = (3.2, 3.4)  # inches per panel (width, height); at DPI: 320 x 340 px
DPI = 100
DEFAULT_PANELS = 5


@dataclass
class Config:
    checkpoint: Path
    """Policy folder or training run folder (its best / latest policy)."""
    out: Path = Path("outputs/denoising.png")
    """PNG to write."""
    seed: int = envs.EVAL_SEED_START
    """Environment seed of the observation (held-out by default)."""
    samples: int = 8
    """Chunks sampled for the observation."""
    steps: tuple[int, ...] | None = None
    """Denoising steps drawn, one panel each (0 = noise, k = plan); default 5 evenly spaced."""
    sampler: Literal["ddpm", "ddim", "consistency"] | None = None
    """Default: the policy's ("consistency" only for a distilled one)."""
    inference_steps: int | None = None
    """k (default: the policy's for its sampler, K for ddpm)."""
    noise_seed: int = 0
    """Seed of the sampling noise."""
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"--samples must be >= 1, got {self.samples}")


@dataclass
class Panels:
    """What the figure draws, in drawing coordinates (image pixels over a scene)."""

    chunks: list[np.ndarray]
    """Per panel, the samples' chunks as xy: (samples, T, 2)."""
    steps: list[int]
    """Per panel, its index in the trajectory (0: the initial noise)."""
    n_steps: int
    """k, the trajectory's last index."""
    sampler: str
    frame: np.ndarray | None
    """The scene (H, W, 3) uint8; None: plain axes (the first two action dimensions)."""
    anchor: np.ndarray | None
    """Newest anchor observation (e.g. the pusher), (2,), or None."""
    executed: slice
    """Chunk indices of the actions executed before re-planning."""


def to_image(xy: np.ndarray, bounds: tuple[float, float], size: int) -> np.ndarray:
    """Action-space positions (..., 2) -> continuous image pixel coordinates (..., 2) of a
    size x size render showing [lo, hi]^2 (pixel i covers [i, i + 1))."""
    lo, hi = bounds
    return (np.asarray(xy, dtype=np.float64) - lo) * (size / (hi - lo))


def observation_batch(
    policy: DiffusionPolicy, obs: dict[str, np.ndarray], samples: int
) -> dict[str, torch.Tensor]:
    """One observation as a batch of `samples` identical histories: {key: (S, To, ...)}."""
    to = policy.cfg.n_obs_steps
    return {
        k: torch.from_numpy(np.repeat(obs[k][None, None], to, axis=1))  # (1, To, ...)
        .expand(samples, *([-1] * (obs[k].ndim + 1)))  # (S, To, ...)
        .to(policy.device)
        for k in policy.cfg.obs_shapes
    }


def default_steps(n_steps: int, panels: int = DEFAULT_PANELS) -> list[int]:
    """Evenly spaced trajectory indices from the noise (0) to the plan (n_steps)."""
    return sorted({int(round(i)) for i in np.linspace(0, n_steps, min(panels, n_steps + 1))})


def denoising_panels(
    policy: DiffusionPolicy,
    spec: TaskSpec,
    seed: int,
    samples: int = 8,
    steps: list[int] | tuple[int, ...] | None = None,
    sampler: str | None = None,
    inference_steps: int | None = None,
    noise_seed: int = 0,
) -> Panels:
    """Sample `samples` chunks for the env's reset observation at `seed` and return the
    trajectory entries `steps` (default: evenly spaced) as they are drawn."""
    keys = list(policy.cfg.obs_shapes)
    bounds = SCENE_BOUNDS.get(spec.env_id)
    env = make_env(spec, obs_keys=keys, render=bounds is not None)
    try:
        obs = flatten_obs(env.reset(seed=seed)[0])
        frame = env.render() if bounds is not None else None
    finally:
        env.close()
    sampler_used, _ = policy.sampler_settings(sampler, inference_steps)
    gen = torch.Generator(policy.device).manual_seed(noise_seed)
    out = policy.predict_action(
        observation_batch(policy, obs, samples),
        sampler,
        inference_steps,
        generator=gen,
        return_trajectory=True,
    )
    trajectory = [x.float().cpu().numpy() for x in out["trajectory"]]  # k + 1 of (S, T, Da)
    n_steps = len(trajectory) - 1
    steps = default_steps(n_steps) if steps is None else list(steps)
    bad = [s for s in steps if not 0 <= s <= n_steps]
    if bad or not steps:
        raise ValueError(
            f"--steps {steps}: each must be in [0, {n_steps}] ({sampler_used}, "
            f"{n_steps} denoising steps; 0 is the initial noise)"
        )
    anchor_key = policy.cfg.action_anchor
    anchor = obs[anchor_key][:2] if anchor_key is not None else None
    chunks = [_xy(trajectory[s]) for s in steps]  # (S, T, 2) each
    if bounds is not None and frame is not None:
        chunks = [to_image(c, bounds, frame.shape[1]) for c in chunks]
        anchor = to_image(anchor, bounds, frame.shape[1]) if anchor is not None else None
    start = policy.cfg.n_obs_steps - 1
    return Panels(
        chunks=chunks,
        steps=steps,
        n_steps=n_steps,
        sampler=sampler_used,
        frame=frame,
        anchor=anchor,
        executed=slice(start, start + policy.cfg.n_action_steps),
    )


def _xy(chunk: np.ndarray) -> np.ndarray:
    """(S, T, Da) -> (S, T, 2): the first two action dimensions (one dimension: vs time)."""
    if chunk.shape[-1] >= 2:
        return chunk[..., :2]
    t = np.broadcast_to(np.arange(chunk.shape[1], dtype=chunk.dtype)[None, :, None], chunk.shape)
    return np.concatenate([t, chunk], axis=-1)


def draw(panels: Panels, out: Path, title: str) -> Path:
    """One panel per drawn step, in a row: (PANEL_IN[0] * n) x PANEL_IN[1] inches at DPI."""
    n = len(panels.chunks)
    fig, axes = plt.subplots(1, n, figsize=(PANEL_IN[0] * n, PANEL_IN[1]), dpi=DPI, squeeze=False)
    colors = plt.get_cmap("tab10")
    if panels.frame is None:  # plain axes: frame the plan, so that the noise spills over
        plan = panels.chunks[-1].reshape(-1, 2)
        mid, half = (plan.max(0) + plan.min(0)) / 2, (plan.max(0) - plan.min(0)) / 2
        half = np.maximum(half * 1.5, 1e-3)
    for ax, step, chunk in zip(axes[0], panels.steps, panels.chunks, strict=True):
        if panels.frame is not None:
            h, w = panels.frame.shape[:2]
            ax.imshow(panels.frame, extent=(0, w, h, 0))  # pixel i covers [i, i + 1)
            ax.set(xlim=(0, w), ylim=(h, 0), xticks=[], yticks=[])
        else:
            ax.set(xlim=(mid[0] - half[0], mid[0] + half[0]))
            ax.set(ylim=(mid[1] - half[1], mid[1] + half[1]), xlabel="action[0]")
            ax.set_ylabel("action[1]")
            ax.grid(alpha=0.3)
        for s, xy in enumerate(chunk):  # xy: (T, 2)
            c = colors(s % 10)
            ax.plot(xy[:, 0], xy[:, 1], "-", color=c, lw=0.8, alpha=0.7)
            ax.plot(*xy[panels.executed].T, "-", color=c, lw=2.2)
            ax.plot(*xy[panels.executed.start], "o", color=c, ms=3)
        if panels.anchor is not None:
            ax.plot(*panels.anchor, "x", color="black", ms=8, mew=2)
        ax.set_title(_panel_title(step, panels), fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        with atomic_file(out) as tmp:
            fig.savefig(tmp)  # no bbox_inches="tight": the size stays n * 320 x 340 px
    finally:
        plt.close(fig)
    return out


def _panel_title(step: int, panels: Panels) -> str:
    if panels.sampler == "mse":
        return "regression (1 network evaluation)"
    if step == 0:
        return f"noise (step 0/{panels.n_steps})"
    if step == panels.n_steps:
        return f"plan (step {step}/{panels.n_steps})"
    return f"step {step}/{panels.n_steps}"


def main(cfg: Config) -> Path:
    policy_dir = find_policy_dir(cfg.checkpoint)
    policy = DiffusionPolicy.from_pretrained(policy_dir, device=resolve_device(cfg.device))
    spec = task_from_metadata(policy.metadata)
    panels = denoising_panels(
        policy,
        spec,
        cfg.seed,
        cfg.samples,
        cfg.steps,
        cfg.sampler,
        cfg.inference_steps,
        cfg.noise_seed,
    )
    how = "mse regression" if panels.sampler == "mse" else f"{panels.sampler} k={panels.n_steps}"
    title = (
        f"{spec.name}, seed {cfg.seed}: {cfg.samples} samples, {how} "
        f"(step {policy.metadata.get('step')}, {policy_dir})"
    )
    out = draw(panels, cfg.out, title)
    log.info("wrote %s", out)
    return out


def cli() -> None:
    run_command(main, Config, "dp-visualize")


if __name__ == "__main__":
    cli()
