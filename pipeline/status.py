"""`caption status OUT_DIR`: what a job's output folder holds, read-only.

Reads only the columns it needs from the shards (and any journal a killed run left), the
manifest's `id` column, and run.json, so it stays fast at a million rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.errors import UsageError
from pipeline.outdir import OutputDir


@dataclass(frozen=True, slots=True)
class Status:
    output: str
    fingerprint: str | None
    model: str | None
    endpoint: str | None
    manifest_rows: int
    done: int
    ok: int
    errors: int
    errors_by_kind: dict[str, int]
    pending: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    journaled: int
    runs: int
    estimate: dict[str, Any] | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.errors_by_kind.items()))
        out = [
            f"output       {self.output}",
            f"job          {self.model} at {self.endpoint} (fingerprint {self.fingerprint})",
            f"manifest     {self.manifest_rows} rows; {self.runs} run(s) so far",
            f"done         {self.done} ({self.ok} ok, {self.errors} errors"
            + (f": {kinds}" if kinds else "")
            + ")",
            f"pending      {self.pending}",
            f"tokens       {self.prompt_tokens} prompt, {self.completion_tokens} completion",
            f"cost         ${self.cost_usd:.4f}",
        ]
        if self.journaled:
            out.append(
                f"journaled    {self.journaled} rows of an interrupted run, folded on the next run"
            )
        if self.estimate:
            est = self.estimate
            out.append(
                f"estimate     prompt tokens {est['prompt_tokens_estimated']} estimated vs "
                f"{est['prompt_tokens_actual']} actual ({est['prompt_tokens_ratio']:.3f}x) "
                f"over {est['rows']} ok rows"
            )
        return out


def read_status(path: Path) -> Status:
    out = OutputDir(path)
    if not out.exists():
        raise UsageError(f"{path}: no such output folder")
    meta = out.read_run_json()
    if meta is None or not out.manifest.exists():
        raise UsageError(f"{path}: not a caption output folder (no run.json or manifest.parquet)")
    done = out.scan(include_journals=True)
    skip = pa.concat_arrays([done.ok_ids, done.error_ids])
    job = meta.get("job", {})
    return Status(
        output=str(path),
        fingerprint=meta.get("fingerprint"),
        model=job.get("model"),
        endpoint=job.get("endpoint"),
        manifest_rows=out.manifest_count(),
        done=done.ok + done.errors,
        ok=done.ok,
        errors=done.errors,
        errors_by_kind=done.errors_by_kind,
        pending=out.pending_count(skip),
        prompt_tokens=done.prompt_tokens,
        completion_tokens=done.completion_tokens,
        cost_usd=done.cost_usd,
        journaled=done.journaled,
        runs=len(meta.get("runs", [])),
    )
