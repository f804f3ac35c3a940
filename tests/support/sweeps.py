"""The sweeps the end-to-end tests run through the `sweep` command: a tiny spec, its environment,
and the command itself in a subprocess.

The spec (`tiny_spec`): two tiny CNN trials (baseline and nvfp4, seed 1) of 3 epochs on a small
synthetic dataset at 32 px, one CPU each, two at a time, one retry; a test overrides what it
needs. The environment (`sweep_env`): the suite's (tests/conftest.py) with the sweep's storage
and data cache under the test's folder, and this checkout on PYTHONPATH, so that Ray's trial
workers can import the test callbacks a spec names (tests/support/hooks.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

SWEEP = [sys.executable, "-m", "sweep"]
REPO = Path(__file__).resolve().parents[2]


def tiny_spec(name: str, root: Path | None = None, **overrides: Any) -> dict:
    """The tiny sweep, its storage and sqlite MLflow store under `root` (if given); a mapping in
    `overrides` is merged into the section it names, anything else replaces it."""
    spec: dict[str, Any] = {
        "name": name,
        "data": {
            "synthetic": {"patients": 6, "size": 32, "seed": 0, "slices_per_patient": 6},
            "image_size": 32,
        },
        "grid": {"arch": ["cnn"], "scale": ["tiny"], "recipe": ["baseline", "nvfp4"], "seed": [1]},
        "protocol": {"epochs": 3, "batch_size": 8, "early_stop_warmup": 3},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
        "failure": {"max_retries": 1},
    }
    if root is not None:
        spec["storage"] = str(root / "storage")
        spec["tracking_uri"] = f"sqlite:///{root / 'mlflow.db'}"
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def write_spec(folder: Path, spec: dict) -> Path:
    """`spec` as `folder`/<name>.yaml."""
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def with_repo_on_path(env: dict[str, str]) -> dict[str, str]:
    """`env` with this checkout first on PYTHONPATH (the packages, and tests.support)."""
    paths = (str(REPO), env.get("PYTHONPATH"))
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def sweep_env(root: Path, cache: Path | None = None) -> dict[str, str]:
    """The `sweep` command's environment: storage in `root`/storage, the data cache in `cache`
    (default `root`/cache), Ray's token auth off (as the suite's), unbuffered output."""
    env = dict(
        os.environ,
        RAY_AUTH_MODE="disabled",
        NO_ALBUMENTATIONS_UPDATE="1",
        PYTHONUNBUFFERED="1",
        SWEEP_STORAGE=str(root / "storage"),
        SWEEP_DATA_CACHE=str(cache or root / "cache"),
    )
    return with_repo_on_path(env)


def sweep_cli(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """`sweep ARGS` to the end, its output captured as text."""
    return subprocess.run(
        [*SWEEP, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def start_sweep(spec: Path, env: dict[str, str], cwd: Path, **popen: Any) -> subprocess.Popen:
    """`sweep run SPEC` in the background, in a session of its own: the test signals its
    process group (the embedded Ray's processes included) as a terminal or a lost machine would."""
    return subprocess.Popen(
        [*SWEEP, "run", str(spec)], env=env, cwd=cwd, start_new_session=True, **popen
    )
