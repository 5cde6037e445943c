"""Pickle-free checkpoints: tensors in safetensors, everything else in JSON.

A nested state (model, optimizer, LR schedule, EMA, RNG states, step) is split into a flat
{name: tensor} dict for safetensors and a JSON skeleton in which each tensor is replaced by a
reference {"__tensor__": name}. Loading therefore never runs pickle.

Every file and folder the project writes goes through ``atomic_file`` / ``atomic_write`` /
``atomic_dir``: written under a temporary name beside its destination and renamed into place
when complete, so a killed process never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

_TENSOR = "__tensor__"
_TUPLE = "__tuple__"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not match what loads it."""


def config_from_dict(cls: type, d: Mapping) -> Any:
    """A config dataclass from its JSON dict, refusing field names it does not have."""
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    return cls(**d)


# ---------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that go by it still
    work); when the block ends without error the file is synced and renamed over ``path``.
    On an error it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write text or bytes to ``path`` atomically (see atomic_file); returns ``path``."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder ``final.tmp``; when the block ends without error it
    takes the place of ``final``. An existing ``final`` is renamed to ``final.old`` first and
    deleted after, so at every instant ``final`` or ``final.old`` is complete (recover_dir puts
    ``.old`` back after a crash between the two renames). On an error the temporary folder is
    removed and ``final`` is left as it was."""
    final = Path(final)
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    recover_dir(final)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(final: str | Path) -> None:
    """After a crash between atomic_dir's two renames ``final.old`` is the last complete
    folder: put it back."""
    final = Path(final)
    old = final.with_name(final.name + ".old")
    if old.is_dir() and not final.exists():
        os.replace(old, final)
        log.warning("recovered %s from %s", final, old)


# ---------------------------------------------------------------------------- files


def find_policy_dir(path: str | Path) -> Path:
    """A policy folder itself, or the best / latest policy inside a training run folder."""
    path = Path(path)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path
    if (path / "best" / "config.json").is_file():
        return path / "best"
    latest = path / "checkpoints" / "latest.json"
    if latest.is_file():
        return path / "checkpoints" / json.loads(latest.read_text())["name"]
    raise CheckpointError(f"{path}: neither a policy folder nor a training run with a checkpoint")


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Write {name: tensor} to a safetensors file atomically."""
    with atomic_file(path) as tmp:
        # safetensors wants contiguous tensors that do not share storage
        save_file({k: v.detach().contiguous().clone().cpu() for k, v in tensors.items()}, str(tmp))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {_TENSOR: prefix}
    if isinstance(obj, Mapping):
        # JSON keys are strings; remember int keys (optimizer state is keyed by param index)
        return {"__dict__": [[k, _flatten(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {_TUPLE: [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} in a checkpoint")


def _unflatten(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if _TUPLE in obj:
            return tuple(_unflatten(v, tensors) for v in obj[_TUPLE])
        return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_state(state: Mapping[str, Any], directory: str | Path) -> None:
    """Write a nested training state as state.safetensors + state.json (each atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "s", tensors)
    save_tensors(tensors, directory / "state.safetensors")
    atomic_write(directory / "state.json", json.dumps(skeleton))


def load_state(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    skel_path = directory / "state.json"
    if not skel_path.is_file():
        raise CheckpointError(f"{skel_path}: not found")
    try:
        skeleton = json.loads(skel_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{skel_path}: corrupt JSON ({e})") from e
    tensors = load_tensors(directory / "state.safetensors")
    try:
        return _unflatten(skeleton, tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{skel_path}: does not match state.safetensors ({e})") from e
