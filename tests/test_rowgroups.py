"""`io/rowgroups.RowGroups`: rows of a Parquet file by position, against a Python list."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.rowgroups import RowGroups


def test_rows_by_position_across_row_groups_with_nulls_for_none(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    n = 100
    table = pa.table({"label": [f"l{i}" for i in range(n)], "score": list(range(n))})
    pq.write_table(table, path, row_group_size=7)  # 15 row groups
    assert pq.ParquetFile(path).num_row_groups == 15
    groups = RowGroups(str(path), ["label", "score"])
    rng = np.random.default_rng(2)
    for _ in range(20):  # more groups than are kept: some are read again
        positions = rng.integers(-1, n, size=int(rng.integers(0, 40)))
        got = groups.take(positions).to_pylist()
        want = [
            {"label": f"l{p}", "score": int(p)} if p >= 0 else {"label": None, "score": None}
            for p in positions
        ]
        assert got == want
    none = groups.take(np.array([-1, -1]))
    assert none.to_pylist() == [{"label": None, "score": None}] * 2
    assert groups.take(np.empty(0, dtype=np.int64)).num_rows == 0
