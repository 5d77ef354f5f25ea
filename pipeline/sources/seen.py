"""The ids an ingest has seen, for dropping duplicates: millions of them in 8 bytes each.

A Python set of ints costs about 70 bytes an id (700 MB for a 10M-line list). Here the
64-bit fingerprints are kept as sorted numpy runs whose sizes at least double from one to
the next (a new batch is a small run; runs of like size are merged), so a lookup is a
binary search in each of about log2(n / batch) runs, and memory is 8 bytes an id.
"""

from __future__ import annotations

import numpy as np


class SeenIds:
    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []  # sorted, sizes decreasing

    def __len__(self) -> int:
        return sum(len(r) for r in self._runs)

    def first_seen(self, fingerprints: np.ndarray) -> np.ndarray:
        """For each fingerprint of a batch, in order: whether this is its first sighting
        (not seen in an earlier batch, nor earlier in this one); all are then seen."""
        batch = np.asarray(fingerprints, dtype=np.uint64)
        fresh = np.zeros(len(batch), dtype=bool)
        if not len(batch):
            return fresh
        _, first = np.unique(batch, return_index=True)
        fresh[first] = True  # the first of each value within the batch
        for run in self._runs:
            at = np.minimum(np.searchsorted(run, batch), len(run) - 1)
            fresh &= run[at] != batch
        if fresh.any():
            self._add(np.sort(batch[fresh]))
        return fresh

    def _add(self, run: np.ndarray) -> None:
        self._runs.append(run)
        while len(self._runs) > 1 and len(self._runs[-2]) <= 2 * len(self._runs[-1]):
            last = self._runs.pop()
            merged = np.concatenate([self._runs.pop(), last])
            merged.sort(kind="stable")
            self._runs.append(merged)
