"""`caption status OUT_DIR`: what a job's output folder holds, read-only.

Reads only the columns it needs from the shards (and any journal a killed run left), the
manifest's `id` column, and run.json, so it stays fast at a million rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import UsageError
from pipeline.io.arrow import equals, int_numpy
from pipeline.output import books
from pipeline.output.books import read_shard
from pipeline.output.folder import OutputDir
from pipeline.output.marks import mark


@dataclass(frozen=True, slots=True)
class FolderStatus:
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
    superseded: int
    runs: int
    running: bool
    removed: int = 0  # done rows whose source left the manifest (not exported)
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
            *(
                [
                    f"removed      {self.removed} of the done rows: their sources left the "
                    "manifest (kept, counted in the cost; export leaves them out)"
                ]
                if self.removed
                else []
            ),
            f"tokens       {self.prompt_tokens} prompt, {self.completion_tokens} completion",
            f"cost         ${self.cost_usd:.4f}",
        ]
        if self.superseded:
            out[-2] += " (every paid attempt)"
            out.append(
                f"superseded   {self.superseded} earlier attempt(s) replaced by later answers "
                "(--retry-errors, files replaced), kept in .caption/superseded-*.ledger and counted above"
            )
        if self.running:
            out.append(
                f"running      a run is writing this folder now ({self.journaled} journaled)"
            )
        elif self.journaled:
            out.append(
                f"journaled    {self.journaled} rows of an interrupted run, folded on the next run"
            )
        if self.estimate:
            est = self.estimate
            out.append(
                f"estimate     {est['prompt_tokens_estimated']} prompt tokens estimated, "
                f"{est['prompt_tokens_actual']} billed ({est['prompt_tokens_ratio']:.3f}x); "
                f"input ${est['input_cost_estimated_usd']:.4f} estimated, "
                f"${est['input_cost_actual_usd']:.4f} billed; over {est['rows']} ok rows"
            )
        return out


def read_status(path: Path, label: str | None = None) -> FolderStatus:
    """The status of the output folder at `path` (`label`: how to name it, a bucket URL
    for a bucket folder's local copy)."""
    out = OutputDir(path)
    if not out.exists():
        raise UsageError(f"{path}: no such output folder")
    meta = out.read_run_json()
    if meta is None or not out.manifest.exists():
        raise UsageError(f"{path}: not a caption output folder (no run.json or manifest)")
    done = books.scan(out, include_journals=True)
    marks = mark(out.manifest, done.ids)
    done.ids.close()
    job = meta.get("job", {})
    return FolderStatus(
        output=label or str(path),
        fingerprint=meta.get("fingerprint"),
        model=job.get("model"),
        endpoint=job.get("endpoint"),
        manifest_rows=out.manifest_count(),
        done=done.ok + done.errors,
        **done.totals().to_json(),
        errors_by_kind=done.errors_by_kind,
        pending=marks.pending,
        removed=marks.removed,
        journaled=done.journaled,
        superseded=done.superseded,
        runs=len(meta.get("runs", [])),
        running=out.is_running(),
        estimate=reconcile(out, meta),
    )


def reconcile(out: OutputDir, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The estimate's prompt tokens and input cost against what the server billed, over the
    ok rows whose image size is known: how far to trust `caption estimate`."""
    import pyarrow.compute as pc

    from pipeline.config.prices import cost_usd, parse_price_entries
    from pipeline.cost.images import image_tokens_array
    from pipeline.cost.tokens import prompt_text_tokens

    job = meta.get("job") or {}
    model, entry = job.get("model"), meta.get("price")
    shards = out.shards()
    if not model or not entry or not shards:
        return None
    price = parse_price_entries({model: entry}, str(out.run_json), table="price")[model]
    if price.image is None:  # no image rule for this model: nothing to reconcile
        return None
    columns = ["status", "prompt_tokens", "image_width", "image_height"]
    text = prompt_text_tokens(
        job.get("system_prompt") or "", job.get("prompt") or "", job.get("json_schema")
    )
    counted = estimated = actual = 0
    for shard in shards:  # a shard at a time: memory holds one
        table = read_shard(shard, columns=columns)
        known = pc.and_(
            equals(table["status"], "ok"),
            pc.and_(pc.is_valid(table["image_width"]), pc.is_valid(table["image_height"])),
        )
        rows = table.filter(known)
        if rows.num_rows == 0:
            continue
        image = image_tokens_array(
            price.image,
            int_numpy(rows["image_width"]),
            int_numpy(rows["image_height"]),
            job.get("detail"),
        )
        counted += rows.num_rows
        estimated += int(image.sum()) + text * rows.num_rows
        actual += pc.sum(rows["prompt_tokens"]).as_py() or 0
    if counted == 0:
        return None
    return {
        "rows": counted,
        "prompt_tokens_estimated": estimated,
        "prompt_tokens_actual": actual,
        "prompt_tokens_ratio": actual / estimated if estimated else None,
        "input_cost_estimated_usd": cost_usd(price, estimated, 0),
        "input_cost_actual_usd": cost_usd(price, actual, 0),
    }
