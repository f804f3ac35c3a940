"""The tiny trial the loop, trainable and tracking tests train: a CNN at scale `tiny` on a small
synthetic dataset at 32 px, a few seconds an epoch on one CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainables.config import TrialConfig

#: 10 patients of 4 slices: enough for a holdout split with positives in every part.
TINY_DATA = {"patients": 10, "size": 32, "seed": 0, "slices_per_patient": 4}


def tiny_config(cache_dir: str | Path | None, **changes: Any) -> TrialConfig:
    """The tiny trial (baseline recipe, seed 2026, one epoch, batch 8), with `changes`; its
    cache in `cache_dir` (None: the node's cache root, trainables.cache)."""
    fields = {
        "arch": "cnn",
        "scale": "tiny",
        "recipe": "baseline",
        "seed": 2026,
        "synthetic": TINY_DATA,
        "image_size": 32,
        "epochs": 1,
        "batch_size": 8,
        "cache_dir": None if cache_dir is None else str(cache_dir),
        **changes,
    }
    return TrialConfig.from_fields(fields)
