"""`io/idlookup.IdLookup` against Python's own dict, on the ids caption makes (16 hex
characters) and on a user's own ids (any length, any text)."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from pipeline.io.idlookup import IdLookup


def check(ids: list[str], queries: list[str], chunked: bool = False) -> None:
    built: pa.Array | pa.ChunkedArray = pa.array(ids, pa.string())
    if chunked and len(ids) > 2:
        built = pa.chunked_array([ids[:2], ids[2:]], pa.string())
    lookup = IdLookup(built)
    where = {v: i for i, v in enumerate(ids)}
    got = lookup.positions(pa.array(queries, pa.string()))
    assert got.tolist() == [where.get(q, -1) for q in queries]
    assert lookup.contains(pa.array(queries, pa.large_string())).tolist() == [
        q in where for q in queries
    ]


def test_caption_ids() -> None:
    rng = random.Random(1)
    ids = [f"{rng.getrandbits(64):016x}" for _ in range(20_000)]
    queries = rng.sample(ids, 5_000) + [f"{rng.getrandbits(64):016x}" for _ in range(5_000)]
    check(ids, queries)
    check(ids, queries, chunked=True)


@pytest.mark.parametrize("chunked", [False, True])
def test_user_ids_of_any_length_and_text(chunked: bool) -> None:
    ids = ["a", "ab", "abc", "b", "", "ünï", "猫-17", "x" * 40, "a\u2028b", "10", "9"]
    queries = [*ids, "abcd", "y" * 50, "c", "ün", "1", "a\u2028"]
    check(ids, queries, chunked)


def test_empty_sides_and_slices() -> None:
    check([], ["a"])
    check(["a"], [])
    sliced = pa.array(["q", "w", "e", "r", "t"]).slice(1, 3)  # an offset into the buffers
    lookup = IdLookup(sliced)
    assert lookup.positions(pa.array(["e", "q", "r", "w"])).tolist() == [1, -1, 2, 0]
    assert isinstance(lookup.contains(pa.array(["w"])), np.ndarray)


def test_hex_ids_are_held_as_numbers_and_other_queries_are_not_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.io import idlookup

    monkeypatch.setattr(idlookup, "_CHUNK", 128)  # conversion in many chunks
    rng = random.Random(2)
    ids = [f"{rng.getrandbits(64):016x}" for _ in range(3_000)]
    assert IdLookup(pa.array(ids)).numeric
    odd = ["ABCDEF0123456789", "zzzzzzzzzzzzzzzz", "0123", ids[5] + "0", ids[7].upper()]
    check(ids, [*rng.sample(ids, 400), *odd])
    # A set that holds one id that is not 16 hex digits is held as byte strings.
    mixed = [*ids[:1000], "zzzzzzzzzzzzzzzz", "ABCDEF0123456789"]
    assert not IdLookup(pa.array(mixed)).numeric
    check(mixed, [*mixed[::7], *odd])


def test_text_hashes_depend_on_the_text_alone() -> None:
    from pipeline.io.idlookup import text_hash64

    rng = random.Random(4)
    texts = [f"{rng.randrange(10**6)}:{rng.randrange(10**19)}" for _ in range(3_000)]
    whole = text_hash64(pa.array([*texts, None, ""], pa.string()))
    # In another batch, beside texts of other lengths: the same hashes.
    alone = text_hash64(pa.array(["x" * 60, *texts[100:200]], pa.string()))
    assert alone[1:].tolist() == whole[100:200].tolist()
    assert whole[-2] == 0  # no text
    assert (whole[:-2] != 0).all()
    assert whole[-1] != 0
    assert len(set(whole[:-2].tolist())) == len(set(texts))  # different texts differ
    assert text_hash64(pa.nulls(2)).tolist() == [0, 0]  # a column that is all null
