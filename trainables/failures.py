"""Why a trial failed, and whether trying again can help.

A trial fails for one of two kinds of reasons:

- **for good**: the same config fails the same way every time. A non-finite loss (training
  diverged: the run is deterministic, so a retry diverges again), an invalid config, a dataset
  that is missing or malformed, a checkpoint written for another config. Retrying wastes the
  epochs before the failure, and on a sweep with retries it hides the reason behind a later one.
- **transient**: anything else (a worker lost, out of memory, a filesystem hiccup). Ray Tune's
  FailureConfig retries these from the last checkpoint.

Ray Tune retries every failure alike (`FailureConfig(max_failures=N)` has no notion of kinds), so
the trainable marks a failure for good inside the trial's checkpoint (`failure.json`, reported to
Tune just before the error is raised): a retried attempt finds the mark in the checkpoint Tune
hands it and fails at once with the first reason, without loading data or training. The mark
travels with the checkpoint, so `sweep resume` does not retrain the trial either.

`NonFiniteLoss` is the one exception for a diverged run (the loop raises it, under its older
name `trainables.loop.NonFiniteLossError`, naming the epoch and step).
"""

from __future__ import annotations

import json
import logging
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

FAILURE_FILE = "failure.json"
FAILURE_TAGS = ("failure_reason", "failure_kind")  # on the MLflow run of a failed trial
FAILURE_ARTIFACT = "failure.txt"  # the traceback, beside it


class NonFiniteLoss(RuntimeError):
    """Training diverged: a loss became NaN or infinite. Never retried."""


class FailedForGood(RuntimeError):
    """A retried attempt of a trial whose earlier attempt failed for good: not run again."""


@dataclass(frozen=True)
class Failure:
    """One failure: `kind` (non_finite_loss, config_error, data_error, error), a one-line
    `reason` ("<exception type>: <first line of its message>"), whether a retry can help, and
    the full traceback."""

    kind: str
    reason: str
    retryable: bool
    traceback: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def classify(exc: BaseException) -> Failure:
    """The Failure of an exception raised by a trial."""
    kind, retryable = _kind(exc)
    text = "".join(traceback.format_exception(exc))
    return Failure(kind, one_line(exc), retryable, text)


def _kind(exc: BaseException) -> tuple[str, bool]:
    from trainables.checkpoint import CheckpointMismatch
    from trainables.config import ConfigError
    from trainables.lgg import DatasetError, SliceError

    if isinstance(exc, FailedForGood):
        return "error", False
    if isinstance(exc, NonFiniteLoss):
        return "non_finite_loss", False
    if isinstance(exc, ConfigError | CheckpointMismatch):
        return "config_error", False
    if isinstance(exc, DatasetError | SliceError):
        return "data_error", False
    return "error", True


def one_line(exc: BaseException, limit: int = 500) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:limit]


def record_failure(tracker, exc: BaseException) -> Failure:
    """Tag the trial's MLflow run with the failure and attach its traceback. Never raises:
    the trial's own error is what must surface."""
    failure = classify(exc)
    try:
        tracker.log_tags(dict(zip(FAILURE_TAGS, (failure.reason, failure.kind), strict=True)))
        tracker.log_text(failure.traceback, FAILURE_ARTIFACT)
    except Exception as err:  # a full disk must not hide why the trial failed
        logger.warning("could not record the failure in MLflow: %s", one_line(err))
    return failure


def mark_failed(directory: Path, failure: Failure) -> Path:
    """Write the failure mark into a checkpoint folder (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FAILURE_FILE
    path.write_text(json.dumps(failure.as_dict(), indent=1) + "\n")
    return path


def read_mark(directory: Path) -> Failure | None:
    """The failure mark of a checkpoint folder, if it has one."""
    path = Path(directory) / FAILURE_FILE
    if not path.is_file():
        return None
    return Failure(**json.loads(path.read_text()))
