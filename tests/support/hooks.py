"""Failure injection for the restore tests: loop callbacks a trial config names by import path
(trainables.callbacks), so the product's config carries no test switch.

    config.replace(callbacks=[fail_at_epoch(3)])                # a TrialConfig
    spec["protocol"]["callbacks"] = [slow_epochs(1.0)]          # a sweep spec, for every trial

Ray trial workers import this module: the tests that run trials in other processes put the
repository root on their PYTHONPATH (tests/support/sweeps.py `sweep_env`; the cluster's nodes
in tests/cluster/services.py). Neither callback changes a result: the field is not hashed.
"""

from __future__ import annotations

import time
from typing import Any

from trainables.callbacks import Callback

MODULE = __name__


class InjectedFailure(RuntimeError):
    """Raised by FailAtEpoch."""


class FailAtEpoch(Callback):
    """Raise InjectedFailure at the start of epoch `epoch` (1-based, >= 2), unless this attempt
    resumed at or after it: a retried trial restores from the epoch before's checkpoint and goes
    on. (A fresh callback is built per attempt: the first epoch it sees is the attempt's first.)"""

    def __init__(self, epoch: int) -> None:
        if epoch < 2:
            raise ValueError(f"epoch must be >= 2 (a checkpoint to restore from), got {epoch}")
        self.epoch = epoch
        self.first_epoch: int | None = None

    def on_epoch_start(self, epoch: int, run) -> None:
        if self.first_epoch is None:
            self.first_epoch = epoch
        if epoch == self.epoch and self.first_epoch < epoch:
            raise InjectedFailure(f"injected failure at the start of epoch {epoch}")


class SlowEpochs(Callback):
    """Sleep `seconds` at the start of every epoch, so that a test's signal lands mid-trial even
    on a tiny model."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_epoch_start(self, epoch: int, run) -> None:
        time.sleep(self.seconds)


def fail_at_epoch(epoch: int) -> dict[str, Any]:
    """The config entry (trainables.config.CallbackRef) of a FailAtEpoch."""
    return {"path": f"{MODULE}:FailAtEpoch", "args": {"epoch": epoch}}


def slow_epochs(seconds: float) -> dict[str, Any]:
    """The config entry of a SlowEpochs."""
    return {"path": f"{MODULE}:SlowEpochs", "args": {"seconds": seconds}}
