"""``python -m dplite.scripts.suite``: the same command as ``dp-suite`` (see the package)."""

from dplite.scripts.suite import cli

cli()
