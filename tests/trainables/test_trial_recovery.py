"""What a trial leaves behind when things go wrong, without Ray (fast):

- a corrupt newest checkpoint falls back to the newest intact one, with a warning naming both;
- scratch folders of processes killed hard (SIGKILL) are removed by the next trial, live ones kept;
- failures are classified: a retry cannot fix a non-finite loss, a config or a data error;
- a failure is recorded on the MLflow run (tags and the traceback) and cleared by a later success;
- the tracking outbox keeps undelivered records in a storage folder, versioned, newest wins.

The Ray and HTTP-server versions of these are in test_trial_failures_ray.py and
tests/sweep/test_tracking_outage.py.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from trainables.checkpoint import (
    STATE_FILE,
    CorruptCheckpoint,
    load_checkpoint,
    restore_newest_intact,
    save_checkpoint,
)
from trainables.config import ConfigError, TrialConfig
from trainables.failures import (
    FAILURE_ARTIFACT,
    FailedForGood,
    NonFiniteLoss,
    classify,
    mark_failed,
    read_mark,
    record_failure,
)
from trainables.journal import pending_records
from trainables.lgg import DatasetError
from trainables.loop import NonFiniteLossError
from trainables.outbox import Outbox
from trainables.scratch import LOCK_FILE, remove_orphans, scratch_dir
from trainables.tracking import TrialTracker


def config(**changes) -> TrialConfig:
    fields = {"arch": "cnn", "scale": "tiny", "recipe": "baseline", "seed": 1, "synthetic": {}}
    return TrialConfig.from_fields({**fields, **changes})


# --------------------------------------------------------------------------- checkpoints


def tune_like_checkpoints(root: Path, epochs: int) -> list[Path]:
    """checkpoint_000000 .. as Ray Tune lays them out, one epoch each."""
    folders = []
    for epoch in range(1, epochs + 1):
        folder = root / f"checkpoint_{epoch - 1:06d}"
        save_checkpoint(folder, {"epoch": epoch, "tracking": {"run_id": "r"}}, config())
        folders.append(folder)
    return folders


def copier(folder: Path):
    def fetch(target: Path) -> None:
        for item in folder.iterdir():
            (target / item.name).write_bytes(item.read_bytes())

    return fetch


def test_a_truncated_newest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, caplog):
    folders = tune_like_checkpoints(tmp_path / "trial", 3)
    state = folders[2] / STATE_FILE
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # an upload cut short
    candidates = [(str(f), copier(f)) for f in reversed(folders)]
    with caplog.at_level(logging.WARNING, logger="trainables.checkpoint"):
        restored = restore_newest_intact(candidates, tmp_path / "work")
    assert restored == str(folders[1])
    assert load_checkpoint(tmp_path / "work")["epoch"] == 2
    (warning,) = [r.getMessage() for r in caplog.records]
    assert str(folders[2] / STATE_FILE) in warning and str(folders[1]) in warning
    assert str(tmp_path / "work") not in warning  # names the checkpoints, not the local copy


def test_no_intact_checkpoint_raises_naming_the_newest_file(tmp_path):
    folders = tune_like_checkpoints(tmp_path / "trial", 2)
    for folder in folders:
        (folder / STATE_FILE).write_bytes(b"PK\x03\x04 not a zip any more")
    candidates = [(str(f), copier(f)) for f in reversed(folders)]
    with pytest.raises(CorruptCheckpoint, match=str(folders[1] / STATE_FILE)):
        restore_newest_intact(candidates, tmp_path / "work")
    with pytest.raises(CorruptCheckpoint, match=str(folders[0] / STATE_FILE)):
        load_checkpoint(folders[0])  # loading directly names the file too


def test_a_checkpoint_holding_only_a_failure_mark_is_intact(tmp_path):
    mark_failed(tmp_path / "only_mark", classify(NonFiniteLoss("loss nan at epoch 1")))
    name = restore_newest_intact([("m", copier(tmp_path / "only_mark"))], tmp_path / "work")
    assert name == "m" and read_mark(tmp_path / "work").kind == "non_finite_loss"


# --------------------------------------------------------------------------- scratch folders

HOLD_SCRATCH = """
import sys, time
from pathlib import Path
from trainables.scratch import scratch_dir
with scratch_dir("cnn-tiny-baseline-s1-holdout", Path(sys.argv[1])) as folder:
    (folder / "big.bin").write_bytes(b"x" * 1_000_000)
    print(folder, flush=True)
    time.sleep(600)
