from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data" / "samples"
FIXTURES = REPO / "data" / "fixtures"


@pytest.fixture
def samples() -> Path:
    return SAMPLES
