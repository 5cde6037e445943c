"""Inspect, validate and convert zarr demonstration datasets (the Diffusion Policy layout).

    dp-dataset info PATH        episodes, steps, keys, shapes, dtypes, chunking
    dp-dataset validate PATH    full check; exit status 1 and the error if bad
    dp-dataset import robomimic FILE.hdf5 --out X.zarr [--filter-key train] [--actions actions_abs]
    dp-dataset import lerobot DIR --out X.zarr [--rename observation.state=agent_pos]
    dp-dataset export lerobot X.zarr --out DIR [--fps 10]

info and validate run every check of `ReplayBuffer.open` (data/replay_buffer.py) on a read-only
handle. The conversions (data/robomimic.py, data/lerobot.py) stream one episode at a time, write
under a temporary name beside the destination and rename it when complete, so nothing
half-written is left there; bad input is refused with the file, episode and key. An import given
--task NAME (or --env-id ...) records that environment, so that dp-train needs no --task.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import tyro
from tqdm import tqdm

from dplite.data.replay_buffer import DatasetError, ReplayBuffer
from dplite.envs.options import EnvArgs, EnvOptions, run_command

PathArg = tyro.conf.Positional[Annotated[str, tyro.conf.arg(metavar="PATH")]]


@dataclass
class Info:
    """Print a summary: episodes, steps, per-key shape/dtype/chunks, episode lengths."""

    path: PathArg
    """Dataset: a zarr directory store (v2 or v3) or a .zip store."""


@dataclass
class Validate:
    """Check the dataset against the data contract; exit status 1 when it is malformed."""

    path: PathArg
    """Dataset: a zarr directory store (v2 or v3) or a .zip store."""


@dataclass
class ImportRobomimic:
    """robomimic hdf5 (data/demo_<n>/{actions, obs/<key>}) -> zarr, demos in numeric order."""

    path: tyro.conf.Positional[Annotated[str, tyro.conf.arg(metavar="FILE")]]
    """robomimic .hdf5 file."""
    out: Path
    """Zarr dataset to write (a directory store)."""
    env: EnvArgs = field(default_factory=EnvOptions)
    """--task NAME or --env-id ID: the environment to record (optional)."""
    filter_key: str | None = None
    """Import only the demos listed in mask/<filter_key> (e.g. train, valid)."""
    actions: Literal["actions", "actions_abs"] = "actions"
    """Which action array becomes data/action (actions_abs: robomimic's absolute actions)."""
    obs_keys: tuple[str, ...] | None = None
    """Observation keys to import (default: all of the first demo's)."""
    overwrite: bool = False
    """Replace an existing --out (only once the new dataset is complete)."""
    progress: bool = True
    """Show a tqdm bar (--no-progress for CI logs)."""


@dataclass
class ImportLerobot:
    """LeRobotDataset v3.0 (or v2.1) folder -> zarr, camera frames decoded at their timestamps."""

    path: tyro.conf.Positional[Annotated[str, tyro.conf.arg(metavar="DIR")]]
    """LeRobotDataset root (holds meta/info.json)."""
    out: Path
    """Zarr dataset to write (a directory store)."""
    env: EnvArgs = field(default_factory=EnvOptions)
    """--task NAME or --env-id ID: the environment to record (optional)."""
    features: tuple[str, ...] | None = None
    """LeRobot features to import (default: every numeric, image and video feature)."""
    rename: tuple[str, ...] = ()
    """FEATURE=KEY pairs, e.g. observation.state=agent_pos (default keys drop
    'observation.images.' / 'observation.' and turn dots into underscores)."""
    tolerance_s: float = 1e-4
    """Largest gap between a frame's timestamp and the nearest decoded video frame."""
    overwrite: bool = False
    """Replace an existing --out (only once the new dataset is complete)."""
    progress: bool = True
    """Show a tqdm bar (--no-progress for CI logs)."""


@dataclass
class Export:
    """zarr -> LeRobotDataset v3.0 folder (parquet, one mp4 stream per camera, stats, tasks)."""

    format: tyro.conf.Positional[Annotated[Literal["lerobot"], tyro.conf.arg(metavar="FORMAT")]]
    """Format to write: lerobot (LeRobotDataset v3.0)."""
    path: PathArg
    """Dataset to export: a zarr directory store (v2 or v3) or a .zip store."""
    out: Path
    """LeRobotDataset root folder to write."""
    fps: int | None = None
    """Frames per second (default: the rate the dataset records: its task's control rate or
    the LeRobot source's fps)."""
    task_description: str | None = None
    """Task string of every episode (default: an imported LeRobot dataset's own tasks, else
    the recorded task name)."""
    robot_type: str | None = None
    """info.json robot_type."""
    codec: str = "libsvtav1"
    """Video encoder (LeRobot's default libsvtav1; libx264 also works)."""
    crf: int = 30
    """Video quality: lower is closer to the stored frames and larger (LeRobot's default 30)."""
    overwrite: bool = False
    """Replace an existing --out (only once the new dataset is complete)."""
    progress: bool = True
    """Show a tqdm bar (--no-progress for CI logs)."""


@dataclass
class Import:
    """Convert another format into a zarr dataset."""

    source: tyro.conf.OmitSubcommandPrefixes[
        Annotated[ImportRobomimic, tyro.conf.subcommand("robomimic")]
        | Annotated[ImportLerobot, tyro.conf.subcommand("lerobot")]
    ]


Command = (
    Annotated[Info, tyro.conf.subcommand("info")]
    | Annotated[Validate, tyro.conf.subcommand("validate")]
    | Annotated[tyro.conf.OmitArgPrefixes[Import], tyro.conf.subcommand("import")]
    | Annotated[Export, tyro.conf.subcommand("export")]
)


def _codecs(arr) -> str:
    compressors = getattr(arr, "compressors", ()) or ()
    return ", ".join(type(c).__name__ for c in compressors) or "none"


def info(rb: ReplayBuffer) -> str:
    """A multi-line human summary of an opened replay buffer."""
    lengths = rb.episode_lengths
    lines = [
        f"path        {rb.path}  (zarr v{rb.zarr_format})",
        f"episodes    {rb.n_episodes}",
        f"steps       {rb.n_steps}",
    ]
    if rb.n_episodes:
        lines.append(
            f"ep. length  min {lengths.min()} | median {np.median(lengths):g} | max {lengths.max()}"
        )
    lines.append(f"{'key':<18}{'shape':<22}{'dtype':<10}{'chunks':<22}codecs")
    for k in rb.keys:
        arr = rb.zarr_array(k)
        shape = (rb.n_steps, *arr.shape[1:])
        lines.append(
            f"data/{k:<13}{str(shape):<22}{str(arr.dtype):<10}{str(arr.chunks):<22}{_codecs(arr)}"
        )
    for k in rb.meta_keys:
        lines.append(f"meta/{k:<13}{str((rb.n_episodes,)):<22}{str(rb.get_meta(k).dtype):<10}")
    attrs = dict(rb.attrs)
    if attrs:
        lines.append(f"attrs       {attrs}")
    return "\n".join(lines)


def _env_attrs(env: EnvOptions) -> dict[str, Any]:
    """The environment an import records (as scripts.collect does), if one was named."""
    if not env.given:
        return {}
    spec = env.resolve()
    return {"task": spec.name, "env": spec.to_dict(), "max_episode_steps": spec.max_episode_steps}


def _renames(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        feature, sep, key = pair.partition("=")
        if not sep or not feature or not key:
            raise ValueError(f"--rename {pair!r}: expected FEATURE=KEY")
        out[feature] = key
    return out


def convert(cmd: ImportRobomimic | ImportLerobot | Export) -> dict[str, Any]:
    """Run one conversion with a progress bar over frames; returns its summary plus
    seconds and frames_per_s."""
    # imported here: the interop extra (h5py, pyarrow, av) is only needed by these commands
    from dplite.data import lerobot, robomimic

    t0 = time.perf_counter()
    if isinstance(cmd, ImportRobomimic):
        with robomimic.RobomimicFile(cmd.path, cmd.filter_key, cmd.actions, cmd.obs_keys) as src:
            total = src.total_frames
        run = lambda on_episode: robomimic.import_robomimic(  # noqa: E731
            cmd.path, cmd.out, cmd.filter_key, cmd.actions, cmd.obs_keys,
            attrs=_env_attrs(cmd.env), overwrite=cmd.overwrite, on_episode=on_episode,
        )  # fmt: skip
    elif isinstance(cmd, ImportLerobot):
        rename = _renames(cmd.rename)
        total = lerobot.LeRobotSource(cmd.path, cmd.features, rename, cmd.tolerance_s).total_frames
        run = lambda on_episode: lerobot.import_lerobot(  # noqa: E731
            cmd.path, cmd.out, cmd.features, rename, cmd.tolerance_s,
            attrs=_env_attrs(cmd.env), overwrite=cmd.overwrite, on_episode=on_episode,
        )  # fmt: skip
    else:
        total = ReplayBuffer.open(cmd.path).n_steps
        run = lambda on_episode: lerobot.export_lerobot(  # noqa: E731
            cmd.path, cmd.out, cmd.fps, cmd.task_description, cmd.robot_type, cmd.codec,
            cmd.crf, overwrite=cmd.overwrite, on_episode=on_episode,
        )  # fmt: skip
    desc = "export" if isinstance(cmd, Export) else "import"
    with tqdm(total=total, unit="frame", desc=desc, disable=not cmd.progress) as bar:
        summary = run(lambda i, n: bar.update(n))
    seconds = time.perf_counter() - t0
    return {**summary, "seconds": seconds, "frames_per_s": summary["frames"] / seconds}


def main(cmd: Info | Validate | Import | Export) -> int:
    """Run one subcommand; returns the process exit status."""
    if isinstance(cmd, Import | Export):
        s = convert(cmd.source if isinstance(cmd, Import) else cmd)
        print(
            f"{s['out']}: {s['episodes']} episodes, {s['frames']} frames | "
            f"{s['seconds']:.1f} s, {s['frames_per_s']:.0f} frames/s"
        )
        return 0
    try:
        rb = ReplayBuffer.open(cmd.path, mode="r")
    except DatasetError as e:
        print(f"invalid dataset: {e}", file=sys.stderr)
        return 1
    if isinstance(cmd, Info):
        print(info(rb))
    else:
        print(f"ok: {rb.path}: {rb.n_episodes} episodes, {rb.n_steps} steps, keys {rb.keys}")
    return 0


def cli(args: Sequence[str] | None = None) -> None:
    """Console entry point (dp-dataset)."""
    status = run_command(main, Command, "dp-dataset", args=args, description=__doc__)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    cli()
