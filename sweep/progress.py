"""Driver-side Ray Tune callbacks: the ledger, and progress that fits a terminal.

Both are pickled with the experiment (Tuner.restore brings them back), so they hold only the
storage handle and counters, and re-read the ledger before every write instead of keeping a copy
that a later driver would overwrite. A trial is read as its TrialConfig (`TrialConfig.from_tune`).
"""

from __future__ import annotations

import math
import sys
import time

from ray.tune import Callback

from sweep.ledger import FAILED, FINISHED, Ledger
from sweep.storage import SweepStore
from trainables.config import TrialConfig

# Numbers a trial reports that belong in the ledger (the rest stays in Ray's result files).
_LEDGER_METRICS = ("epoch", "test_auprc", "val_auprc", "best_epoch", "val_loss")


def failure_reason(trial) -> tuple[str, str]:
    """(one-line reason, kind) of a failed trial: what the trial reported when it failed for good
    (trainables.failures), else the last line of the error Ray recorded."""
    result = trial.last_result or {}
    if result.get("failure_reason"):
        return str(result["failure_reason"]), str(result.get("failure_kind") or "error")
    text = ""
    try:
        with open(trial.error_file, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except (OSError, TypeError):  # no error file (TypeError: error_file is None)
        pass
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1][:500] if lines else "error (no message recorded)"), "error"


class LedgerCallback(Callback):
    """Record every trial in the ledger the moment it ends (finished or failed for good)."""

    def __init__(self, store: SweepStore):
        self.store = store

    def _record(self, trial, state: str, **extra) -> None:
        config = TrialConfig.from_tune(trial.config)
        if config.sample_suffix:  # an Optuna sample: the runner records its study as a whole
            return
        result = trial.last_result or {}
        metrics = {k: result[k] for k in _LEDGER_METRICS if isinstance(result.get(k), int | float)}
        ledger = Ledger.load(self.store)
        ledger.record_trial(config, state, metrics=metrics, **extra)
        ledger.save()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._record(trial, FINISHED)

    def on_trial_error(self, iteration, trials, trial, **info):
        # Called once retries are exhausted (or at once for a failure a retry cannot fix); a
        # later `sweep run` resumes it from its checkpoint.
        reason, kind = failure_reason(trial)
        self._record(trial, FAILED, error=reason, failure_kind=kind)


class ProgressCallback(Callback):
    """One status line every `every` seconds and one per trial that ends; never per epoch.

    A trial waiting for resources longer than `pending_after` seconds gets a line saying what it
    asks for and what the cluster has free (at most one such line every `every` seconds).
    """

    def __init__(self, total: int, every: float = 15.0, out=None, pending_after: float = 300.0):
        self.total, self.every = total, every
        self.out = out
        self.pending_after = pending_after
        self._last = self._last_pending = 0.0
        self._done = self._failed = 0
        self._start = time.monotonic()
        self._pending_since: dict[str, float] = {}

    def on_step_begin(self, iteration, trials, **info):
        now = time.monotonic()
        since = self.__dict__.setdefault("_pending_since", {})  # absent in older pickles
        pending = [t for t in trials if t.status == "PENDING"]
        for t in pending:
            since.setdefault(t.trial_id, now)
        for trial_id in set(since) - {t.trial_id for t in pending}:
            del since[trial_id]
        waited = [t for t in pending if now - since[t.trial_id] >= self.pending_after]
        if waited and now - getattr(self, "_last_pending", 0.0) >= self.every:
            line = _pending_line(waited, now - since[waited[0].trial_id])
            if line:
                self._last_pending = now
                self._print(line)

    def _print(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.out or sys.stdout, flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        running = [t for t in trials if t.status == "RUNNING"]
        parts = [
            f"{self._done}/{self.total} done",
            f"{len(running)} running",
            f"{self._failed} failed",
        ]
        config = TrialConfig.from_tune(trial.config)
        metric = result.get("val_auprc")
        detail = f"{config.trial_key} epoch {result.get('epoch')}/{config.epochs}"
        if isinstance(metric, float) and not math.isnan(metric):
            detail += f" val_auprc={metric:.3f}"
        self._print(" | ".join(parts) + f" | {detail}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._done += 1
        result = trial.last_result or {}
        score = result.get("test_auprc")
        score_text = f" test_auprc={score:.4f}" if isinstance(score, float) else ""
        key = TrialConfig.from_tune(trial.config).trial_key
        self._print(f"finished {key}{score_text} ({self._done}/{self.total})")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._failed += 1
        key = TrialConfig.from_tune(trial.config).trial_key
        self._print(f"FAILED {key}: {failure_reason(trial)[0]}")


def _pending_line(waiting: list, waited_s: float) -> str | None:
    """Why trials wait: what each asks against what is free; None while it is free (the trial
    is being placed, not waiting for resources)."""
    import ray

    asked = waiting[0].placement_group_factory.required_resources
    free = ray.available_resources()
    if all(free.get(k, 0) >= v for k, v in asked.items()):
        return None
    total = ray.cluster_resources()
    ask = ", ".join(f"{v:g} {k}" for k, v in sorted(asked.items()) if v)
    have = ", ".join(
        f"{free.get(k, 0):g}/{total.get(k, 0):g} {k}" for k in sorted(asked) if asked[k]
    )
    return (
        f"{len(waiting)} trial(s) pending for {waited_s:.0f}s: each asks {ask}; "
        f"free/total now: {have} (trials run as resources free up)"
    )


class StopCallback(Callback):
    """Hands a Ctrl-C/SIGTERM recorded by `sweep.stopping` to Tune's own graceful stop, and
    tells the orphan guard (`sweep.guard`) about the trial workers Ray has started."""

    def on_step_begin(self, iteration, trials, **info):
        from sweep.guard import watch_descendants
        from sweep.stopping import hand_to_tune

        hand_to_tune()
        watch_descendants()
