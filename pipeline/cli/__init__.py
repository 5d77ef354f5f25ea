"""The `caption` command line: the group, its error handling and the job commands
(`group.py`), the read-only commands (`readonly.py`), and the options they share
(`options.py`). Commands parse flags and print; the work is in the other subpackages."""

from pipeline.cli.group import cli, main

__all__ = ["cli", "main"]
