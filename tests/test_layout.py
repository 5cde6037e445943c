"""The installed layout: one import name (dplite), no collision with a user's own top-level
packages, and the layers kept apart (scripts on top; no scripts module imports another;
policy imports neither data nor envs; envs has no torch)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Absolute module names a file imports (``from x import y`` gives x and x.y)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_no_scripts_module_imports_another():
    """Each command is a Config + main over the library; shared code lives in the library.
    A subpackage of scripts/ (e.g. suite/) is one command whose modules may share code."""
    offenders = set()
    for path in sorted((ROOT / "scripts").rglob("*.py")):
        rel = path.relative_to(ROOT / "scripts")
        own = rel.parts[0].removesuffix(".py")  # the command this file belongs to
        for name in _imports(path):
            parts = name.split(".")
            if parts[:2] == ["dplite", "scripts"] and len(parts) > 2 and parts[2] != own:
                offenders.add(f"scripts/{rel} imports dplite.scripts.{parts[2]}")
    assert not offenders, "\n".join(sorted(offenders))


def test_layers():
    rules = {  # folder: prefixes its modules must not import
        "policy": ("dplite.data", "dplite.envs", "dplite.scripts"),
        "data": ("dplite.envs", "dplite.scripts"),
        "envs": ("dplite.policy", "dplite.data", "dplite.scripts", "torch"),
    }
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for folder, banned in rules.items()
        for path in sorted((ROOT / folder).rglob("*.py"))
        for name in _imports(path)
        if name.startswith(banned)
    ]
    # the old top-level names are gone from the code
    offenders += [
        f"{path.relative_to(ROOT)} imports {name}"
        for folder in ("policy", "data", "envs", "scripts", "tests", "examples")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for name in _imports(path)
        if name.split(".")[0] in ("policy", "data", "envs", "scripts")
    ]
    assert not offenders, "\n".join(offenders)


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_users_own_data_and_scripts_packages_do_not_collide(tmp_path):
    """From a folder with its own data/, scripts/, policy/ and envs/ packages (which refuse to
    be imported), the old names are the user's and the commands still work."""
    for name in ("data", "scripts", "policy", "envs"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(
            f"raise ImportError('the user\\'s own {name} package was imported')\n"
        )
    probe = _run(["-c", "import data"], tmp_path)
    assert "the user's own data package" in probe.stderr  # the name is the user's
    (tmp_path / "elsewhere").mkdir()
    for name in ("data", "scripts", "policy", "envs"):  # and we install no such name
        r = _run(["-c", f"import {name}"], tmp_path / "elsewhere")
        assert r.returncode != 0 and "No module named" in r.stderr, (name, r.stderr)

    steps = [
        ["dplite.scripts.collect", "--task", "pusht", "--episodes", "2", "--out", "d.zarr"],
        ["dplite.scripts.train", "--dataset", "d.zarr", "--out", "run", "--steps", "20",
         "--down-dims", "8", "16", "32", "--diffusion-step-embed-dim", "8", "--batch-size", "8",
         "--eval-every", "-1", "--val-ratio", "0"],
        ["dplite.scripts.eval", "--checkpoint", "run", "--episodes", "1", "--inference-steps",
         "2", "--videos", "0", "--json", "r.json"],
    ]  # fmt: skip
    for args in steps:
        r = _run(["-m", *args, "--no-progress"], tmp_path)
        assert r.returncode == 0, f"{args[0]} failed:\n{r.stderr[-2000:]}"
    assert (tmp_path / "r.json").is_file()
