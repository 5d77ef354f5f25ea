"""A set of row ids looked up many times, built once.

`pc.is_in(batch, value_set=ids)` and `pc.index_in` hash their value set on every call:
called per manifest batch or per shard with every id of a folder, they made resume and
export quadratic (3M rows: 276 s and 236 s, against 30 s and 26 s at 1M). Here the ids
are laid out once as fixed-width byte strings straight from Arrow's buffers, sorted once,
and each query is a vectorised binary search: O(n log n) to build, O(k log n) per
lookup of k ids, 8 + width bytes per id.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.io.arrow import bool_numpy

_CHUNK = 1 << 16


def flat_ids(ids: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The ids as one large-binary array (its buffers: 64-bit offsets, then the bytes)."""
    if isinstance(ids, pa.ChunkedArray):
        ids = pa.concat_arrays(ids.chunks) if ids.num_chunks else pa.nulls(0, ids.type)
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        ids = ids.cast(pa.large_string())
    return ids.cast(pa.large_binary())


def _layout(flat: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(each id's start in the data buffer, each id's length in bytes), read from the
    buffers (`to_numpy` would import pandas)."""
    n = len(flat)
    offsets = np.frombuffer(flat.buffers()[1], dtype=np.int64)[flat.offset : flat.offset + n + 1]
    return offsets[:-1], np.diff(offsets)


def fixed_width(ids: pa.Array | pa.ChunkedArray, width: int) -> np.ndarray:
    """The ids as numpy byte strings of `width` bytes (shorter ones padded with NULs,
    which no id holds; none may be longer)."""
    flat = flat_ids(ids)
    n = len(flat)
    if n == 0:
        return np.empty(0, dtype=f"S{max(width, 1)}")
    starts, lengths = _layout(flat)
    data = np.frombuffer(flat.buffers()[2], dtype=np.uint8)
    if (lengths == width).all():  # the common case (16-hex ids): the buffer is the array
        first = int(starts[0])
        return np.frombuffer(data[first : first + n * width].tobytes(), dtype=f"S{width}")
    out = np.zeros((n, width), dtype=np.uint8)
    for length in np.unique(lengths):  # one vectorised copy per distinct length,
        every = np.nonzero(lengths == length)[0]
        cols = np.arange(length)
        for at in range(0, len(every), _CHUNK):  # in chunks: index arrays stay small
            rows = every[at : at + _CHUNK]
            if length:
                out[rows[:, None], cols] = data[starts[rows][:, None] + cols]
    return out.view(f"S{width}").ravel()


def _longest(flat: pa.Array) -> int:
    return max(1, int(_layout(flat)[1].max())) if len(flat) else 1


# ASCII byte -> its value as a lowercase hex digit; 16 for anything else.
_HEX = np.full(256, 16, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)


def hex64(flat: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Ids of 16 lowercase hex digits (ours: path and content ids) as the 64-bit numbers
    they spell, and which ids are such (the others' numbers are 0). A chunk at a time."""
    n = len(flat)
    numbers = np.zeros(n, dtype=np.uint64)
    valid = _layout(flat)[1] == 16 if n else np.zeros(0, dtype=bool)
    step = _CHUNK
    for at in range(0, n, step):
        rows = np.flatnonzero(valid[at : at + step])
        if not len(rows):
            continue
        part = flat.slice(at, step)
        if len(rows) < len(part):
            part = part.take(pa.array(rows))  # (`take` of a numpy array: no pandas)
        digits = _HEX[fixed_width(part, 16).view(np.uint8).reshape(-1, 16)]
        good = (digits < 16).all(axis=1)
        # Two digits a byte, eight bytes a big-endian number: no 8-byte temporaries.
        packed = np.ascontiguousarray((digits[:, 0::2] << 4) | (digits[:, 1::2] & 15))
        value = packed.view(">u8").ravel().astype(np.uint64)
        numbers[at + rows] = np.where(good, value, 0)
        valid[at + rows] = good
    return numbers, valid


_FNV_PRIME = np.uint64(0x100000001B3)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)