"""


def test_scratch_of_a_sigkilled_trial_is_removed_by_the_next_one(tmp_path):
    root = tmp_path / "scratch"
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    holders = [
        subprocess.Popen(
            [sys.executable, "-c", HOLD_SCRATCH, str(root)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    try:
        killed, alive = (Path(p.stdout.readline().strip()) for p in holders)
        assert killed.is_dir() and alive.is_dir()
        holders[0].send_signal(signal.SIGKILL)  # no `finally` runs
        holders[0].wait(timeout=30)
        assert killed.is_dir()  # left behind, as mkdtemp left it before
        with scratch_dir("next-trial", root) as mine:
            assert not killed.exists()  # the next trial removed the orphan first
            assert alive.is_dir() and (alive / LOCK_FILE).is_file()  # a live one is kept
            assert mine.parent == root
        assert not mine.exists()
        assert remove_orphans(root) == []  # the live holder still owns its folder
    finally:
        for p in holders:
            p.kill()
            p.wait(timeout=30)
    assert remove_orphans(root) == [alive]  # once its owner is gone, it goes too
    assert list(root.iterdir()) == []


# --------------------------------------------------------------------------- failures


def test_failures_a_retry_cannot_fix_are_classified_as_such(tmp_path):
    try:
        config(lr=0)
    except ConfigError as exc:
        config_error = exc
    cases = {
        "non_finite_loss": NonFiniteLossError("cnn: training loss nan at epoch 3, step 2"),
        "config_error": config_error,
        "data_error": DatasetError(tmp_path, []),
    }
    for kind, exc in cases.items():
        failure = classify(exc)
        assert (failure.kind, failure.retryable) == (kind, False), exc
        assert failure.reason.startswith(type(exc).__name__)
    assert NonFiniteLossError is NonFiniteLoss  # one exception class under both names
    assert classify(RuntimeError("worker lost")).retryable
    assert not classify(FailedForGood("x")).retryable

    try:
        raise cases["non_finite_loss"]
    except NonFiniteLoss as exc:
        mark_failed(tmp_path, classify(exc))
    mark = read_mark(tmp_path)
    assert mark.reason == "NonFiniteLoss: cnn: training loss nan at epoch 3, step 2"
    assert "Traceback" in mark.traceback and not mark.retryable


def test_a_failure_is_tagged_on_the_run_and_cleared_by_a_later_success(tmp_path):
    uri = os.environ["MLFLOW_TRACKING_URI"]

    def tracker() -> TrialTracker:
        t = TrialTracker(
            tracking_uri=uri,
            experiment="failure-tags",
            trial_key="cnn-tiny-baseline-s1-holdout",
            tags={"sweep": "failure-tags"},
            params={},
            buffer_dir=tmp_path / "journal",
        )
        t.start()
        return t

    first = tracker()
    try:
        raise NonFiniteLoss("training loss nan at epoch 2, step 0")
    except NonFiniteLoss as exc:
        failure = record_failure(first, exc)
    first.finish("FAILED")
    client = MlflowClient(uri)
    run = client.get_run(first.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == failure.reason
    assert run.data.tags["failure_kind"] == "non_finite_loss"
    text = Path(client.download_artifacts(first.run_id, FAILURE_ARTIFACT, str(tmp_path)))
    assert "Traceback" in text.read_text() and "epoch 2, step 0" in text.read_text()

    second = tracker()  # the retried trial, same run
    second.log_tags({}, delete=("failure_reason", "failure_kind"))
    second.finish("FINISHED")
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and "failure_reason" not in run.data.tags


# --------------------------------------------------------------------------- the outbox


def journal_with_pending(tmp_path: Path, name: str) -> Path:
    """A trial journal whose records could not be delivered (nothing listens on the port)."""
    tracker = TrialTracker(
        tracking_uri="http://127.0.0.1:9",  # discard port: connection refused at once
        experiment="outbox",
        trial_key="cnn-tiny-baseline-s1-holdout",
        tags={},
        params={"lr": 0.001},
        buffer_dir=tmp_path / name,
        finish_timeout_s=0.0,
        retry_after_s=0.0,
    )
    tracker.start()
    tracker.log_epoch(1, {"loss": 0.5})
    tracker.log_text("hello", "notes/hello.txt")
    assert not tracker.finish().ok
    return tmp_path / name


def test_the_outbox_keeps_the_newest_complete_version(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    journal = journal_with_pending(tmp_path, "journal")
    outbox = Outbox.at(str(tmp_path / "storage" / "tracking_outbox"))
    assert outbox.entries() == []
    where = outbox.keep(journal, "cnn-tiny-baseline-s1-holdout", "http://127.0.0.1:9")
    (entry,) = outbox.entries()
    assert where.endswith("tracking_outbox/cnn-tiny-baseline-s1-holdout")
    assert entry["pending"] == pending_records(journal) == 5  # open, params, epoch, text, status
    kept = Path(entry["path"])
    assert (kept / "mlflow_journal.jsonl").is_file() and (kept / "mlflow_blobs").is_dir()

    # A newer version that never got its entry.json (a copy cut short) is not read ...
    torn = kept.parent / "v999999999"
    torn.mkdir()
    (torn / "mlflow_journal.jsonl").write_text('{"seq": 1, "kind": "op')
    assert outbox.entries()[0]["path"] == str(kept)
    # ... and delivery that fails (still unreachable) leaves the entry as it was.
    report = outbox.deliver(entry)
    assert report.pending == 5 and report.delivered == 0
    assert json.loads((kept / "entry.json").read_text())["pending"] == 5
    outbox.discard("cnn-tiny-baseline-s1-holdout")
    assert outbox.entries() == []
