"""A comparison's sample: one seeded random sample of a source's images, the same for
every variant, kept as a manifest in the comparison's folder (`CMP/sample.pq`) beside the
full source's (`CMP/.caption/source.pq`), which projects each variant's cost to the whole
source. A rerun with the same sources, size and seed reuses it; any other is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import UsageError
from pipeline.output.layout import TMP_SUFFIX
from pipeline.output.writer import write_parquet_atomic
from pipeline.records import MANIFEST_ID, MANIFEST_SOURCE
from pipeline.sources.ids import RowSpec
from pipeline.sources.manifest import read_manifest, sample_rows, write_manifest

SAMPLE_NAME = "sample.pq"
SOURCE_MANIFEST = "source.pq"
RECORD = "compare.json"


def sample_paths(folder: Path) -> tuple[Path, Path, Path]:
    """(the sample manifest, the full source's manifest, the record of how it was drawn)."""
    return folder / SAMPLE_NAME, folder / ".caption" / SOURCE_MANIFEST, folder / RECORD


def draw_sample(
    sources: list[str], folder: Path, size: int, seed: int, spec: RowSpec
) -> tuple[Path, Path, int]:
    """The sample's manifest, the full source's, and how many images the source has.
    Drawn once; a rerun of the same comparison reuses it."""
    if size < 1:
        raise UsageError(f"--sample {size}: must be 1 or more images")
    sample, full, record = sample_paths(folder)
    drawn = {"sources": sources, "sample": size, "seed": seed, "ids": spec.scheme}
    if record.exists():
        try:
            before = json.loads(record.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"{record}: not readable ({exc})") from None
        given = {k: before.get(k) for k in drawn}
        if given != drawn:
            changed = ", ".join(k for k in drawn if given[k] != drawn[k])
            raise UsageError(
                f"{folder} holds a comparison of another sample (its {changed} differ); "
                "use a new folder, or the same sources, --sample and --seed"
            )
        if sample.exists() and full.exists():
            return sample, full, int(before["source_images"])
    folder.mkdir(parents=True, exist_ok=True)
    summary = write_manifest(sources, full, spec)
    rows = sample_rows(read_manifest(full), size, seed=seed)
    rows.sort(key=lambda r: r.id)
    table = pa.Table.from_pylist(
        [{MANIFEST_ID: r.id, MANIFEST_SOURCE: r.source, **r.extra} for r in rows],
        schema=pq.read_schema(full),
    )
    # Whole or absent; the record is written last.
    write_parquet_atomic(table, sample, tmp=sample.with_name(sample.name + TMP_SUFFIX))
    record.write_text(json.dumps({**drawn, "source_images": summary.rows}, indent=2) + "\n")
    return sample, full, summary.rows


def sample_column(sample: Path, column: str) -> dict[str, Any]:
    """Image id -> a column of the sample's manifest (a truth column of the user's lists)."""
    names = pq.read_schema(sample).names
    if column not in names:
        user = [n for n in names if n not in (MANIFEST_ID, MANIFEST_SOURCE)]
        raise UsageError(
            f"--truth ...={column}: the source has no column {column!r} "
            f"(its columns: {', '.join(user) or 'none beyond the image'})"
        )
    table = pq.read_table(sample, columns=[MANIFEST_ID, column])
    return dict(zip(table[MANIFEST_ID].to_pylist(), table[column].to_pylist(), strict=True))