def text_hash64(values: pa.Array) -> np.ndarray:
    """A 64-bit FNV-1a hash of each string (length included), never 0; 0 for a null.
    For telling whether two texts differ (file signatures) without holding them: two
    different texts hash the same about once in 2**64."""
    n = len(values)
    out = np.zeros(n, dtype=np.uint64)
    for at in range(0, n, _CHUNK):
        flat = flat_ids(values.slice(at, _CHUNK))  # a null's bytes: hashed, then zeroed
        width = _longest(flat)
        grid = fixed_width(flat, width).view(np.uint8).reshape(-1, width)
        lengths = _layout(flat)[1]
        h = np.full(len(flat), _FNV_OFFSET, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for column in range(width):  # a text's own bytes only: not the padding
                mixed = (h ^ grid[:, column].astype(np.uint64)) * _FNV_PRIME
                h = np.where(column < lengths, mixed, h)
            h = (h ^ lengths.astype(np.uint64)) * _FNV_PRIME
        out[at : at + len(flat)] = np.where(h == 0, np.uint64(1), h)
    if values.null_count:
        out[~bool_numpy(values.is_valid())] = 0
    return out


def hex64_chunks(ids: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """`hex64` of ids a chunk at a time: a chunked column of millions of ids is never
    copied whole into one array of strings."""
    chunks = ids.chunks if isinstance(ids, pa.ChunkedArray) else [ids]
    parts = [hex64(flat_ids(chunk)) for chunk in chunks if len(chunk)]
    if not parts:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=bool)
    return np.concatenate([n for n, _ in parts]), np.concatenate([v for _, v in parts])


class IdLookup:
    """Built once, looked up many times. Ids of 16 hex digits (every id caption makes)
    are held as 64-bit numbers, 8 bytes an id (plus 4 for its position); others as
    fixed-width byte strings as wide as the longest."""

    def __init__(self, ids: pa.Array | pa.ChunkedArray) -> None:
        numbers, valid = hex64_chunks(ids)
        if valid.all():
            self._build(numbers, 16, numeric=True)
        else:
            del numbers, valid
            flat = flat_ids(ids)
            width = _longest(flat)
            self._build(fixed_width(flat, width), width, numeric=False)

    @classmethod
    def of_numbers(cls, numbers: np.ndarray) -> IdLookup:
        """A lookup of ids already 64-bit numbers (`hex64`'s), queried with
        `number_positions`."""
        lookup = cls.__new__(cls)
        lookup._build(numbers, 16, numeric=True)
        return lookup

    def _build(self, keys: np.ndarray, width: int, numeric: bool) -> None:
        self.numeric, self.width = numeric, width
        order = np.argsort(keys, kind="stable")
        self.order = order.astype(np.int32) if len(order) < 2**31 else order
        self.keys = keys[order]

    def __len__(self) -> int:
        return len(self.keys)

    def positions(self, query: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Each queried id's position in the ids the lookup was built from, or -1."""
        if not len(query) or not len(self.keys):
            return np.full(len(query), -1, dtype=np.int64)
        if self.numeric:  # a queried id that is not 16 hex digits is not among them
            numbers, valid = hex64_chunks(query)
            return np.where(valid, self.number_positions(numbers), -1)
        flat = flat_ids(query)
        width = max(self.width, _longest(flat))
        keys = self.keys if width == self.width else self.keys.astype(f"S{width}")
        return self._find(keys, fixed_width(flat, width))

    def number_positions(self, numbers: np.ndarray) -> np.ndarray:
        """`positions` of ids given as 64-bit numbers (a numeric lookup's)."""
        return self._find(self.keys, numbers)

    def _find(self, keys: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Each of `query`'s position among the sorted `keys` (as built), or -1."""
        if not len(query) or not len(keys):
            return np.full(len(query), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
        return np.where(keys[at] == query, self.order[at], -1).astype(np.int64)

    def contains(self, query: pa.Array | pa.ChunkedArray) -> np.ndarray:
        return self.positions(query) >= 0
