from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io.arrow import combined, equals, int_numpy, read_parquet, string_array


@pytest.mark.parametrize(
    "values", [[], [""], ["a", "", "bc"], ["data/ünïcødé/猫.png", "https://x/1.jpg?a=b&c"]]
)
def test_string_array_is_what_pa_array_gives(values: list[str]) -> None:
    built = string_array(values)
    assert built.type == pa.string()
    assert built.equals(pa.array(values, pa.string()))
    assert built.to_pylist() == values


def test_equals_compares_with_a_string_literal() -> None:
    column = pa.chunked_array([["ok", "error"], ["ok", None]])
    assert equals(column, "ok").to_pylist() == [True, False, True, None]


def test_read_parquet_reads_the_file_or_some_columns(tmp_path: Path) -> None:
    table = pa.table({"id": ["a", "b"], "n": [1, 2], "s": ["x", None]})
    pq.write_table(table, tmp_path / "t.parquet")
    assert read_parquet(tmp_path / "t.parquet").equals(table)
    assert read_parquet(tmp_path / "t.parquet", columns=["n"]).to_pydict() == {"n": [1, 2]}


def test_combined_keeps_the_type_of_an_empty_column() -> None:
    empty = pa.chunked_array([], pa.string())
    assert combined(empty).equals(pa.array([], pa.string()))
    column = pa.chunked_array([["a"], [], ["b", "c"]])
    assert combined(column).equals(column.combine_chunks())


@pytest.mark.parametrize("type_", [pa.int32(), pa.int64(), pa.uint8(), pa.int16()])
def test_int_numpy_matches_to_numpy_including_sliced_chunks(type_: pa.DataType) -> None:
    column = pa.chunked_array([pa.array([5, 6, 7, 8], type_).slice(1), pa.array([9], type_)])
    got = int_numpy(column)
    np.testing.assert_array_equal(got, column.to_numpy())
    assert got.dtype == column.to_numpy().dtype


def test_int_numpy_refuses_nulls_and_non_integers() -> None:
    with pytest.raises(ValueError, match="1 null"):
        int_numpy(pa.chunked_array([[1, None]], pa.int32()))
    with pytest.raises(ValueError, match="double"):
        int_numpy(pa.chunked_array([[1.5]]))


@pytest.mark.parametrize("big_group", [1 << 21, 5])  # a row group read whole, or streamed
def test_parquet_batches_give_each_rows_start_and_skip_groups_not_wanted(
    tmp_path: Path, big_group: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.io import arrow

    monkeypatch.setattr(arrow, "_BIG_GROUP", big_group)
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"n": list(range(50))}), path, row_group_size=7)
    every = [(start, b.column(0).to_pylist()) for start, b in arrow.parquet_batches(path, None, 3)]
    assert all(rows == list(range(start, start + len(rows))) for start, rows in every)
    assert [v for _, rows in every for v in rows] == list(range(50))
    assert max(len(rows) for _, rows in every) == 3
    asked: list[tuple[int, int]] = []

    def wanted(start: int, stop: int) -> bool:
        asked.append((start, stop))
        return start == 7

    some = arrow.parquet_batches(path, ["n"], 100, wanted)
    assert [(start, b.column(0).to_pylist()) for start, b in some] == [(7, list(range(7, 14)))]
    assert asked == [(a, min(a + 7, 50)) for a in range(0, 50, 7)]  # each group, once


def test_bool_numpy_reads_the_bits_of_a_slice() -> None:
    from pipeline.io.arrow import bool_numpy

    values = [i % 3 == 0 for i in range(29)]
    column = pa.array(values)
    assert bool_numpy(column).tolist() == values
    assert bool_numpy(column.slice(5, 17)).tolist() == values[5:22]
    assert bool_numpy(pa.chunked_array([values[:4], values[4:]])).tolist() == values
    with pytest.raises(ValueError, match="without nulls"):
        bool_numpy(pa.array([True, None]))
