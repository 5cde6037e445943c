"""Inspect and validate zarr demonstration datasets (the Diffusion Policy layout).

    python -m dplite.scripts.dataset info PATH       episodes, steps, keys, shapes, dtypes, chunking
    python -m dplite.scripts.dataset validate PATH   full check; exit status 1 and the error if bad

Both run every check of `ReplayBuffer.open` (data/replay_buffer.py) on a read-only handle.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import tyro

from dplite.data.replay_buffer import DatasetError, ReplayBuffer
from dplite.envs.options import run_command


@dataclass
class Info:
    """Print a summary: episodes, steps, per-key shape/dtype/chunks, episode lengths."""

    path: tyro.conf.Positional[Annotated[str, tyro.conf.arg(metavar="PATH")]]
    """Dataset: a zarr directory store (v2 or v3) or a .zip store."""


@dataclass
class Validate:
    """Check the dataset against the data contract; exit status 1 when it is malformed."""

    path: tyro.conf.Positional[Annotated[str, tyro.conf.arg(metavar="PATH")]]
    """Dataset: a zarr directory store (v2 or v3) or a .zip store."""


Command = (
    Annotated[Info, tyro.conf.subcommand("info")]
    | Annotated[Validate, tyro.conf.subcommand("validate")]
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


def main(cmd: Info | Validate) -> int:
    """Run one subcommand; returns the process exit status."""
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
