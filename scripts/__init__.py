"""Command-line entry points that wire policy, data and envs together."""
