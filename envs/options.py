"""The environment options every command line shares: a registered task, or any gymnasium id.

    --task pusht                                  a task registered in envs.tasks
    --env-id ID [--env-import MODULE ...] [--env-kwargs JSON] [--success-key KEY]
                [--max-episode-steps N]           any gymnasium environment

On a script that starts from something that already knows its environment (eval from a
checkpoint, train from a dataset recorded by scripts.collect), the options override it: --task
or --env-id replace the environment, the others change the one recorded there.

``run_command`` is how every ``dp-*`` command starts: it parses the command's Config and runs
its main, turning a refusal of bad input (a ValueError: unknown task, malformed dataset, shape
mismatch, refused resume, ...; a missing or existing path) into one line on stderr and exit
status 2. Other exceptions are bugs and keep their traceback; so does any error when the
environment variable DPLITE_TRACEBACK is set.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import tyro

from dplite.envs.tasks import TaskSpec, get_task, import_modules, task_from_env_id


@dataclass
class EnvOptions:
    task: str | None = None
    """Registered task name (envs.tasks.list_tasks(), e.g. pusht)."""
    env_id: str | None = None
    """Any gymnasium id instead of a task (registered by --env-import if needed)."""
    env_import: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """Module imported before the env is made (registers ids, patches); may repeat."""
    env_kwargs: str | None = None
    """JSON object of keyword arguments for gymnasium.make, e.g. '{"continuing_task": false}'."""
    success_key: str | None = None
    """info key that reports success (default is_success, falling back to success)."""
    max_episode_steps: int | None = None
    """Episode length (default: the task's or the id's registered TimeLimit)."""

    def __post_init__(self) -> None:
        if self.task is not None and self.env_id is not None:
            raise ValueError(f"give --task ({self.task!r}) or --env-id ({self.env_id!r}), not both")
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ValueError(f"--max-episode-steps must be >= 1, got {self.max_episode_steps}")
        self.kwargs()  # a malformed --env-kwargs fails at parse time

    def kwargs(self) -> dict[str, Any]:
        if self.env_kwargs is None:
            return {}
        try:
            kwargs = json.loads(self.env_kwargs)
        except json.JSONDecodeError as e:
            raise ValueError(f"--env-kwargs {self.env_kwargs!r} is not valid JSON: {e}") from e
        if not isinstance(kwargs, dict):
            raise ValueError(f"--env-kwargs {self.env_kwargs!r} must be a JSON object")
        return kwargs

    @property
    def given(self) -> bool:
        """Whether any option was set on the command line."""
        return any(
            v not in (None, ())
            for v in (self.task, self.env_id, self.env_import, self.env_kwargs,
                      self.success_key, self.max_episode_steps)
        )  # fmt: skip

    def resolve(self, base: TaskSpec | None = None) -> TaskSpec:
        """The task these options name, or ``base`` with these options applied to it."""
        import_modules(self.env_import)
        if self.env_id is not None:
            spec = task_from_env_id(
                self.env_id,
                self.env_import,
                self.kwargs(),
                max_episode_steps=self.max_episode_steps,
            )
        elif self.task is not None:
            spec = get_task(self.task)
        elif base is not None:
            spec = base
        else:
            raise ValueError(
                "no environment: pass --task NAME (a registered task) or --env-id ID "
                "[--env-import MODULE] for any gymnasium environment"
            )
        changes: dict[str, Any] = {}
        if self.env_import:
            changes["env_imports"] = tuple(dict.fromkeys(spec.env_imports + self.env_import))
        if self.env_kwargs is not None and self.env_id is None:
            changes["env_kwargs"] = {**spec.env_kwargs, **self.kwargs()}
        if self.success_key is not None:
            changes["success_key"] = self.success_key
        if self.max_episode_steps is not None:
            changes["max_episode_steps"] = self.max_episode_steps
        return spec.replace(**changes) if changes else spec


# Nested in each script's Config without a prefix: the flags read --task, --env-id, ...
EnvArgs = Annotated[EnvOptions, tyro.conf.OmitArgPrefixes]


C = TypeVar("C")

# what a user's mistake raises (the project's boundary checks raise ValueError subclasses)
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)


def run_command(
    main: Callable[[C], Any],
    config: type[C],
    prog: str,
    args: Sequence[str] | None = None,
    description: str | None = None,
) -> Any:
    """Parse ``config`` from the command line (or ``args``) and return ``main(cfg)``; a bad
    input ends the process with ``prog: error: <message>`` and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return main(tyro.cli(config, args=args, description=description, prog=prog))
    except USER_ERRORS as e:
        if os.environ.get("DPLITE_TRACEBACK"):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
