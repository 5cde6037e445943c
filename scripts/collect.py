"""Collect scripted-expert demonstrations into a zarr dataset (the Diffusion Policy layout).

    python -m dplite.scripts.collect --task pusht --episodes 200 --out outputs/data/pusht.zarr
    python -m dplite.scripts.collect --task pusht --episodes 50 --out outputs/data/pusht_img.zarr --images
    python -m dplite.scripts.collect --task panda_lift --episodes 500 --action-noise 0.1
    python -m dplite.scripts.collect --env-id PointMaze_Medium-v3 --env-import gymnasium_robotics \
        --env-kwargs '{"continuing_task": false}' \
        --expert examples.pointmaze_expert:make_expert --episodes 300 --out outputs/data/maze.zarr

The expert (``--expert MODULE:CALLABLE``, default the task's own) follows the protocol of
envs.collect, which runs the episodes: one per seed, reproducible from the seed alone, with the
DART noise of ``--action-noise`` executed but not stored. Seeds run upward from
``--seed-start`` (default ``envs.DEMO_SEED_START``) and must stay below
``envs.EVAL_SEED_START``, so demonstrations never see an evaluation start. Failed episodes (no
success reported in ``info``) are skipped unless ``--keep-failed``. Running the command again on
an existing dataset resumes after the largest recorded seed until ``--episodes`` episodes are
stored.

Stored keys: ``action`` (float32) and every observation key the environment emits, in the
timing convention of envs.collect. The dataset's attributes record the task (``env``: the
TaskSpec as a dict, so ``scripts.train`` knows its environment), the expert, the noise and the
seeds. Per-episode meta: seed, success (0/1), expert_mode (index into the dataset attribute
``expert_modes``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dplite.data.replay_buffer import ReplayBuffer
from dplite.envs import DEMO_SEED_START, EVAL_SEED_START
from dplite.envs.collect import ExpertEpisodes, dataset_attrs, resume_seed
from dplite.envs.options import EnvArgs, EnvOptions, run_command
from dplite.envs.tasks import DEFAULT_TASK, TaskSpec, get_task, output_name

log = logging.getLogger(__name__)


@dataclass
class Config:
    env: EnvArgs = field(default_factory=EnvOptions)
    """--task NAME (default pusht) or --env-id ID with its options."""
    episodes: int = 200
    """Number of episodes the dataset should hold when done (resume counts stored ones)."""
    out: Path | None = None
    """Zarr dataset (directory store; default outputs/data/<task>.zarr); an existing one is
    resumed."""
    expert: str | None = None
    """Expert factory MODULE:CALLABLE (default: the task's own expert)."""
    images: bool = False
    """Also record the task's camera keys (e.g. PushT's 96 x 96 top-down img)."""
    keep_failed: bool = False
    """Store episodes that did not reach success too (meta/success = 0)."""
    seed_start: int = DEMO_SEED_START
    """First seed of a new dataset; seeds must stay below envs.EVAL_SEED_START."""
    action_noise: float = 0.0
    """DART-style noise (Laskey et al. 2017), std in action units (PushT: pixels): the env
    executes the expert's action plus N(0, std^2) per dimension (clipped to the action space)
    while the dataset stores the expert's own action, so the demonstrations also show how to
    recover from small deviations. 0 = the action taken."""
    progress: bool = True
    """Show a tqdm bar (--no-progress for CI logs)."""

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"Config.episodes={self.episodes}, expected >= 1")
        if not DEMO_SEED_START <= self.seed_start < EVAL_SEED_START:
            raise ValueError(
                f"Config.seed_start={self.seed_start}: demonstration seeds must lie in "
                f"[{DEMO_SEED_START}, {EVAL_SEED_START}) (evaluation uses {EVAL_SEED_START}+)"
            )
        if self.action_noise < 0.0:
            raise ValueError(f"Config.action_noise={self.action_noise}, expected >= 0")


