"""A trial's scratch folder on the node, which a hard kill cannot leave behind for good.

A trial works in a folder of its own (the restored checkpoint, the checkpoint it writes each
epoch, the MLflow journal, artifacts: 60-120 MB for a 4m model). It removes the folder when it
ends, but a SIGKILL, an OOM kill or a preempted worker never runs that code. So every scratch
folder sits under one root per node and holds a lock file that its process keeps locked
(`fcntl.flock`) for as long as it lives; the kernel drops the lock when the process dies, however
it dies. Each trial that starts on the node first removes every folder whose lock it can take:
their owners are gone. (A lock, not a PID: PIDs are reused, and containers sharing a /tmp see
different PIDs.)

The root is $SWEEP_SCRATCH_DIR, else `<system temp>/nvfp4-sweep-scratch`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_FILE = ".owner.lock"


def scratch_root() -> Path:
    root = (
        os.environ.get("SWEEP_SCRATCH_DIR") or Path(tempfile.gettempdir()) / "nvfp4-sweep-scratch"
    )
    return Path(root)


def remove_orphans(root: Path) -> list[Path]:
    """Remove the scratch folders under `root` whose owner process is gone; returns them."""
    removed = []
    for folder in sorted(root.glob("*")) if root.is_dir() else ():
        lock = folder / LOCK_FILE
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            continue  # being created right now (the lock comes first), or not ours
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its owner is alive
        else:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            os.close(fd)
    if removed:
        logger.warning(
            "removed %d scratch folder(s) left by killed trials: %s",
            len(removed),
            ", ".join(str(p) for p in removed),
        )
    return removed


@contextmanager
def scratch_dir(prefix: str, root: Path | None = None) -> Iterator[Path]:
    """A fresh folder under the scratch root, locked while the block runs and removed after it;
    orphans of killed trials are removed first."""
    root = Path(root) if root is not None else scratch_root()
    root.mkdir(parents=True, exist_ok=True)
    remove_orphans(root)
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=root))
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)
