"""Executors: where the unit of work (`pipeline.engine.work.caption_rows`) runs. Each is
an `Executor` (`base.py`: `check` a job before anything is read, `run` it, leave the
folder in order): `local.py` runs it on one event loop in this process; `ray.py` runs it
over blocks of rows on a Ray cluster (`raytask.py` is a task's side), with one account
(`account.py`, leased by `leased.py`) for the rate limits and the budget."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.executors.spec import LOCAL, ExecutorSpec

if TYPE_CHECKING:
    from pipeline.executors.base import Executor

__all__ = ["LOCAL", "ExecutorSpec", "executor_for"]


def executor_for(spec: ExecutorSpec) -> Executor:
    """The executor a spec names (each module imported only when it is chosen)."""
    if spec.kind == "ray":
        from pipeline.executors.ray import RayExecutor

        return RayExecutor(spec)
    from pipeline.executors.local import LocalExecutor

    return LocalExecutor()
