"""Groups of near-identical images: every pair whose hashes are within a Hamming distance,
found exactly, never by comparing every pair.

A multi-index on the hash's bands: split the 64 bits into `m` bands. Two hashes within
distance `d` differ in at most `d // m` bits in at least one band (if every band differed
in more, the total would exceed `d`). So for each band, each query hash looks up the
hashes whose band is within `d // m` bits of its own (a table of band values, probed at
every value that close), and only those candidates are compared whole. `m` is chosen per
call from the sizes, by the count of probes and candidates it costs (`_plan`).

A candidate must also be within the distance on the second hash (`check`), computed from
the same thumbnail in the other direction: random 64-bit hashes within 9 bits of each
other are one pair in 600 million, which a folder of 10 million images has about 90,000
of; requiring both halves makes that about one in 10^18.

Memory: the hashes, one band's table (a sorted copy and 2^bits offsets) and one chunk of
candidates at a time: it depends on the row count and `CHUNK`, never on the pair count.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import combinations
from math import comb

import numpy as np

# Candidates compared per numpy step: bounds the memory of one step (~50 bytes each).
CHUNK = 2_000_000
# The widest band: its table holds 2^bits offsets (8 bytes each: 32 MiB at 22 bits).
MAX_BITS = 22


@dataclass(frozen=True, slots=True)
class Plan:
    bands: int  # m: the 64 bits split into this many bands
    radius: int  # bits a band may differ by: distance // bands

    def widths(self) -> list[int]:
        base, extra = divmod(64, self.bands)
        return [base + (1 if i < extra else 0) for i in range(self.bands)]


def _plan(queries: int, rows: int, distance: int) -> Plan:
    """The band count that costs least: probes (queries x masks) plus candidates (queries
    x masks x rows per band value), for uniformly spread hashes."""
    best: tuple[float, Plan] | None = None
    for bands in range(1, 9):
        plan = Plan(bands, distance // bands)
        widths = plan.widths()
        if max(widths) > MAX_BITS:
            continue
        cost = 0.0
        for bits in widths:
            masks = sum(comb(bits, k) for k in range(min(plan.radius, bits) + 1))
            cost += queries * masks * (1 + rows / 2**bits) + 2**bits
        if best is None or cost < best[0]:
            best = (cost, plan)
    assert best is not None
    return best[1]


def _masks(bits: int, radius: int) -> Iterator[int]:
    """Every `bits`-bit value with at most `radius` bits set: the band values to probe."""
    for k in range(min(radius, bits) + 1):
        for positions in combinations(range(bits), k):
            yield sum(1 << p for p in positions)


def near_pairs(
    hashes: np.ndarray,
    check: np.ndarray,
    distance: int,
    queries: np.ndarray | None = None,
) -> np.ndarray:
    """Index pairs (i, j), i in `queries` (default: all rows), j != i, whose `hashes` and
    `check` are each within `distance` bits. Each pair once when queries are all rows
    (i < j); otherwise every (query, row) pair, with rows that are queries too only once.
    Returns an (n, 2) int64 array."""
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    c = np.ascontiguousarray(check, dtype=np.uint64)
    q = np.arange(len(h)) if queries is None else np.asarray(queries, dtype=np.int64)
    if not len(q) or len(h) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    if len(h) >= 2**31:
        raise ValueError("near_pairs takes at most 2^31 rows")
    is_query = np.zeros(len(h), dtype=bool)
    is_query[q] = True
    plan = _plan(len(q), len(h), distance)
    # Every row asks: a pair in two band values is found from both sides, so each side
    # probes only the values above its own (within one value, `probe` keeps i < j).
    symmetric = queries is None
    found: list[np.ndarray] = []
    shift = 0
    for bits in plan.widths():
        # 32-bit keys and positions (bands are at most MAX_BITS): half the memory.
        keys = ((h >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(np.int32)
        shift += bits
        band = _Band(keys, bits, h, c)
        # Queries in band order: a probe's lookups (key ^ mask) then stay close together.
        asks = q[np.argsort(keys[q], kind="stable")].astype(np.int32)
        ask_keys, ask_h, ask_c = keys[asks], h[asks], c[asks]
        for mask in _masks(bits, plan.radius):
            targets = ask_keys ^ np.int32(mask)
            upward = ask_keys < targets if symmetric and mask else None
            found.extend(band.probe(asks, targets, upward, ask_h, ask_c, distance, is_query))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(found)
    # A pair close in several bands is found once per band: keep one of each.
    return np.unique(pairs, axis=0)


class _Band:
    """One band's table: the rows sorted by their band value, with each value's offset,
    and the hashes in that order, so that a value's rows are one contiguous run."""

    def __init__(self, keys: np.ndarray, bits: int, h: np.ndarray, c: np.ndarray) -> None:
        self.order = np.argsort(keys, kind="stable").astype(np.int32)
        self.counts = np.bincount(keys, minlength=1 << bits).astype(np.int32)
        self.starts = np.concatenate(([0], np.cumsum(self.counts, dtype=np.int64)[:-1]))
        self.h, self.c = h[self.order], c[self.order]

    def probe(
        self,
        asks: np.ndarray,
        targets: np.ndarray,
        upward: np.ndarray | None,
        ask_h: np.ndarray,
        ask_c: np.ndarray,
        distance: int,
        is_query: np.ndarray,
    ) -> Iterator[np.ndarray]:
        """The close pairs between each query and the rows whose band value is its target
        (only the queries marked `upward`, when given)."""
        sizes = self.counts[targets]
        hit = np.flatnonzero(sizes if upward is None else sizes * upward)
        sizes = sizes[hit].astype(np.int64)
        ends = np.cumsum(sizes)
        begin = 0
        while begin < len(hit):
            # As many queries as fit in one chunk of candidates (at least one).
            stop = max(begin + 1, int(np.searchsorted(ends, ends[begin] - sizes[begin] + CHUNK)))
            part, n = hit[begin:stop], sizes[begin:stop]
            first = np.cumsum(n) - n
            at = np.arange(int(n.sum())) + np.repeat(self.starts[targets[part]] - first, n)
            close = np.bitwise_count(np.repeat(ask_h[part], n) ^ self.h[at]) <= distance
            close &= np.bitwise_count(np.repeat(ask_c[part], n) ^ self.c[at]) <= distance
            kept = np.flatnonzero(close)
            if len(kept):
                left = asks[part[np.searchsorted(first, kept, side="right") - 1]].astype(np.int64)
                right = self.order[at[kept]].astype(np.int64)
                if upward is not None:  # found from one side only: name it (low, high)
                    left, right = np.minimum(left, right), np.maximum(left, right)
                    keep = np.ones(len(left), dtype=bool)
                else:  # each unordered pair once: the smaller index's, unless one side only asks
                    keep = (left < right) | ~is_query[right]
                if keep.any():
                    yield np.stack([left[keep], right[keep]], axis=1)
            begin = stop


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """The connected components of `n` rows linked by `pairs`: each row's label is the
    smallest row index of its component (so a group is named by its first row)."""
    label = np.arange(n, dtype=np.int64)
    if not len(pairs):
        return label
    a, b = pairs[:, 0], pairs[:, 1]
    # Min-label propagation with pointer jumping: each round every pair takes the smaller
    # of its two labels, then labels follow their own labels to the root.
    while True:
        low = np.minimum(label[a], label[b])
        before = label.copy()
        np.minimum.at(label, a, low)
        np.minimum.at(label, b, low)
        while True:
            jumped = label[label]
            if np.array_equal(jumped, label):
                break
            label = jumped
        if np.array_equal(label, before):
            return label
