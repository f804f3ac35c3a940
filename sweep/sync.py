"""`sweep sync NAME`: deliver the MLflow records a sweep's trials kept in its storage.

A trial that ends while MLflow is unreachable for longer than its finish window keeps what it
could not deliver in `<storage>/<name>/tracking_outbox/` (trainables.outbox). `sweep run`,
`sweep resume` and `sweep status` deliver it as well, before anything else; `sweep sync` does
only that, and exits 1 while records are still pending (MLflow still unreachable).

A trial that may still be running (its driver is alive and the ledger does not say it
finished) is left alone: its own tracker, or its restart, delivers its records, and two
deliverers racing on one run is the one way a metric could be logged twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sweep.storage import SweepStore

PARENT_KEY = "_sweep_parent"  # the outbox entry of the parent run's status
# Where delivering a journal logs from: the courier and the store helpers it calls.
TRACKING_LOGGERS = ("trainables.journal", "trainables.mlflow_store")


@dataclass
class SyncResult:
    delivered: int = 0  # records delivered now
    pending: int = 0  # records still kept in the outbox
    trials: list[str] = field(default_factory=list)  # entries still kept (trial keys, parent)
    where: str = ""  # the outbox
    error: str | None = None  # why delivery stopped (MLflow unreachable)

    def summary(self, name: str) -> str | None:
        """One line for the console, or None when there was nothing to deliver."""
        if self.pending:
            reason = f" ({self.error})" if self.error else ""
            return (
                f"tracking: {self.pending} MLflow records of {len(self.trials)} run(s) pending "
                f"in {self.where}{reason}; `sweep sync {name}` delivers them"
            )
        if self.delivered:
            return f"tracking: delivered {self.delivered} MLflow records kept in {self.where}"
        return None


def outbox_for(store: SweepStore):
    from trainables.outbox import OUTBOX_DIR, Outbox

    return Outbox(store.fs, store.path(OUTBOX_DIR), f"{store.storage_uri}/{OUTBOX_DIR}")


def outbox_uri(store: SweepStore) -> str:
    """Where the sweep's trials keep undelivered records (their TrialConfig's tracking section
    carries it)."""
    return outbox_for(store).uri


def pending(store: SweepStore) -> SyncResult:
    """What the outbox holds, without delivering anything."""
    outbox = outbox_for(store)
    result = SyncResult(where=outbox.uri)
    for entry in outbox.entries():
        result.pending += entry["pending"]
        result.trials.append(entry["trial_key"])
    return result


def sync_outbox(
    store: SweepStore, *, deliverable: Callable[[str], bool] | None = None, timeout_s: float = 0.0
) -> SyncResult:
    """Deliver every entry `deliverable(trial_key)` allows (default: those not running); stop at
    the first that cannot be delivered (MLflow unreachable) and count the rest as pending."""
    if deliverable is None:
        deliverable = not_running(store)
    outbox = outbox_for(store)
    result = SyncResult(where=outbox.uri)
    for entry in outbox.entries():
        key = entry["trial_key"]
        if result.error is None and deliverable(key):
            with _quiet_tracking_logs(), short_http_retries():
                report = outbox.deliver(entry, timeout_s=timeout_s)
            result.delivered += report.delivered
            if report.pending:
                result.error = f"MLflow at {entry['tracking_uri']} unreachable"
                entry = entry | {"pending": report.pending}
            else:
                continue
        result.pending += entry["pending"]
        result.trials.append(key)
    return result


def not_running(store: SweepStore) -> Callable[[str], bool]:
    """Trials that cannot be running: any when no driver is alive, else those FINISHED in the
    ledger (a FAILED one may be running again: `sweep resume` restarts it)."""
    from sweep.ledger import Ledger
    from sweep.status import driver_alive

    if driver_alive(store) is False:
        return lambda key: True
    ended = {k for k, e in Ledger.load(store).entries.items() if e.state == "FINISHED"}
    # The parent's status waits for the running driver, which sets it anyway.
    return lambda key: key != PARENT_KEY and grid_key(key) in ended


def grid_key(key: str) -> str:
    # An Optuna sample's key is `<grid key>-<8 hex>`; the ledger records grid keys.
    return "-".join(key.split("-")[:5])


def keep_parent_status(store: SweepStore, tracking_uri: str, run_id: str, status: str) -> str:
    """Keep the parent run's terminal status in the outbox when MLflow cannot take it now."""
    import tempfile
    from pathlib import Path

    from trainables.journal import Journal

    with tempfile.TemporaryDirectory(prefix="outbox-") as tmp:
        journal = Journal(Path(tmp))
        journal.set_run(run_id)
        journal.append("status", status=status)
        return outbox_for(store).keep(Path(tmp), PARENT_KEY, tracking_uri)


@contextlib.contextmanager
def short_http_retries() -> Iterator[None]:
    """One quick attempt per MLflow request in this block (as trial trackers do), unless the
    environment sets otherwise: MLflow's own 7 retries would stall the driver for minutes."""
    from trainables.mlflow_store import SHORT_HTTP_SETTINGS

    added = {k: v for k, v in SHORT_HTTP_SETTINGS.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@contextlib.contextmanager
def _quiet_tracking_logs() -> Iterator[None]:
    # The courier's outage warning names the temporary copy being delivered; the caller reports
    # the outage once, naming the outbox.
    logs = [logging.getLogger(name) for name in TRACKING_LOGGERS]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(logs, levels, strict=True):
            log.setLevel(level)


def main(args) -> int:
    """`sweep sync NAME`: 0 when nothing is left pending, 1 when MLflow is still unreachable."""
    from sweep.spec import resolve_storage

    root = resolve_storage(args.storage)
    store = SweepStore.open(root, args.name)
    if not store.exists(store.SPEC_FILE):
        print(f"error: no sweep named {args.name!r} in storage {root!r}", file=sys.stderr)
        return 2
    result = sync_outbox(store, timeout_s=args.timeout)
    print(result.summary(args.name) or f"tracking: nothing pending in {result.where}")
    return 1 if result.pending else 0
