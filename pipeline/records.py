"""The typed records that flow reader -> worker -> writer, and the one result schema.

A manifest row becomes exactly one `ResultRow`; failures are rows too (`status="error"`).
`RESULT_SCHEMA` is the only definition of the result columns, and every shard's schema (a
structured job adds a typed `parsed` column, `config/labels.py`): the manifest's own columns stay
in the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal, Self

import pyarrow as pa

RowStatus = Literal["ok", "error"]

MANIFEST_ID = "id"
MANIFEST_SOURCE = "source"

CHOICE_TYPE = pa.struct(
    [
        pa.field("index", pa.int32()),
        pa.field("content", pa.string()),
        pa.field("refusal", pa.string()),
        pa.field("finish_reason", pa.string()),
    ]
)

RESULT_SCHEMA = pa.schema(
    [
        # identity
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        # answer
        pa.field("caption", pa.string()),
        pa.field("choices", pa.list_(CHOICE_TYPE)),
        pa.field("finish_reason", pa.string()),
        pa.field("refusal", pa.string()),
        # response metadata
        pa.field("response_id", pa.string()),
        pa.field("model", pa.string()),
        pa.field("created", pa.int64()),
        pa.field("service_tier", pa.string()),
        pa.field("system_fingerprint", pa.string()),
        # usage and cost
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        pa.field("total_tokens", pa.int64()),
        pa.field("cached_tokens", pa.int64()),
        pa.field("reasoning_tokens", pa.int64()),
        pa.field("usage_source", pa.string()),
        pa.field("cost_usd", pa.float64()),
        # the image as sent (from its header, or the manifest's width/height for URLs)
        pa.field("image_width", pa.int32()),
        pa.field("image_height", pa.int32()),
        # the bytes as read: SHA-256, first 16 hex digits (the id --id-from content gives);
        # a rerun that finds a file's time changed but not these bytes does not resend it
        pa.field("source_sha256", pa.string()),
        # request bookkeeping
        pa.field("attempts", pa.int32()),
        pa.field("latency_s", pa.float64()),
        pa.field("http_status", pa.int32()),
        pa.field("error", pa.string()),
        pa.field("error_kind", pa.string()),
        pa.field("finished_at", pa.timestamp("ms", tz="UTC")),
        # lineage: `--dedupe near` copies a near-identical image's answer, named here
        pa.field("dedupe_of", pa.string()),
    ]
)

# A structured job's typed answer (`config/labels.py`), after the result columns.
PARSED = "parsed"
# Names a source's own column may not take (it is kept as `input_<name>`).
RESULT_COLUMNS: frozenset[str] = frozenset([*RESULT_SCHEMA.names, PARSED])


# A manifest column holding a local file's size and modification time at ingest
# (`size:mtime_ns`): a rerun that finds it different captions the file again.
SIGNATURE = "_caption_signature"
# Manifest columns holding each image's two 64-bit perceptual hashes (`--dedupe near`,
# `pipeline/dedupe/phash.py`): horizontal and vertical neighbour differences.
NEAR_ACROSS = "_caption_dhash_across"
NEAR_DOWN = "_caption_dhash_down"
# Manifest columns named so are caption's own: not handed on beside the results.
OWN_PREFIX = "_caption_"

# A manifest column that gives a row its own prompt in place of the job's (a comparison's
# judge asks about two captions per row). Named so that no user's list has it by chance.
ROW_PROMPT = "_caption_row_prompt"


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One image to caption: a stable id, where to read it, and the user's own columns."""

    id: str
    source: str
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> ManifestRow:
        """From a manifest row as a dict (consumed: `id` and `source` are popped)."""
        return cls(id=row.pop(MANIFEST_ID), source=row.pop(MANIFEST_SOURCE), extra=row)


@dataclass(frozen=True, slots=True)
class Choice:
    index: int
    content: str | None
    refusal: str | None
    finish_reason: str | None


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    # False when the server sent no usage block and these are our own counts.
    reported: bool = True


@dataclass(frozen=True, slots=True)
class Completion:
    """A usable chat completion as the server answered it."""

    choices: tuple[Choice, ...]
    usage: Usage
    response_id: str | None = None
    model: str | None = None
    created: int | None = None
    service_tier: str | None = None
    system_fingerprint: str | None = None


@dataclass(slots=True)
class ResultRow:
    """What the writer stores for one manifest row: the outcome, never the request."""

    id: str
    source: str
    status: RowStatus
    attempts: int
    latency_s: float
    finished_at_ms: int
    http_status: int | None = None
    completion: Completion | None = None
    cost_usd: float | None = None
    error: str | None = None
    error_kind: str | None = None
    image_width: int | None = None
    image_height: int | None = None
    source_sha256: str | None = None
    # Not stored: the failure may say only that the job is wrong (the circuit breaker).
    job_level: str | None = None
    # A structured job's answer, parsed (`config/labels.py`); stored only by such jobs.
    parsed: Any = None

    def core_dict(self) -> dict[str, Any]:
        """The result columns as plain JSON types, for the journal (`parsed` only when
        there is a value: a job without it has no such column)."""
        c = self.completion
        first = c.choices[0] if c and c.choices else None
        usage = c.usage if c else None
        return {
            "id": self.id,
            "source": self.source,
            "status": self.status,
            "caption": first.content if first else None,
            "choices": [
                {
                    "index": ch.index,
                    "content": ch.content,
                    "refusal": ch.refusal,
                    "finish_reason": ch.finish_reason,
                }
                for ch in c.choices
            ]
            if c
            else None,
            "finish_reason": first.finish_reason if first else None,
            "refusal": first.refusal if first else None,
            "response_id": c.response_id if c else None,
            "model": c.model if c else None,
            "created": c.created if c else None,
            "service_tier": c.service_tier if c else None,
            "system_fingerprint": c.system_fingerprint if c else None,
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
            "total_tokens": usage.total_tokens if usage else None,
            "cached_tokens": usage.cached_tokens if usage else None,
            "reasoning_tokens": usage.reasoning_tokens if usage else None,
            "usage_source": None if not usage else "server" if usage.reported else "estimated",
            "cost_usd": self.cost_usd,
            "image_width": self.image_width,
            "image_height": self.image_height,
            "source_sha256": self.source_sha256,
            "attempts": self.attempts,
            "latency_s": round(self.latency_s, 6),
            "http_status": self.http_status,
            "error": self.error,
            "error_kind": self.error_kind,
            "finished_at": self.finished_at_ms,
            **({} if self.parsed is None else {"parsed": self.parsed}),
        }


def to_schema(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns, in its order: missing ones as nulls,
    others cast (an older shard, a manifest batch with fewer columns)."""
    columns = [
        table.column(f.name).cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


@dataclass(slots=True)
class Totals:
    """Rows and what they cost: the one record of totals. A run's `Tally` extends it, a
    folder's scan gives one (`books.Done.totals`), and run.json's history and totals, the
    status and the Python API's result are written from it."""

    ok: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def __iadd__(self, other: Self) -> Self:
        """Add another part's totals (a Ray block's) field by field, every field of the
        record's class: counts add, dicts of counts merge, records add in place."""
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, dict):
                for key, n in theirs.items():
                    mine[key] = mine.get(key, 0) + n
            else:
                mine += theirs
                setattr(self, f.name, mine)
        return self

    @property
    def done(self) -> int:
        return self.ok + self.errors

    def to_json(self) -> dict[str, Any]:
        """The shared totals, under the names run.json and the API use."""
        return {f.name: getattr(self, f.name) for f in fields(Totals)}
