"""`output/totals.py`: each shard's totals in its footer, trusted only when they are its
own, and the books the same whether a shard has them or not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.output import books
from pipeline.output.folder import OutputDir
from pipeline.output.totals import KEY, read_totals, totals_of
from tests.fakes import OK, ScriptedServer, json_error
from tests.helpers import SAMPLES


def test_shards_carry_their_totals_and_the_books_agree_without_them(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    imgs = tmp_path / "imgs"
    shutil.copytree(SAMPLES, imgs)
    server.default = json_error(400, "Invalid image")  # every row an error row...
    out = tmp_path / "out"
    args = ["run", str(imgs), "-o", str(out), "--endpoint", server.url, "--quiet"]
    CliRunner().invoke(cli, args)
    server.default = OK  # ...then answered
    CliRunner().invoke(cli, [*args, "--retry-errors"])
    (shard,) = OutputDir(out).shards()
    found = read_totals(shard)
    assert found == totals_of(pq.read_table(shard))
    assert (found["rows"], found["ok"], found["errors"]) == (6, 6, 0)
    with_footer = books.scan(OutputDir(out))
    assert with_footer.superseded == 6  # the six errors, in the ledger

    # The same shard written by another tool: no totals, counted from its rows.
    table = pq.read_table(shard)
    pq.write_table(table.replace_schema_metadata(None), shard)
    assert read_totals(shard) is None
    without = books.scan(OutputDir(out))
    # And totals that are not the shard's own (another row count) are not trusted.
    bad = dict(found, rows=5)
    pq.write_table(table.replace_schema_metadata({KEY: json.dumps(bad).encode()}), shard)
    assert read_totals(shard) is None
    for done in (without, books.scan(OutputDir(out))):
        assert done.totals() == with_footer.totals()
        assert done.errors_by_kind == with_footer.errors_by_kind
        ok_ids = sorted(done.id_array(ok_only=True).to_pylist())
        assert ok_ids == sorted(with_footer.id_array(ok_only=True).to_pylist())


def test_a_table_that_is_not_a_shard_gets_no_totals(tmp_path: Path) -> None:
    from pipeline.output.writer import write_parquet_atomic

    path = tmp_path / "x.parquet"
    write_parquet_atomic(pa.table({"id": ["a"]}), path, tmp=tmp_path / "x.tmp")
    assert read_totals(path) is None
