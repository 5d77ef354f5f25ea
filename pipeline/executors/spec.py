"""Which executor a job runs on, as the command line or the API names it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ExecutorSpec:
    kind: str = "local"  # "local" or "ray"
    address: str | None = None  # a Ray cluster; None starts a local one
    workers: int | None = None  # blocks at once (Ray tasks); None: the cluster's CPUs
    shared_fs: bool = False  # local paths are on a filesystem every Ray node mounts


LOCAL = ExecutorSpec()
