"""Ids too many to hold at once: kept on disk by partition, matched a partition at a time.

A folder of a hundred million rows holds as many done ids, and its manifest as many ids
again. Even as 64-bit numbers (`idlookup.hex64`) with a position each, both sides take
2.4 GB at 100M, and grow with the folder. `IdParts` holds ids in memory while they are
few (up to `SPILL_AT`); past that it writes them, with a payload each (a status, a row
number), to `2**BITS` files in a temporary folder, by their number (`partition_of`,
even however the ids run). Work that must see every id (which manifest rows are done,
which ids are there twice) then goes a partition at a time, and memory holds one
partition of each side: about 400,000 ids at 100M.

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
BITS = 8  # 256 partitions once on disk: 400,000 ids each at 100M
_FLUSH = 1 << 21  # ids gathered before a write to the partitions' files


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
        return IdLookup.of_numbers(self.numbers).number_positions(other.numbers)

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
    partition at a time (`parts`, `paired`). With `ranges`, the numbers are row numbers
    (`add_numbers`) and partition `p` holds rows `p * ranges` up to `(p + 1) * ranges`:
    a join's answers put back in row order, a range at a time."""

    def __init__(self, dtype: type[np.generic] | np.dtype, ranges: int = 0) -> None:
        self.dtype = np.dtype(dtype)
        self.ranges = ranges
        self._record = np.dtype([("id", np.uint64), ("payload", self.dtype)])
        self._numbers: list[np.ndarray] = []
        self._payloads: list[np.ndarray] = []
        self._buffered = 0
        self._strings: list[pa.Array] = []
        self._string_payloads: list[np.ndarray] = []
        self._folder: Path | None = None
        self._count = 0
        self._top = 0  # partitions written, with `ranges`

    def __len__(self) -> int:
        return self._count

    @property
    def spilled(self) -> bool:
        return self._folder is not None

    def add(self, ids: pa.Array | pa.ChunkedArray, payload: np.ndarray) -> None:
        flat = flat_ids(ids)
        numbers, valid = hex64(flat)
        payload = np.asarray(payload, dtype=self.dtype)
        if not valid.all():  # a user's own ids: kept as strings
            self._strings.append(flat.filter(bool_array(~valid)).cast(pa.string()))
            self._string_payloads.append(payload[~valid])
            self._count += len(flat) - int(valid.sum())
            numbers, payload = numbers[valid], payload[valid]
        self.add_numbers(numbers, payload)

    def add_numbers(self, numbers: np.ndarray, payload: np.ndarray) -> None:
        """Ids already 64-bit numbers (row numbers, with `ranges`)."""
        self._count += len(numbers)
        if len(numbers):
            self._numbers.append(numbers.astype(np.uint64, copy=False))
            self._payloads.append(np.asarray(payload, dtype=self.dtype))
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
        part = numbers // np.uint64(self.ranges) if self.ranges else partition_of(numbers)
        self._top = max(self._top, int(part.max()) + 1)
        # A stable sort of 16-bit numbers is numpy's radix sort: several times a quicksort.
        small = part.astype(np.uint16) if self._top <= 1 << 16 else part
        order = np.argsort(small, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(self._partitions() + 1))
        records = np.empty(len(numbers), dtype=self._record)
        records["id"], records["payload"] = numbers[order], payload[order]
        for p in np.flatnonzero(np.diff(bounds)):
            with open(self._folder / str(p), "ab") as f:  # a file a partition: few opens
                records[bounds[p] : bounds[p + 1]].tofile(f)

    def _partitions(self) -> int:
        return self._top if self.ranges else 1 << BITS

    def parts(self) -> Iterator[Part]:
        """Each partition of numbers (one when nothing was spilled), then the strings."""
        if self._folder is None:
            yield Part(_joined(self._numbers, np.uint64), None, _joined(self._payloads, self.dtype))
        else:
            self.spill()
            for p in range(self._partitions()):
                yield self._read(p)
        yield Part(
            None,
            pa.concat_arrays(self._strings) if self._strings else pa.nulls(0, pa.string()),
            _joined(self._string_payloads, self.dtype),
        )

    def _read(self, p: int) -> Part:
        assert self._folder is not None
        path = self._folder / str(p)
        records = np.fromfile(path, self._record) if path.exists() else np.empty(0, self._record)
        return Part(
            np.ascontiguousarray(records["id"]), None, np.ascontiguousarray(records["payload"])
        )

    def repeated(self) -> pa.Array:
        """The ids added more than once (usually none)."""
        found = [r for part in self.parts() if len(r := part.repeated())]
        return pa.concat_arrays(found) if found else pa.nulls(0, pa.string())

    def close(self) -> None:
        """Let the ids go: the partitions' files removed now rather than when the object
        is collected, and what is held in memory dropped."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
        self._numbers, self._payloads, self._strings, self._string_payloads = [], [], [], []


def paired(left: IdParts, right: IdParts) -> Iterator[tuple[Part, Part]]:
    """The same partition of both, a partition at a time (one that spilled makes the
    other spill too, so that their partitions match)."""
    if left.spilled != right.spilled:
        (right if left.spilled else left).spill()
    yield from zip(left.parts(), right.parts(), strict=True)


def _joined(arrays: list[np.ndarray], dtype: type[np.generic] | np.dtype) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.empty(0, dtype=dtype)
