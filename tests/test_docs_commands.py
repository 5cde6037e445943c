"""Every command line in README.md and docs/*.md parses against its command's Config.

A command is `dp-NAME ARGS` (a console script of pyproject.toml) or `python -m
dplite.scripts.NAME ARGS` (also after `torchrun ... -m`), in a shell code block (lines joined
over trailing backslashes) or in an inline code span. Each one is parsed with tyro exactly as
its console script would parse it, and its Config's own validation runs, but nothing else
does: no environment is made, no file is read.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import tyro

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", ";", "|", "&"}
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
MODULE = re.compile(r"dplite\.scripts\.([a-z_][a-z0-9_]*)")
# a command name and the start of an argument: how many command lines the docs hold, counted
# without the block / span / shell parsing below (a floor for what that parsing finds)
COMMAND_WITH_ARGS = re.compile(
    r"(?:(?<![\w/.-])dp-[a-z]+|-m\s+dplite\.scripts\.[a-z_]+)[ \t]+[-\w'\"]"
)
MIN_COMMANDS = 45  # the docs hold more; this guards against parsing nothing


def _console_scripts() -> dict[str, str]:
    """dp-NAME -> the module its entry point lives in, from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {name: target.split(":")[0] for name, target in project["scripts"].items()}


SCRIPTS = _console_scripts()


@dataclass(frozen=True)
class Command:
    path: str  # relative to the repository
    line: int
    text: str  # the command as written (one line)
    module: str  # e.g. dplite.scripts.train
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.text}"


def _blank_fences(lines: list[str]) -> tuple[list[tuple[int, str]], list[str]]:
    """Shell snippets of the fenced blocks as (line, text), continuation lines joined; and the
    file's lines with every fenced block blanked (for the inline spans)."""
    snippets: list[tuple[int, str]] = []
    prose = list(lines)
    fence: str | None = None
    shell = False
    pending: tuple[int, str] | None = None
    for i, line in enumerate(lines):
        m = FENCE.match(line)
        if fence is None:
            if m:
                fence, shell = m.group(1), m.group(2).lower() in SHELL_LANGUAGES
                prose[i] = ""
            continue
        prose[i] = ""
        if m and m.group(1).startswith(fence) and not m.group(2):
            fence = None
            if pending is not None:
                snippets.append(pending)
                pending = None
            continue
        if not shell:
            continue
        start, text = pending if pending is not None else (i + 1, "")
        body = line.rstrip()
        if body.endswith("\\"):
            pending = (start, text + body[:-1] + " ")
        else:
            pending = None
            snippets.append((start, text + body))
    return snippets, prose


def _inline_spans(prose: list[str]) -> list[tuple[int, str]]:
    text = "\n".join(prose)
    return [
        (text.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split()))
        for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text)
    ]


def _simple_commands(text: str) -> list[list[str]]:
    """The shell words of each simple command in text (comments dropped, split at && ; | ...)."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in SEPARATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def _command(path: str, line: int, text: str, words: list[str], inline: bool) -> Command | None:
    while words and ASSIGNMENT.match(words[0]):  # MUJOCO_GL=egl dp-eval ...
        words = words[1:]
    if not words:
        return None
    if words[0].startswith("dp-"):
        if words[0] not in SCRIPTS:
            raise AssertionError(
                f"{path}:{line}: {words[0]} is not a console script of pyproject.toml"
            )
        if inline and len(words) == 1:
            return None  # the name of a command in a sentence, not a command line
        return Command(path, line, text, SCRIPTS[words[0]], tuple(words[1:]))
    if "-m" in words[:-1]:
        target = words[words.index("-m") + 1]
        m = MODULE.fullmatch(target)
        if m:
            return Command(path, line, text, target, tuple(words[words.index("-m") + 2 :]))
    return None


def collect(path: Path, root: Path = ROOT) -> list[Command]:
    rel = str(path.relative_to(root))
    blocks, prose = _blank_fences(path.read_text().splitlines())
    found = []
    for snippets, inline in ((blocks, False), (_inline_spans(prose), True)):
        for line, text in snippets:
            if inline and not re.search(r"(^|\s)dp-[a-z]|-m\s+dplite\.scripts\.[a-z]", text):
                continue  # a span that is not a command; its quotes need not balance
            for words in _simple_commands(text):
                cmd = _command(rel, line, text.strip(), words, inline)
                if cmd is not None:
                    found.append(cmd)
    return found


COMMANDS = [cmd for path in DOCS for cmd in collect(path)]


def _parse(cmd: Command) -> None:
    module = importlib.import_module(cmd.module)
    target = getattr(module, "Config", None)
    if target is None:  # dp-dataset: subcommands, a union of dataclasses
        target = getattr(module, "Command", None)
    assert target is not None, f"{cmd}: {cmd.module} has neither Config nor Command"
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            tyro.cli(target, args=list(cmd.argv))
    except SystemExit as e:  # tyro's usage errors (and --help) exit
        pytest.fail(
            f"{cmd}\ndoes not parse against {cmd.module} (exit {e.code}):\n{err.getvalue()}"
        )
    except Exception as e:  # the Config's own validation (__post_init__)
        pytest.fail(f"{cmd}\nis refused by {cmd.module}: {type(e).__name__}: {e}")


@pytest.mark.parametrize("cmd", COMMANDS, ids=[f"{c.path}:{c.line}" for c in COMMANDS])
def test_command_parses(cmd: Command) -> None:
    _parse(cmd)


def test_the_docs_hold_commands() -> None:
    """Parsing found every command line: at least as many as a plain count of command names
    followed by an argument, and never fewer than MIN_COMMANDS."""
    floor = sum(len(COMMAND_WITH_ARGS.findall(path.read_text())) for path in DOCS)
    assert len(COMMANDS) >= max(floor, MIN_COMMANDS), (
        f"found {len(COMMANDS)} command lines, expected >= {max(floor, MIN_COMMANDS)} "
        f"({floor} command names followed by an argument in the docs)"
    )
    used = {c.module for c in COMMANDS}
    missing = sorted(set(SCRIPTS.values()) - used)
    assert not missing, f"no command line in the docs for {missing}"


def test_no_old_module_paths() -> None:
    """`python -m scripts.NAME` was the pre-dplite spelling; the docs use dp-NAME."""
    old = re.compile(r"-m\s+scripts\.|^\s*(?:from|import)\s+(?:policy|data|envs|scripts)[.\s]")
    hits = [
        f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
        for path in DOCS
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if old.search(line)
    ]
    assert not hits, "old module paths:\n" + "\n".join(hits)


def test_parser_finds_continued_and_inline_commands(tmp_path: Path) -> None:
    """The collector itself: a continued block command, an inline one, a bare name skipped."""
    page = tmp_path / "page.md"
    page.write_text(
        "Run `dp-eval --checkpoint C --episodes 5` or read `dp-train`.\n"
        "```bash\n"
        "MUJOCO_GL=egl dp-train --dataset D \\\n"
        "    --steps 10   # a comment\n"
        "torchrun --nproc-per-node 2 -m dplite.scripts.train --dataset D && dp-dataset info D\n"
        "```\n"
        "```python\n"
        "dp-not-a-command = 1\n"
        "```\n"
    )
    found = [(c.line, c.module, c.argv) for c in collect(page, root=tmp_path)]
    assert found == [
        (3, "dplite.scripts.train", ("--dataset", "D", "--steps", "10")),
        (5, "dplite.scripts.train", ("--dataset", "D")),
        (5, "dplite.scripts.dataset", ("info", "D")),
        (1, "dplite.scripts.eval", ("--checkpoint", "C", "--episodes", "5")),
    ]
