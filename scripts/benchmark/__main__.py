"""``python -m dplite.scripts.benchmark``: the same command as ``dp-benchmark``."""

from dplite.scripts.benchmark import cli

cli()
