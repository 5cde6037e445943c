"""Write rendered frames to an mp4 file (H.264 via the ffmpeg binary shipped by imageio-ffmpeg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import imageio.v2 as imageio
import numpy as np


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: int = 10) -> Path:
    """frames: (H, W, 3) uint8 each; H and W should be multiples of 16 for H.264."""
    if not frames:
        raise ValueError(f"{path}: no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=16) as writer:
        for frame in frames:
            writer.append_data(np.asarray(frame, dtype=np.uint8))
    return path
