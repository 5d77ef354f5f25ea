"""Arrow helpers that keep pandas out of the process.

pyarrow imports pandas (if it is installed) the first time it converts a Python object
(`pa.array`, `pa.scalar`, `Table.from_pylist`, a Python literal given to a compute
function) and whenever `pyarrow.dataset` is imported, which `pq.read_table` does. That is
0.45 s of CPU and wall time, a third of a small nightly run and most of `caption status`.
The run and status paths use these instead; `tests/test_cli.py` checks they stay clean.
"""

from __future__ import annotations

import array
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def string_array(values: list[str]) -> pa.Array:
    """`pa.array(values, pa.string())`, built from its buffers."""
    encoded = [v.encode() for v in values]
    offsets = array.array("q", [0])
    offsets.extend(itertools.accumulate(map(len, encoded)))
    large = pa.Array.from_buffers(
        pa.large_string(),
        len(values),
        [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))],
    )
    return large.cast(pa.string())  # raises, rather than wraps, past 2 GiB of text


def equals(column: pa.Array | pa.ChunkedArray, value: str) -> pa.Array | pa.ChunkedArray:
    """`pc.equal(column, value)` for a string literal."""
    return pc.equal(column, string_array([value])[0])


def read_parquet(path: Path | str, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file, or some of its columns (`pq.read_table` without the dataset API)."""
    with pq.ParquetFile(path) as f:
        return f.read(columns=columns)


_BIG_GROUP = 1 << 21  # rows: a row group bigger than this is not read whole


def parquet_batches(
    path: Path | str,
    columns: list[str] | None = None,
    batch_rows: int = 1 << 16,
    wanted: Callable[[int, int], bool] | None = None,
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """A Parquet file caption wrote (a manifest: row groups of a batch each) as (first
    row, batch), a row group at a time, in batches of at most `batch_rows`; with
    `wanted(start, stop)`, only the row groups it wants are read. `ParquetFile.iter_batches`
    reads the file's column chunks ahead: streaming the ids of a 10M-row manifest held
    142 MB of them and left 285 MB resident, against 94 MB a row group at a time."""
    with pq.ParquetFile(path) as f:
        start = 0
        for group in range(f.num_row_groups):
            rows = f.metadata.row_group(group).num_rows
            if wanted is None or wanted(start, start + rows):
                at = start
                if rows > _BIG_GROUP:  # a manifest written elsewhere: streamed within it
                    batches = f.iter_batches(batch_rows, row_groups=[group], columns=columns)
                else:
                    batches = iter(f.read_row_group(group, columns=columns).to_batches(batch_rows))
                for batch in batches:
                    yield at, batch
                    at += batch.num_rows
            start += rows


def combined(column: pa.ChunkedArray) -> pa.Array:
    """`column.combine_chunks()`, which makes an empty column with `pa.array([])`."""
    return pa.concat_arrays(column.chunks) if column.num_chunks else pa.nulls(0, column.type)


def int_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """A null-free integer column as a numpy array (`to_numpy` imports pandas)."""
    arr = combined(column)
    if not pa.types.is_integer(arr.type) or arr.null_count:
        raise ValueError(f"expected integers without nulls, got {arr.type} ({arr.null_count} null)")
    dtype = np.dtype(
        f"{'int' if pa.types.is_signed_integer(arr.type) else 'uint'}{arr.type.bit_width}"
    )
    return np.frombuffer(
        arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * dtype.itemsize
    )


def bool_numpy(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A null-free boolean column as a numpy array, from its bits (`to_numpy` of a
    boolean array imports pandas)."""
    arr = combined(column) if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_boolean(arr.type) or arr.null_count:
        raise ValueError(f"expected booleans without nulls, got {arr.type} ({arr.null_count} null)")
    if not len(arr):
        return np.zeros(0, dtype=bool)
    bits = np.frombuffer(arr.buffers()[1], dtype=np.uint8)
    return np.unpackbits(bits, count=arr.offset + len(arr), bitorder="little")[arr.offset :].astype(
        bool
    )


def bool_array(values: np.ndarray) -> pa.Array:
    """`pa.array(values)` for a numpy boolean array, from its bits."""
    bits = np.packbits(values.astype(bool), bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits.tobytes())])


def take_indices(positions: np.ndarray) -> pa.Array:
    """Row positions for `take`, null where negative (`pa.array(p, mask=p < 0)`)."""
    values = np.ascontiguousarray(positions, dtype=np.int64)
    valid = np.packbits(values >= 0, bitorder="little")
    return pa.Array.from_buffers(
        pa.int64(), len(values), [pa.py_buffer(valid.tobytes()), pa.py_buffer(values.tobytes())]
    )


def nullable_string_array(values: list[str | None]) -> pa.Array:
    """`pa.array(values, pa.string())` for strings and Nones, built from its buffers."""
    filled = string_array([v if v is not None else "" for v in values])
    if all(v is not None for v in values):
        return filled
    valid = np.packbits(np.array([v is not None for v in values]), bitorder="little")
    _, offsets, data = filled.buffers()
    return pa.Array.from_buffers(
        filled.type, len(values), [pa.py_buffer(valid.tobytes()), offsets, data]
    )
