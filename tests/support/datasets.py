"""Synthetic kaggle_3m folders for the data tests: one written per test module, a fresh copy per
test (to damage, touch or delete files in)."""

from __future__ import annotations

import shutil
from pathlib import Path

from trainables.synth import write_synthetic


def written(folder: Path, **params: int) -> Path:
    """A synthetic dataset (trainables.synth.write_synthetic `params`) at `folder`/kaggle_3m."""
    root = folder / "kaggle_3m"
    write_synthetic(root, **params)
    return root


def fresh_copy(pristine: Path, folder: Path) -> Path:
    """A copy of `pristine` at `folder`/kaggle_3m; copy2 keeps the modification times (the cache's
    fingerprint reads them)."""
    return Path(shutil.copytree(pristine, folder / "kaggle_3m"))
