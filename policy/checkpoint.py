"""Pickle-free checkpoints: tensors in safetensors, everything else in JSON.

A nested state (model, optimizer, LR schedule, EMA, RNG states, step) is split into a flat
{name: tensor} dict for safetensors and a JSON skeleton in which each tensor is replaced by a
reference {"__tensor__": name}. Loading therefore never runs pickle. Writes go to a temporary
file first and are renamed into place, so a killed process never leaves a half-written file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

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


def _atomic_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Write {name: tensor} to a safetensors file atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    # safetensors wants contiguous tensors that do not share storage
    save_file({k: v.detach().contiguous().clone().cpu() for k, v in tensors.items()}, str(tmp))
    _atomic_replace(tmp, path)


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
    tmp = directory / "state.json.tmp"
    tmp.write_text(json.dumps(skeleton))
    _atomic_replace(tmp, directory / "state.json")


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
