"""Import robomimic hdf5 demonstrations (Mandlekar et al. 2021) into the zarr episode layout.

The robomimic layout (its docs, "Dataset Structure", and robomimic.utils.file_utils)::

    data/                       attrs: total (frames), env_args (JSON string)
      demo_<n>/                 attrs: num_samples; one group per demonstration
        actions    (L, Da)      the action taken at each step
        actions_abs (L, Da)     optional: absolute end-effector actions (added by robomimic's
                                robosuite_add_absolute_actions script)
        obs/<key>  (L, ...)     observations; images uint8 (L, H, W, C), channel last
        next_obs/, rewards, dones, states   (not imported)
    mask/<filter>               optional: byte strings naming demos (e.g. train, valid)

Demos are read in numeric order of their index (demo_2 before demo_10, gaps allowed), as
robomimic itself sorts them, one at a time, and written in blocks of about 32 MiB
(data/interop.py): memory holds one episode and one block. ``obs/<key>`` becomes
``data/<key>``, the chosen action array ``data/action``; float64 is stored as float32 (the
precision training uses), images and other dtypes as they are. The demo's index is kept as
``meta/demo_index``. ``env_args`` is parsed and kept in the dataset's attributes under
``robomimic``; robomimic's docs call the environment type ``env_type``, but its code (and every
file it writes) uses ``type``: both are read, and the file's text is kept as is.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dplite.data.interop import EpisodeCallback, InteropError, write_dataset

logger = logging.getLogger(__name__)

ActionKey = Literal["actions", "actions_abs"]
_DEMO = re.compile(r"demo_(\d+)")
# robomimic's EnvType (robomimic/envs/env_base.py)
ENV_TYPES = {1: "robosuite", 2: "gym", 3: "ig_momart"}


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as e:  # an optional extra
        raise ImportError(
            "reading robomimic hdf5 needs h5py: pip install 'diffusion-policy-lite[interop]'"
        ) from e
    return h5py


class RobomimicFile:
    """A robomimic hdf5 file opened for reading, its demos listed and its metadata parsed.

    A context manager (closes the file). ``demos`` are the selected demo names in numeric
    order; ``episode(name)`` reads and checks one of them.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        filter_key: str | None = None,
        action_key: ActionKey = "actions",
        obs_keys: Sequence[str] | None = None,
    ) -> None:
        h5py = _h5py()
        self.path = str(path)
        if action_key not in ("actions", "actions_abs"):
            raise ValueError(f"action_key={action_key!r}: expected 'actions' or 'actions_abs'")
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.path}: no such file")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:
            raise InteropError(self.path, f"not an hdf5 file ({e})") from e
        try:
            self._init(filter_key, action_key, obs_keys)
        except BaseException:
            self._f.close()
            raise

    def _init(
        self, filter_key: str | None, action_key: ActionKey, obs_keys: Sequence[str] | None
    ) -> None:
        f = self._f
        if "data" not in f or not isinstance(f["data"], _h5py().Group):
            raise InteropError(self.path, "missing the group data/ (robomimic layout)", key="data")
        data = f["data"]
        numbered = []
        for name in data:
            m = _DEMO.fullmatch(name)
            if m is None or not isinstance(data[name], _h5py().Group):
                raise InteropError(
                    self.path,
                    "not a demo group (expected demo_<n> groups only)",
                    key=f"data/{name}",
                )
            numbered.append((int(m.group(1)), name))
        numbered.sort()  # numeric, not lexicographic: demo_2 before demo_10
        names = [name for _, name in numbered]
        if filter_key is not None:
            names = self._filtered(names, filter_key)
        if not names:
            which = f" in mask/{filter_key}" if filter_key else ""
            raise InteropError(self.path, f"holds no demos{which}", key="data")
        self.demos = names
        self.filter_key = filter_key
        self.action_key = action_key
        self.env_args_text = data.attrs.get("env_args")
        if isinstance(self.env_args_text, bytes):
            self.env_args_text = self.env_args_text.decode("utf-8")
        self.env_args = self._parse_env_args(self.env_args_text)
        first = data[names[0]]
        if "obs" not in first or not isinstance(first["obs"], _h5py().Group):
            raise InteropError(self.path, "missing", episode=names[0], key="obs")
        present = sorted(first["obs"].keys())
        if obs_keys is None:
            obs_keys = present
        missing = [k for k in obs_keys if k not in present]
        if missing:
            raise InteropError(
                self.path,
                f"missing (present obs keys: {present})",
                episode=names[0],
                key=f"obs/{missing[0]}",
            )
        if "action" in obs_keys:
            raise InteropError(
                self.path,
                "an observation named 'action' would collide with the action key",
                episode=names[0],
                key="obs/action",
            )
        self.obs_keys = tuple(obs_keys)
        self._spec: dict[str, tuple[tuple[int, ...], np.dtype]] = {}

    def _filtered(self, names: list[str], filter_key: str) -> list[str]:
        masks = self._f.get("mask")
        available = sorted(masks.keys()) if masks is not None else []
        if filter_key not in available:
            raise InteropError(
                self.path, f"no such filter (available: {available})", key=f"mask/{filter_key}"
            )
        raw = np.asarray(masks[filter_key][()]).reshape(-1)
        chosen = {v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in raw}
        unknown = sorted(chosen - set(names))
        if unknown:
            raise InteropError(
                self.path, f"names demos absent from data/: {unknown[:5]}", key=f"mask/{filter_key}"
            )
        return [n for n in names if n in chosen]

    def _parse_env_args(self, text: str | None) -> dict[str, Any] | None:
        if text is None:
            logger.warning("%s: data has no env_args attribute", self.path)
            return None
        try:
            env_args = json.loads(text)
        except json.JSONDecodeError as e:
            raise InteropError(
                self.path, f"not valid JSON ({e})", key="data.attrs[env_args]"
            ) from e
        if not isinstance(env_args, dict):
            raise InteropError(self.path, "is not a JSON object", key="data.attrs[env_args]")
        return env_args

    @property
    def env_name(self) -> str | None:
        return (self.env_args or {}).get("env_name")

    @property
    def env_type(self) -> str | None:
        """robosuite / gym / ig_momart (robomimic writes ``type``; its docs say ``env_type``)."""
        args = self.env_args or {}
        value = args.get("type", args.get("env_type"))
        return ENV_TYPES.get(value, None if value is None else str(value))

    @property
    def total_frames(self) -> int:
        """Frames of the selected demos (from their action arrays' shapes, no data read)."""
        data = self._f["data"]
        return sum(
            int(data[n][self.action_key].shape[0]) if self.action_key in data[n] else 0
            for n in self.demos
        )

    def episode(self, name: str) -> dict[str, np.ndarray]:
        """Demo ``name`` as {"action": (L, Da), <obs key>: (L, ...)}, checked: every key present,
        numeric, one length L > 0 (equal to num_samples when recorded), and the dtype kind and
        feature shape of the first demo read."""
        demo = self._f["data"][name]
        out: dict[str, np.ndarray] = {}
        for key, rel in [("action", self.action_key), *((k, f"obs/{k}") for k in self.obs_keys)]:
            if rel not in demo:
                hint = (
                    " (no absolute actions here: import 'actions')" if rel == "actions_abs" else ""
                )
                raise InteropError(self.path, f"missing{hint}", episode=name, key=rel)
            values = np.asarray(demo[rel][()])
            out[key] = self._check(name, rel, key, values)
        lengths = {k: len(v) for k, v in out.items()}
        if len(set(lengths.values())) != 1:
            base = lengths["action"]
            odd = next(k for k, n in lengths.items() if n != base)
            rel = self.action_key if odd == "action" else f"obs/{odd}"
            raise InteropError(
                self.path,
                f"has {lengths[odd]} rows but {self.action_key} has {base} (ragged)",
                episode=name,
                key=rel,
            )
        length = lengths["action"]
        if length == 0:
            raise InteropError(self.path, "is empty (0 rows)", episode=name, key=self.action_key)
        recorded = demo.attrs.get("num_samples")
        if recorded is not None and int(recorded) != length:
            raise InteropError(
                self.path,
                f"num_samples = {int(recorded)} but the arrays hold {length} rows",
                episode=name,
                key="attrs[num_samples]",
            )
        return out

    def _check(self, name: str, rel: str, key: str, values: np.ndarray) -> np.ndarray:
        if values.ndim < 1:
            raise InteropError(self.path, "is a scalar, expected (L, ...) rows", name, rel)
        if values.dtype.kind not in "biuf":
            raise InteropError(
                self.path, f"has dtype {values.dtype}, expected bool/int/float", name, rel
            )
        if values.dtype.kind == "f":
            if not np.isfinite(values).all():
                row = int(np.argmax(~np.isfinite(values).reshape(len(values), -1).all(axis=1)))
                raise InteropError(
                    self.path, f"contains NaN or inf (first at row {row})", name, rel
                )
            if values.dtype == np.float64:
                values = values.astype(np.float32)
        if values.ndim == 4 and values.dtype == np.uint8 and values.shape[-1] not in (1, 3, 4):
            raise InteropError(
                self.path,
                f"has shape {values.shape}: images must be channel-last (L, H, W, C)",
                name,
                rel,
            )
        shape, dtype = tuple(values.shape[1:]), values.dtype
        if key not in self._spec:
            self._spec[key] = (shape, dtype)
        first_shape, first_dtype = self._spec[key]
        if shape != first_shape:
            raise InteropError(
                self.path,
                f"has feature shape {shape}; {self.demos[0]} has {first_shape}",
                name,
                rel,
            )
        if dtype != first_dtype:
            raise InteropError(
                self.path, f"has dtype {dtype}; {self.demos[0]} has {first_dtype}", name, rel
            )
        return values

    def episodes(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        """(name, episode) for each selected demo in numeric order, one read at a time."""
        for name in self.demos:
            yield name, self.episode(name)

    def metadata(self) -> dict[str, Any]:
        """What an imported dataset records about its source (JSON)."""
        return {
            "format": "robomimic",
            "source": str(Path(self.path).resolve()),
            "env_args": self.env_args,
            "env_args_text": self.env_args_text,
            "env_name": self.env_name,
            "env_type": self.env_type,
            "filter_key": self.filter_key,
            "action_key": self.action_key,
            "obs_keys": list(self.obs_keys),
            "demos": len(self.demos),
        }

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> RobomimicFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def import_robomimic(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    filter_key: str | None = None,
    action_key: ActionKey = "actions",
    obs_keys: Sequence[str] | None = None,
    attrs: dict[str, Any] | None = None,
    overwrite: bool = False,
    on_episode: EpisodeCallback | None = None,
) -> dict[str, Any]:
    """Convert the robomimic file ``path`` into the zarr dataset ``out`` (see the module
    docstring), episode by episode, written under a temporary name and renamed when complete.

    attrs: extra root attributes (e.g. the task, so that training knows its environment).
    on_episode(i, frames) is called after each episode. Returns a summary (out, episodes,
    frames, keys, env_args).
    """
    with RobomimicFile(path, filter_key, action_key, obs_keys) as src:
        episodes = (
            (episode, {"demo_index": int(_DEMO.fullmatch(name).group(1))})
            for name, episode in src.episodes()
        )
        attrs = {"robomimic": src.metadata(), **(attrs or {})}
        summary = write_dataset(out, attrs, episodes, overwrite, on_episode)
        return {**summary, "env_args": src.env_args}


__all__ = ["ENV_TYPES", "RobomimicFile", "import_robomimic"]
