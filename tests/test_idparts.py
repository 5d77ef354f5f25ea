"""`io/idparts.py` (ids by partition, in memory or on disk) and `io/rowbits.py` (a bit
per row), against Python's own sets and lists."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.io import idparts
from pipeline.io.idlookup import hex64
from pipeline.io.idparts import IdParts, hex_strings, paired
from pipeline.io.rowbits import RowBits


def _ids(rng: random.Random, n: int) -> list[str]:
    return [f"{rng.getrandbits(64):016x}" for _ in range(n)]


def _built(ids: list[str], batch: int) -> IdParts:
    parts = IdParts(np.int64)
    for at in range(0, len(ids), batch):
        chunk = ids[at : at + batch]
        parts.add(pa.array(chunk, pa.string()), np.arange(at, at + len(chunk)))
    return parts


@pytest.mark.parametrize("on_disk", [False, True])
def test_pairing_matches_every_id_with_its_payload(
    on_disk: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if on_disk:
        monkeypatch.setattr(idparts, "SPILL_AT", 500)
        monkeypatch.setattr(idparts, "BITS", 3)
        monkeypatch.setattr(idparts, "_FLUSH", 300)
    rng = random.Random(7)
    # Caption's ids, a user's own (not 16 hex digits), and upper-case hex (a user's too).
    left = [*_ids(rng, 3_000), "photo-1", "ünï", "ABCDEF0123456789"]
    right = rng.sample(left, 1_500) + _ids(rng, 1_000) + ["photo-2", "ünï"]
    a, b = _built(left, 256), _built(right, 100)
    assert (a.spilled, len(a), len(b)) == (on_disk, len(left), len(right))

    matched: dict[str, str] = {}
    for mine, theirs in paired(a, b):
        at = mine.positions(theirs)
        for j, i in zip(theirs.payload.tolist(), at.tolist(), strict=True):
            if i >= 0:
                matched[right[j]] = left[int(mine.payload[i])]
    assert b.spilled == on_disk  # the other side spilled too, so their partitions match
    assert matched == {v: v for v in right if v in set(left)}
    folder = a._folder
    a.close()
    assert folder is None or not Path(folder).exists()


def test_repeated_ids_are_found_in_memory_and_on_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(3)
    ids = _ids(rng, 2_000)
    twice = sorted([ids[5], ids[1_999], "user-id"])
    every = [*ids, ids[5], "user-id", ids[1_999], "user-id", "another"]
    assert sorted(_built(every, 128).repeated().to_pylist()) == twice
    monkeypatch.setattr(idparts, "SPILL_AT", 100)
    monkeypatch.setattr(idparts, "BITS", 4)
    spilled = _built(every, 128)
    assert spilled.spilled
    assert sorted(spilled.repeated().to_pylist()) == twice
    assert not len(_built(ids, 500).repeated())


def test_hex_strings_undo_hex64() -> None:
    ids = ["0000000000000000", "ffffffffffffffff", "0123456789abcdef", "8000000000000001"]
    numbers, valid = hex64(pa.array(ids, pa.string()).cast(pa.large_binary()))
    assert valid.all()
    assert hex_strings(numbers).to_pylist() == ids


def test_row_bits_agree_with_a_boolean_array() -> None:
    rng = np.random.default_rng(5)
    for rows in (0, 1, 7, 8, 9, 1_000, 4_099):
        bits, truth = RowBits(rows), np.zeros(rows, dtype=bool)
        for _ in range(3):
            on = rng.integers(0, max(rows, 1), size=rows // 3) if rows else np.empty(0, int)
            off = rng.integers(0, max(rows, 1), size=rows // 5) if rows else np.empty(0, int)
            bits.set(on)
            truth[on] = True
            bits.clear(off)
            truth[off] = False
        assert bits.count() == truth.sum()
        assert bits.positions().tolist() == np.flatnonzero(truth).tolist()
        assert (~bits).count() == rows - truth.sum()  # the unused tail bits stay clear
        assert bits.window(0, rows).tolist() == truth.tolist()
        for start in (0, 3, rows // 2):
            assert bits.window(start, start + 13).tolist() == truth[start : start + 13].tolist()
        every = np.arange(rows)
        assert bits.get(every).tolist() == truth.tolist()
        other = RowBits(rows)
        other.set(every[::2])
        assert (bits | other).window(0, rows).tolist() == (truth | (every % 2 == 0)).tolist()
        assert (bits & other).count() == (truth & (every % 2 == 0)).sum()
