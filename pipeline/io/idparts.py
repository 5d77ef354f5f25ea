"""Ids too many to hold at once: kept on disk by partition, matched a partition at a time.

A folder of a hundred million rows holds as many done ids, and its manifest as many ids
again. Even as 64-bit numbers (`idlookup.hex64`) with a position each, both sides take
2.4 GB at 100M, and grow with the folder. `IdParts` holds ids in memory while they are
few (up to `SPILL_AT`); past that it writes them, with a payload each (a status, a row
number), to `2**BITS` files in a temporary folder, by their number (`partition_of`,
even however the ids run). Work that must see every id (which manifest rows are done,
which ids are there twice) then goes a partition at a time, and memory holds one
partition of each side: about 100,000 ids at 100M.

Ids that are not 16 hex digits (a user's own, `--id-column`) have no number: they are
kept in memory as strings, in a partition of their own.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.io.arrow import bool_array
from pipeline.io.idlookup import IdLookup, flat_ids, hex64

SPILL_AT = 1 << 21  # ids held in memory before they go to disk: 2M, about 34 MB
BITS = 10  # 1,024 partitions once on disk
_FLUSH = 1 << 20  # ids gathered before a write to the partitions' files


@dataclass(slots=True)
class Part:
    """One partition: its ids (64-bit numbers, or strings in the strings' partition) and
    their payloads, in the order they were added."""

    numbers: np.ndarray | None
    strings: pa.Array | None
    payload: np.ndarray

    def __len__(self) -> int:
        return len(self.payload)

    def ids(self) -> pa.Array:
        """The ids as strings."""
        if self.strings is not None:
            return self.strings
        assert self.numbers is not None
        return hex_strings(self.numbers)

    def positions(self, other: Part) -> np.ndarray:
        """For each of `other`'s ids, its position among this part's, or -1 (the same
        partition of two `IdParts`)."""
        if self.strings is not None or other.strings is not None:
            return IdLookup(self.ids()).positions(other.ids())
        assert self.numbers is not None
        assert other.numbers is not None
        return number_positions(self.numbers, other.numbers)

    def repeated(self) -> pa.Array:
        """The ids here more than once."""
        if self.strings is not None:
            if not len(self.strings):
                return self.strings
            counts = pc.value_counts(self.strings)
            twice = counts.field("counts").to_numpy() > 1
            return counts.field("values").filter(bool_array(twice))
        assert self.numbers is not None
        ordered = np.sort(self.numbers)
        return hex_strings(np.unique(ordered[1:][ordered[1:] == ordered[:-1]]))


def number_positions(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """For each number of `query`, its position in `keys`, or -1."""
    if not len(keys) or not len(query):
        return np.full(len(query), -1, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    at = np.minimum(np.searchsorted(ordered, query), len(ordered) - 1)
    return np.where(ordered[at] == query, order[at], -1).astype(np.int64)


_MIX = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / the golden ratio, odd


def partition_of(numbers: np.ndarray) -> np.ndarray:
    """Each number's partition: the top `BITS` bits of it times an odd constant
    (Fibonacci hashing), so that ids in a run of numbers (a user's own hex ids, counted
    up) spread over every partition as caption's hashed ids do."""
    return (numbers * _MIX) >> np.uint64(64 - BITS)


_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def hex_strings(numbers: np.ndarray) -> pa.Array:
    """64-bit numbers as the 16 hex digits that spell them (`hex64` undone)."""
    nibbles = np.empty((len(numbers), 16), dtype=np.uint8)
    as_bytes = numbers.astype(">u8").view(np.uint8).reshape(-1, 8)
    nibbles[:, 0::2] = _DIGITS[as_bytes >> 4]
    nibbles[:, 1::2] = _DIGITS[as_bytes & 15]
    offsets = np.arange(0, 16 * len(numbers) + 1, 16, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.string(), len(numbers), [None, pa.py_buffer(offsets), pa.py_buffer(nibbles.tobytes())]
    )


class IdParts:
    """Ids, each with a payload of `dtype`, added a batch at a time; then read back a
    partition at a time (`parts`, `paired`)."""

    def __init__(self, dtype: type[np.generic] | np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self._numbers: list[np.ndarray] = []
        self._payloads: list[np.ndarray] = []
        self._buffered = 0
        self._strings: list[pa.Array] = []
        self._string_payloads: list[np.ndarray] = []
        self._folder: Path | None = None
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def spilled(self) -> bool:
        return self._folder is not None

    def add(self, ids: pa.Array | pa.ChunkedArray, payload: np.ndarray) -> None:
        flat = flat_ids(ids)
        numbers, valid = hex64(flat)
        payload = np.asarray(payload, dtype=self.dtype)
        self._count += len(flat)
        if not valid.all():  # a user's own ids: kept as strings
            self._strings.append(flat.filter(bool_array(~valid)).cast(pa.string()))
            self._string_payloads.append(payload[~valid])
            numbers, payload = numbers[valid], payload[valid]
        if len(numbers):
            self._numbers.append(numbers)
            self._payloads.append(payload)
            self._buffered += len(numbers)
        if self._buffered >= (_FLUSH if self.spilled else SPILL_AT):
            self.spill()

    def spill(self) -> None:
        """Write what is buffered to the partitions' files (making them, the first time)."""
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="caption-ids-"))
            weakref.finalize(self, shutil.rmtree, self._folder, True)
        if not self._numbers:
            return
        numbers, payload = np.concatenate(self._numbers), np.concatenate(self._payloads)
        self._numbers, self._payloads, self._buffered = [], [], 0
        part = partition_of(numbers)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange((1 << BITS) + 1))
        numbers, payload = numbers[order], payload[order]
        for p in np.flatnonzero(np.diff(bounds)):
            rows = slice(bounds[p], bounds[p + 1])
            with open(self._folder / f"{p}.ids", "ab") as f:
                numbers[rows].tofile(f)
            with open(self._folder / f"{p}.payload", "ab") as f:
                payload[rows].tofile(f)

    def parts(self) -> Iterator[Part]:
        """Each partition of numbers (one when nothing was spilled), then the strings."""
        if self._folder is None:
            yield Part(_joined(self._numbers, np.uint64), None, _joined(self._payloads, self.dtype))
        else:
            self.spill()
            for p in range(1 << BITS):
                yield self._read(p)
        yield Part(
            None,
            pa.concat_arrays(self._strings) if self._strings else pa.nulls(0, pa.string()),
            _joined(self._string_payloads, self.dtype),
        )

    def _read(self, p: int) -> Part:
        assert self._folder is not None
        ids, payload = self._folder / f"{p}.ids", self._folder / f"{p}.payload"
        if not ids.exists():
            return Part(np.empty(0, np.uint64), None, np.empty(0, self.dtype))
        return Part(np.fromfile(ids, np.uint64), None, np.fromfile(payload, self.dtype))

    def repeated(self) -> pa.Array:
        """The ids added more than once (usually none)."""
        found = [r for part in self.parts() if len(r := part.repeated())]
        return pa.concat_arrays(found) if found else pa.nulls(0, pa.string())

    def close(self) -> None:
        """Remove the partitions' files now rather than when the object is collected."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)


def paired(left: IdParts, right: IdParts) -> Iterator[tuple[Part, Part]]:
    """The same partition of both, a partition at a time (one that spilled makes the
    other spill too, so that their partitions match)."""
    if left.spilled != right.spilled:
        (right if left.spilled else left).spill()
    yield from zip(left.parts(), right.parts(), strict=True)


def _joined(arrays: list[np.ndarray], dtype: type[np.generic] | np.dtype) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.empty(0, dtype=dtype)
