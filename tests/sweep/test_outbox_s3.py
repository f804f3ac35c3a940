"""The tracking outbox on an s3:// sweep storage: a real S3 server (moto's, on 127.0.0.1, started
and stopped by PID), records kept there by a trial, seen by `sweep status`, delivered by `sweep
sync` to a real MLflow store, and the outbox left empty."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from tests.support.ports import free_port
from tests.trainables.test_trial_recovery import journal_with_pending
from trainables.outbox import Outbox

KEY = "cnn-tiny-baseline-s1-holdout"


@pytest.fixture
def s3(monkeypatch):
    """An S3 endpoint with an empty bucket `sweeps`; credentials are moto's dummies."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    url = f"http://127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", url.rsplit(":", 1)[1]]
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "no S3 server"
                time.sleep(0.2)
        import pyarrow.fs as pafs

        pafs.S3FileSystem(endpoint_override=url, allow_bucket_creation=True).create_dir("sweeps")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_records_kept_on_s3_are_seen_and_delivered_once(s3, tmp_path, monkeypatch):
    from sweep.storage import SweepStore
    from sweep.sync import outbox_uri, pending, sync_outbox

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    store = SweepStore.open("s3://sweeps/studies", "on-s3", s3)
    uri = outbox_uri(store)
    assert uri == "s3://sweeps/studies/on-s3/tracking_outbox"
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    # The trial's side: its tracker could not deliver; its journal goes to the sweep's storage.
    journal = journal_with_pending(tmp_path, "journal")
    where = Outbox.at(uri, s3).keep(journal, KEY, tracking_uri)
    assert where == f"{uri}/{KEY}"

    kept = pending(store)
    assert (kept.pending, kept.trials) == (5, [KEY])
    synced = sync_outbox(store, deliverable=lambda key: True)
    assert (synced.delivered, synced.pending) == (5, 0)
    assert Outbox.at(uri, s3).entries() == []

    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("outbox").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.001"}
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5)]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "notes")] == ["notes/hello.txt"]