def _open_or_create(cfg: Config, spec: TaskSpec, expert: str) -> tuple[ReplayBuffer, int]:
    """The dataset to append to and the next seed to try."""
    if not cfg.out.exists():
        rb = ReplayBuffer.create(cfg.out)
        rb.attrs.update(dataset_attrs(spec, expert, cfg.images, cfg.action_noise, cfg.seed_start))
        return rb, cfg.seed_start
    rb = ReplayBuffer.open(cfg.out, mode="a")
    attrs = dict(rb.attrs)
    recorded = attrs.get("env", {}).get("env_id"), attrs.get("task")
    if recorded != (spec.env_id, spec.name):
        raise ValueError(
            f"{cfg.out}: holds task {recorded[1]!r} (env {recorded[0]!r}), not {spec.name!r} "
            f"(env {spec.env_id!r}); resume with the same environment or write a new dataset"
        )
    if bool(attrs.get("images", cfg.images)) != cfg.images:
        raise ValueError(
            f"{cfg.out}: images={attrs.get('images')} in the dataset but --images={cfg.images}; "
            "resume with the same setting or write a new dataset"
        )
    seeds = rb.get_meta("seed") if rb.n_episodes else []
    return rb, resume_seed(attrs, seeds, cfg.seed_start)


def main(cfg: Config) -> dict[str, Any]:
    """Fill ``cfg.out`` up to ``cfg.episodes`` episodes; returns a summary dict (out,
    episodes, added, tried, success_rate, steps, steps_per_s, modes)."""
    spec = cfg.env.resolve(base=get_task(DEFAULT_TASK))
    if cfg.out is None:
        cfg.out = Path("outputs/data") / f"{output_name(spec)}.zarr"
    source = ExpertEpisodes(spec, cfg.expert, cfg.images, cfg.action_noise)
    rb, seed = _open_or_create(cfg, spec, source.expert_ref)
    source.modes = list(rb.attrs.get("expert_modes", []))
    stored_before = rb.n_episodes
    modes: Counter[str] = Counter()
    tried = succeeded = steps = 0
    t0 = time.perf_counter()
    bar = tqdm(
        total=cfg.episodes, initial=min(stored_before, cfg.episodes), unit="ep",
        disable=not cfg.progress, desc="collect",
    )  # fmt: skip
    try:
        with source:
            for ep in source.episodes(seed) if rb.n_episodes < cfg.episodes else ():
                tried += 1
                steps += len(ep.data["action"])
                modes[ep.mode] += 1
                succeeded += int(ep.success)
                if ep.success or cfg.keep_failed:
                    rb.add_episode(ep.data, episode_meta=ep.meta)
                    bar.update(1)
                rb.attrs.update({"expert_modes": source.modes, "next_seed": ep.seed + 1})
                bar.set_postfix(success=f"{succeeded / tried:.2f}", seed=ep.seed)
                if rb.n_episodes >= cfg.episodes:
                    break
    except ValueError as e:
        raise ValueError(f"{cfg.out}: {e}; stored {rb.n_episodes} of {cfg.episodes}") from e
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    return {
        "out": str(cfg.out),
        "episodes": rb.n_episodes,
        "added": rb.n_episodes - stored_before,
        "tried": tried,
        "success_rate": succeeded / tried if tried else float("nan"),
        "steps": steps,
        "steps_per_s": steps / elapsed if elapsed > 0 else float("nan"),
        "modes": dict(modes),
    }


def cli() -> None:
    s = run_command(main, Config, "dp-collect")
    print(
        f"{s['out']}: {s['episodes']} episodes (+{s['added']}) | tried {s['tried']} | "
        f"success {s['success_rate']:.3f} | {s['steps']} steps | {s['steps_per_s']:.0f} steps/s"
    )
    if s["modes"]:
        print("modes: " + ", ".join(f"{k} {v}" for k, v in sorted(s["modes"].items())))


if __name__ == "__main__":
    cli()
