"""Executors: where the unit of work (`pipeline.engine.work.caption_rows`) runs. `local` runs it
on one event loop in this process; `ray` runs it over blocks of rows on a Ray cluster,
with one account (`pipeline.executors.account`) for the rate limits and the budget."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ExecutorSpec:
    kind: str = "local"  # "local" or "ray"
    address: str | None = None  # a Ray cluster; None starts a local one
    workers: int | None = None  # blocks at once (Ray tasks); None: the cluster's CPUs
    shared_fs: bool = False  # local paths are on a filesystem every Ray node mounts


LOCAL = ExecutorSpec()
