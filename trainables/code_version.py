"""The code version a run is pinned to: the package version, plus the git commit it runs from.

`code_version()` is a hashed field of every trial config (trainables.config): results may differ
across code versions, so a sweep's ledger refuses to mix them (sweep.ledger). `git_sha(where)` is
the commit of the checkout holding `where`, or None outside a git checkout.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path


@functools.cache
def code_version() -> str:
    """Package version, plus "+g<12 hex of the commit>" when the code runs from a git checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        base = version("nvfp4-sweep")
    except PackageNotFoundError:
        base = "0.0.0+unknown"
    sha = git_sha(Path(__file__).resolve().parent)
    return f"{base}+g{sha[:12]}" if sha else base


def git_sha(where: Path) -> str | None:
    """The full commit hash of the git checkout holding `where` (None: not in one, no git)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
