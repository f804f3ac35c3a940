"""`sweep status NAME`: where every trial of a sweep stands, read from its storage alone.

Sources: the ledger (trials that ended) and Ray Tune's per-trial `result.json` (one JSON line per
epoch reported) in the sweep's experiments. No Ray cluster is needed, so status works while the
sweep runs, after it was interrupted, and from another machine that sees the storage.

States: FINISHED and FAILED (from the ledger; a trial that ended under settings that differ
from the spec's now, e.g. another code version, is flagged with the fields that changed),
RUNNING (epochs reported, and the driver holds the sweep's lock: checked by PID on the driver's
host, elsewhere by the lock's heartbeat), INTERRUPTED (epochs reported,
driver gone: resume it with `sweep resume NAME`), PENDING (nothing reported yet).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from sweep.ledger import Ledger
from sweep.lock import holder
from sweep.plan import expand
from sweep.spec import stored_spec
from sweep.storage import SweepStore
from sweep.sync import grid_key, outbox_for
from trainables.config import config_diff


@dataclass
class TrialStatus:
    key: str
    state: str
    epoch: int | None = None
    epochs: int | None = None
    metrics: dict | None = None
    eta_s: float | None = None
    changed: list[str] | None = None  # settings changed since the trial ended
    error: str | None = None  # why it failed (FAILED only)
    tracking_pending: int = 0  # MLflow records kept in the sweep's storage (sweep.sync)


def _last_result(store: SweepStore, experiment: str, key: str) -> dict | None:
    path = store.trial_result(experiment, key)
    info = store.fs.get_file_info(path)
    if info.size in (None, 0):
        return None
    with store.fs.open_input_stream(path) as f:
        lines = [line for line in f.read().decode().splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None


def driver_alive(store: SweepStore) -> bool:
    """Is another driver running the sweep? Read from its lock (by PID on the driver's host, by
    the lock's heartbeat elsewhere), without taking the lock. The driver asking about its own
    sweep gets False: it asks between its fits, when none of its trials runs."""
    import os
    import socket

    record = holder(store)
    if record is None:
        return False
    return (record.host, record.pid) != (socket.gethostname(), os.getpid())


def sweep_status(store: SweepStore) -> list[TrialStatus]:
    spec = stored_spec(store)
    ledger = Ledger.load(store)
    experiments = store.experiments()
    rows = []
    running = driver_alive(store)
    for trial in expand(spec).trials:
        key, epochs = trial.key, trial.config.epochs
        entry = ledger.entries.get(key)
        if entry and entry.state in ("FINISHED", "FAILED"):
            changed = None
            if entry.config_hash != trial.config.config_hash:
                changed = list(config_diff(entry.config, trial.config.to_dict()))
            epoch = entry.metrics.get("epoch")
            metrics = entry.metrics
            error = entry.error if entry.state == "FAILED" else None
            rows.append(
                TrialStatus(key, entry.state, epoch, epochs, metrics, changed=changed, error=error)
            )
            continue
        row = TrialStatus(key, "PENDING", epochs=epochs)
        for experiment in reversed(experiments):
            result = _last_result(store, experiment, key)
            if result is None:
                continue
            complete = store.is_complete(experiment)
            row.state = "RUNNING" if running and not complete else "INTERRUPTED"
            row.epoch = result.get("epoch")
            row.metrics = {
                k: v for k, v in result.items() if k in ("train_loss", "val_loss", "val_auprc")
            }
            per_epoch = result.get("time_total_s", 0) / max(row.epoch or 1, 1)
            row.eta_s = (
                per_epoch * max(epochs - (row.epoch or 0), 0) if row.state == "RUNNING" else None
            )
            break
        rows.append(row)
    return _with_tracking_pending(store, rows)


def _with_tracking_pending(store: SweepStore, rows: list[TrialStatus]) -> list[TrialStatus]:
    kept = Counter()
    for entry in outbox_for(store).entries():
        kept[grid_key(entry["trial_key"])] += entry["pending"]
    for row in rows:
        row.tracking_pending = kept[row.key]
    return rows


def format_status(name: str, rows: list[TrialStatus]) -> str:
    counts = Counter(r.state for r in rows)
    head = f"sweep {name}: " + ", ".join(
        f"{counts[s]} {s.lower()}"
        for s in ("FINISHED", "RUNNING", "INTERRUPTED", "FAILED", "PENDING")
        if counts[s]
    )
    lines = [
        head,
        f"{'trial':44} {'state':12} {'epoch':>7} {'val_loss':>9} {'val_auprc':>9} {'eta':>7}",
    ]
    for r in rows:
        m = r.metrics or {}
        epoch = f"{r.epoch}/{r.epochs}" if r.epoch is not None else f"-/{r.epochs}"
        state = f"{r.state}*" if r.changed else r.state
        lines.append(
            f"{r.key:44} {state:12} {epoch:>7} {_fmt(m.get('val_loss')):>9} "
            f"{_fmt(m.get('val_auprc')):>9} {_eta(r.eta_s):>7}"
        )
    lines += [f"  {r.key} failed: {r.error}" for r in rows if r.state == "FAILED" and r.error]
    changed = sorted({name for r in rows for name in r.changed or ()})
    if changed:
        lines.append(
            f"* ended under other settings than the spec's now (changed: {', '.join(changed)}); "
            "`sweep run` refuses to mix them with new results"
        )
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 60:.0f}m" if seconds >= 60 else f"{seconds:.0f}s"
