"""Driver-side word of a tracking outage: once when it starts, once when it ends.

Trials run in Ray workers whose logs do not reach the driver's console, and each trial's tracker
journals through an outage on its own. Every epoch a trial reports how many MLflow records it
holds undelivered (`tracking_pending`); this callback turns those numbers into one line when the
first trial starts buffering, one when every trial has delivered again, and one per trial that
ended with records left (kept in the sweep's storage for `sweep sync`). Never one per record.
"""

from __future__ import annotations

import sys
import time

from ray.tune import Callback


class TrackingOutageCallback(Callback):
    def __init__(self, tracking_uri: str, outbox: str, out=None):
        self.tracking_uri, self.outbox, self.out = tracking_uri, outbox, out
        self.pending: dict[str, int] = {}  # trial name -> records it holds undelivered
        self.down = False

    def _print(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.out or sys.stdout, flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "tracking_pending" in result:
            self._update(_key(trial), int(result["tracking_pending"]))

    def on_trial_complete(self, iteration, trials, trial, **info):
        key, left = _key(trial), int((trial.last_result or {}).get("tracking_pending", 0))
        if left:
            self._print(
                f"{key}: {left} MLflow records not delivered when it ended; kept in "
                f"{self.outbox}/{key} (`sweep sync NAME` delivers them)"
            )
        self.pending.pop(key, None)
        self._update(None, 0)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.on_trial_complete(iteration, trials, trial, **info)

    def _update(self, key: str | None, pending: int) -> None:
        if key is not None:
            self.pending[key] = pending
        buffering = sorted(k for k, n in self.pending.items() if n)
        if buffering and not self.down:
            self.down = True
            self._print(
                f"MLflow at {self.tracking_uri} is unreachable ({buffering[0]} holds "
                f"{self.pending[buffering[0]]} records); training goes on, records are kept "
                "and delivered when it is back"
            )
        elif not buffering and self.down and key is not None:
            self.down = False
            self._print(f"MLflow at {self.tracking_uri} is reachable again; records delivered")


def _key(trial) -> str:
    return str(trial)  # the trial's name: its trial key (an Optuna sample's own key)
