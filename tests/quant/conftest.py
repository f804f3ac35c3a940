"""Fixtures of the quant tests: TE 2.20's 4over6 / row-scaled golden vectors."""

from __future__ import annotations

import pytest

from tests.conftest import SHARED

GOLDEN_4OVER6 = SHARED / "golden" / "nvfp4_4over6_golden.npz"


@pytest.fixture(scope="session")
def golden_4over6():
    """TE 2.20.2's reference outputs for 4over6 and row-scaled NVFP4 (golden/README_4over6.md)."""
    import numpy as np

    if not GOLDEN_4OVER6.exists():
        pytest.fail(f"golden vectors not found at {GOLDEN_4OVER6}: ../shared must sit beside")
    with np.load(GOLDEN_4OVER6) as data:
        return {key: data[key] for key in data.files}
