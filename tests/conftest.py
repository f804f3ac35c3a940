"""What every test needs: a quiet, offline, isolated environment.

- Ray: token auth off (Ray 2.60 enables it by default), no usage stats, and a per-session storage
  directory so no test writes into ~/ray_results.
- MLflow: a per-session sqlite store (the file store is rejected by MLflow 3.17).
- albumentations: no network call at import.
- Markers: `slow`, `e2e`, `gpu` (skipped with a reason when CUDA is absent).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "golden" / "nvfp4_golden.npz"


def pytest_configure(config):
    # One torch thread in the test process: on 2 shared cores, OpenMP's spinning threads make small
    # ops many times slower. (Ray trial workers size their own threads to the CPUs they get.)
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA; this machine has no GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="session", autouse=True)
def _isolated_stores(session_dir):
    """Per-session MLflow store and Ray storage, so no test writes into the checkout or $HOME."""
    old = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "SWEEP_STORAGE")}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{session_dir / 'mlflow.db'}"
    os.environ["SWEEP_STORAGE"] = str(session_dir / "ray_results")
    yield
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def load_golden(path: Path) -> dict:
    """Every array of a golden .npz file by name; fails the test when ../shared is missing."""
    import numpy as np

    if not path.exists():
        pytest.fail(f"golden vectors not found at {path}: ../shared must sit beside the checkout")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="session")
def golden():
    """The Transformer Engine reference outputs in ../shared/golden (see its README)."""
    return load_golden(GOLDEN)
