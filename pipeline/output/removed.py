"""Rows whose source left the manifest: a nightly rerun's sources no longer hold the
file. They are not deleted (they were paid for, and their cost stays counted): they are
*removed*, which `caption status` counts apart and `caption export` and `read_results`
leave out unless asked. Known by reading, not stored: a row is removed while its id is
not in the folder's current manifest, and current again if its source comes back."""

from __future__ import annotations

import pyarrow as pa

from pipeline.io.arrow import read_parquet
from pipeline.io.idlookup import IdLookup
from pipeline.output.folder import OutputDir
from pipeline.records import MANIFEST_ID


def removed_count(out: OutputDir, done_ids: pa.Array) -> int:
    """How many of the folder's done ids its manifest no longer holds."""
    if not len(done_ids) or not out.manifest.exists():
        return 0
    lookup = IdLookup(read_parquet(out.manifest, columns=[MANIFEST_ID])[MANIFEST_ID])
    return int((~lookup.contains(done_ids)).sum())
