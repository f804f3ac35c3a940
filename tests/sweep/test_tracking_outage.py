"""A tracking-server outage across the trials' end, through the `sweep` CLI and a real
`mlflow server` on 127.0.0.1 (started and stopped by PID, as in test_tracking_server.py).

The server stops after every trial has reported its first epoch and stays down (longer than the
trials' 2 s finish window) until the sweep has exited: the sweep still exits 0 with both trials
FINISHED, warns once on the console, keeps the undelivered records in the sweep's storage,
`sweep status` shows them pending, and once the server is back `sweep sync` delivers them:
every metric history equals that of the same trials trained without an outage (in this process,
from the very configs the sweep planned: CPU training is deterministic), value by value.
Delivering the same records again (a sync interrupted after sending, before recording it)
changes nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from tests.support.sweeps import start_sweep, sweep_env, tiny_spec, write_spec
from tests.sweep.test_sweep_e2e import _ledger, _reported_epochs
from tests.trainables.test_tracking_server import MlflowServer
from trainables.loop import TIMING_KEYS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EPOCHS = 4
KEYS = ["cnn-tiny-baseline-s1-holdout", "cnn-tiny-nvfp4-s1-holdout"]


def outage_spec(tmp_path, name: str, server: MlflowServer) -> dict:
    return tiny_spec(
        name,
        tmp_path,
        # Epochs long enough (a few seconds) for the server to stop while the trials train.
        data={
            "synthetic": {"patients": 8, "size": 64, "seed": 0, "slices_per_patient": 8},
            "image_size": 64,
        },
        protocol={"epochs": EPOCHS, "early_stop_warmup": EPOCHS},
        tracking_uri=server.url,
        failure={"max_retries": 0, "tracking_wait_s": 2},
    )


def tracked(uri: str, experiment: str) -> dict:
    """trial key -> {metric -> [(step, value)]}, params, artifacts and status of its run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    out = {}
    for run in runs:
        key = run.data.tags.get("trial_key", "parent")
        assert key not in out, f"two runs of {key}"
        histories = {
            metric: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric)]
            for metric in run.data.metrics
            if metric not in TIMING_KEYS
        }
        out[key] = {
            "metrics": {k: sorted(v) for k, v in histories.items()},
            "params": run.data.params,
            "artifacts": sorted(a.path for a in client.list_artifacts(run.info.run_id)),
            "status": run.info.status,
        }
    return out


def train_without_outage(tmp_path, spec: dict, server: MlflowServer) -> dict:
    """The spec's trials trained here, one by one, tracked in experiment "steady"."""
    from sweep.plan import expand
    from sweep.spec import parse_spec
    from trainables.tracked_run import run_tracked

    for trial in expand(parse_spec(spec)).trials:
        tracking = {"tracking_uri": server.url, "experiment": "steady"}
        run_tracked(trial.config.replace(tracking=tracking), tmp_path / trial.key, callbacks=[])
    return tracked(server.url, "steady")


def cli(capsys, *args: str) -> tuple[int, str]:
    """`sweep ARGS` in this process (an interpreter start costs seconds on a busy machine)."""
    from sweep.cli import main

    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().out


def test_outage_across_the_trials_end_is_delivered_exactly_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SWEEP_DATA_CACHE", str(tmp_path / "cache"))  # as the sweep's trials
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # what trackers set, undone after
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    storage = ("--storage", str(tmp_path / "storage"))
    server = MlflowServer(tmp_path / "mlflow")
    server.start()
    try:
        reference = train_without_outage(tmp_path, outage_spec(tmp_path, "steady", server), server)

        path = write_spec(tmp_path, outage_spec(tmp_path, "outage", server))
        driver = start_sweep(
            path,
            sweep_env(tmp_path),
            tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 300
            while not all(_reported_epochs(tmp_path, "outage", k) for k in KEYS):
                assert time.monotonic() < deadline and driver.poll() is None
                time.sleep(0.1)
            server.stop()
            out, _ = driver.communicate(timeout=420)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait()
        assert driver.returncode == 0, out
        # Every trial ran to its end during the outage: its epochs after the first were buffered.
        assert all(max(_reported_epochs(tmp_path, "outage", k)) == EPOCHS for k in KEYS)
        assert {k: e["state"] for k, e in _ledger(tmp_path, "outage").items()} == dict.fromkeys(
            KEYS, "FINISHED"
        )
        assert out.count("is unreachable") == 1, out  # once per outage, not per trial or record
        outbox = tmp_path / "storage" / "outage" / "tracking_outbox"
        for key in KEYS:
            assert f"{key}: " in out and f"kept in {outbox}/{key}" in out, out
        assert sorted(p.name for p in outbox.iterdir()) == ["_sweep_parent", *KEYS]

        code, status = cli(capsys, "status", "outage", *storage)  # the server is still down
        assert code == 0 and "2 finished" in status
        assert f"run(s) pending in {outbox}" in status, status
        assert "`sweep sync outage`" in status
        assert cli(capsys, "sync", "outage", *storage)[0] == 1  # still pending: exit 1

        interrupted = shutil.copytree(outbox, tmp_path / "outbox-before-sync")
        server.start()
        code, synced = cli(capsys, "sync", "outage", *storage)
        assert code == 0 and "tracking: delivered" in synced, synced
        assert list(outbox.iterdir()) == []
        after = tracked(server.url, "outage")
        assert {k: after[k] for k in KEYS} == {k: reference[k] for k in KEYS}
        assert after["parent"]["status"] == "FINISHED"

        # The same records delivered again (a sync cut off before it could record its progress).
        shutil.rmtree(outbox)
        shutil.copytree(interrupted, outbox)
        assert cli(capsys, "sync", "outage", *storage)[0] == 0
        assert tracked(server.url, "outage") == after
        assert "nothing pending" in cli(capsys, "sync", "outage", *storage)[1]
    finally:
        server.stop()
