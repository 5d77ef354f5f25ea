"""`sources/seen.SeenIds` against Python's own set, over many batches with repeats
within a batch and across batches."""

from __future__ import annotations

import numpy as np

from pipeline.sources.seen import SeenIds


def test_first_sightings_match_a_set_over_many_batches() -> None:
    rng = np.random.default_rng(3)
    seen = SeenIds()
    reference: set[int] = set()
    for size in [1, 0, 5, 300, 64, 1000, 7, 4096, 2, 900] * 3:
        # Values from a small range: repeats within a batch and with earlier ones.
        batch = rng.integers(0, 20_000, size).astype(np.uint64)
        batch[: size // 3] |= np.uint64(1) << np.uint64(63)  # the top bit too
        expected = []
        for v in batch.tolist():
            expected.append(v not in reference)
            reference.add(v)
        assert seen.first_seen(batch).tolist() == expected
    assert len(seen) == len(reference)
