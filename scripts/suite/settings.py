"""What each suite stage ran with, recorded next to its output and checked on every resume.

A stage's settings are everything its output depends on, as a JSON object: the data stage's
task, episode count, DART noise, expert and seeds; the train stage's ``dp-train`` flags and the
data settings of its dataset; an evaluation's method, sampler, k, episodes, seeds, sampler noise
seed and latency calls, with the settings of the run it evaluates (so a change upstream reaches
every result downstream). They are written to ``<output>.settings.json`` (``data/pusht.zarr`` ->
``data/pusht.settings.json``, ``runs/.../seed0`` -> ``runs/.../seed0.settings.json``) before
the stage starts, so a partial output has its record too.

Before any stage runs, every stage with an output and a record is compared with what this
command would run; a difference refuses the whole suite, naming each such stage, each field
that differs (old value -> new value) and what to do: the same flags again, a new --out, or
deleting those outputs (and their records) to redo them. A record without an output is stale
and simply replaced; an output without a record (a suite folder from before records) is kept
with a warning and the current settings recorded.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dplite.policy.checkpoint import atomic_write

log = logging.getLogger(__name__)

SUFFIX = ".settings.json"
MAX_FIELDS = 8  # differing fields listed per stage (the rest are counted)


class SettingsMismatch(ValueError):
    """A resumed stage's recorded settings differ from this command's."""


@dataclass
class Stage:
    name: str
    output: Path
    """File or folder the stage writes (existing: the stage has started)."""
    settings: dict[str, Any]
    """Everything the output depends on (compared on resume)."""
    done: Callable[[], bool]
    """Whether the output is complete."""
    run: Callable[[], None]
    """Does (or finishes) the stage's work."""
    info: dict[str, Any] = field(default_factory=dict)
    """Recorded beside the settings but not compared (e.g. the full command line)."""

    @property
    def record(self) -> Path:
        return record_path(self.output)


def record_path(output: Path) -> Path:
    """``data/pusht.zarr`` -> ``data/pusht.settings.json``; ``seed0`` -> ``seed0.settings.json``."""
    return output.with_name(output.stem + SUFFIX)


def canonical(settings: Mapping[str, Any]) -> dict[str, Any]:
    """As it reads back from JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(settings))


def read_record(stage: Stage) -> dict[str, Any] | None:
    """The recorded settings of a stage, or None when there is no record."""
    if not stage.record.is_file():
        return None
    return json.loads(stage.record.read_text())["settings"]


def write_record(stage: Stage) -> None:
    record = {"stage": stage.name, "settings": canonical(stage.settings)}
    if stage.info:
        record["info"] = canonical(stage.info)
    atomic_write(stage.record, json.dumps(record, indent=2) + "\n")


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``field: old -> new`` for every leaf that differs, nested fields joined by dots."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in dict.fromkeys([*old, *new]):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in new:
                out.append(f"{name}: {json.dumps(old[key])} -> (not set)")
            elif key not in old:
                out.append(f"{name}: (not recorded) -> {json.dumps(new[key])}")
            else:
                out += differences(old[key], new[key], name)
        return out
    return [] if old == new else [f"{prefix or 'settings'}: {json.dumps(old)} -> {json.dumps(new)}"]


def check(stages: Sequence[Stage], root: Path) -> None:
    """Refuse (SettingsMismatch) when a started stage recorded other settings; see the module
    docstring. Nothing is written or deleted here."""
    refused = []
    for stage in stages:
        recorded = read_record(stage)
        if recorded is None or not stage.output.exists():
            continue
        diff = differences(recorded, canonical(stage.settings))
        if diff:
            refused.append((stage, diff))
    if not refused:
        return
    lines = [
        f"{root}: {len(refused)} stage(s) already ran with other settings than this "
        "command's (recorded -> now):"
    ]
    for stage, diff in refused:
        lines.append(f"  {stage.name} ({stage.output}):")
        lines += [f"    {d}" for d in diff[:MAX_FIELDS]]
        if len(diff) > MAX_FIELDS:
            lines.append(f"    ... and {len(diff) - MAX_FIELDS} more")
    paths = shlex.join(str(p) for s, _ in refused for p in (s.output, s.record))
    lines.append(
        "Resume with the same flags, choose a new --out, or delete those outputs and their "
        f"records to redo them with the new settings: rm -r {paths}"
    )
    raise SettingsMismatch("\n".join(lines))


def adopt(stage: Stage) -> None:
    """A complete output without a record: keep it, record the current settings, warn."""
    if not stage.record.exists():
        log.warning(
            "%s: %s has no recorded settings (an older suite wrote it); assuming this "
            "command's and recording them",
            stage.name,
            stage.output,
        )
        write_record(stage)


__all__ = ["SettingsMismatch", "Stage", "adopt", "check", "differences", "write_record"]
