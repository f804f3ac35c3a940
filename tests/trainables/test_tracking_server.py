"""MLflow over HTTP: a real `mlflow server` on 127.0.0.1, stopped mid-trial and restarted, and
`sweep ui`.

The server is started and stopped by the test, by process group, on a free port. Its sqlite
store starts as a copy of the session store, which is already migrated (creating the tables
takes seconds). One server serves the whole module: start-up dominates the cost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sweep.ui_cli import server_command
from tests.support.mlflow_runs import find_trial_runs
from tests.support.ports import free_port
from trainables.journal import flush_journal
from trainables.tracking import TrialTracker

SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner: faster start


def wait_healthy(url: str, proc: subprocess.Popen, log: Path | None, timeout_s=120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"mlflow server at {url} not healthy after {timeout_s} s")


def stop_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue


def port_answers(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def migrated_store(folder: Path) -> str:
    """A copy of the session's sqlite store (tables already created) in ``folder``."""
    session_uri = os.environ["MLFLOW_TRACKING_URI"]
    MlflowClient(session_uri).search_experiments()  # the session store exists from here on
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(session_uri[len("sqlite:///") :], folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


class MlflowServer:
    """`mlflow server` on a sqlite store, started and stopped (by process group) on one port."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.store = migrated_store(folder)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = self.folder / "server.log"
        with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                server_command(self.store, "127.0.0.1", self.port),
                cwd=self.folder,
                env=os.environ | SERVER_ENV,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_healthy(self.url, self.proc, log)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None
        assert not port_answers(self.port)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def short_http_retries(monkeypatch):
    # What TrialTracker sets with setdefault; set here so the test leaves the env as it found it.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def tracker(server, tmp_path, key: str, recipe: str, **kwargs) -> TrialTracker:
    seed = key.split("-")[3].removeprefix("s")
    tags = {"sweep": "outage", "arch": "cnn", "scale": "tiny", "recipe": recipe, "seed": seed}
    kwargs.setdefault("finish_timeout_s", 30.0)
    return TrialTracker(
        tracking_uri=server.url,
        experiment="outage",
        trial_key=key,
        tags=tags,
        params={"lr": 0.001},
        buffer_dir=tmp_path / key,
        retry_after_s=0.0,
        **kwargs,
    )


def steps_and_values(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


@pytest.mark.e2e
@pytest.mark.slow
def test_server_stopped_mid_trial_loses_nothing_and_duplicates_nothing(
    server, tmp_path, caplog, short_http_retries
):
    a = tracker(server, tmp_path, "cnn-tiny-nvfp4-s0-holdout", "nvfp4")  # runs through
    c = tracker(server, tmp_path, "cnn-tiny-nvfp4-s1-holdout", "nvfp4", finish_timeout_s=0.0)
    a.start()
    c.start()
    for epoch in range(3):
        a.log_epoch(epoch, {"loss": float(epoch), "val_auprc": epoch / 10})
    c.log_epoch(0, {"loss": 0.5})

    with caplog.at_level(logging.WARNING, logger="trainables.journal"):
        server.stop()
        # Training goes on while the server is down: no exception, records buffered.
        for epoch in (3, 4):
            a.log_epoch(epoch, {"loss": float(epoch), "val_auprc": epoch / 10})
        b = tracker(server, tmp_path, "cnn-tiny-baseline-s0-holdout", "baseline")
        b.start()  # the run cannot be created yet
        b.log_epoch(0, {"loss": 1.0})
        b.log_epoch(1, {"loss": 0.9})
        assert b.run_id is None
        c.log_epoch(1, {"loss": 0.4})
        c_report = c.finish()  # ends during the outage: its records stay in the journal
        assert c_report.pending > 0 and not c_report.ok

        server.start()
        a.log_epoch(5, {"loss": 5.0, "val_auprc": 0.5})
        b.log_epoch(2, {"loss": 0.8})
        a_report, b_report = a.finish(), b.finish()
        c_later = flush_journal(tmp_path / c.trial_key, server.url)

    assert a_report.ok and b_report.ok and c_later.ok and c_later.run_id == c.run_id
    outage_warnings = [r.message for r in caplog.records if "unreachable" in r.message]
    for t in (a, b, c):  # one warning per tracker and outage, not one per record
        assert sum(str(t.buffer_dir) in m for m in outage_warnings) == 1, outage_warnings

    client = MlflowClient(server.url)
    runs = {r.data.tags["trial_key"]: r for r in find_trial_runs(server.url, "outage")}
    assert sorted(runs) == sorted([a.trial_key, b.trial_key, c.trial_key])  # one run per trial
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert steps_and_values(client, a.run_id, "loss") == [(e, float(e)) for e in range(6)]
    assert [s for s, _ in steps_and_values(client, a.run_id, "val_auprc")] == list(range(6))
    assert steps_and_values(client, b.run_id, "loss") == [(0, 1.0), (1, 0.9), (2, 0.8)]
    assert steps_and_values(client, c.run_id, "loss") == [(0, 0.5), (1, 0.4)]
    assert runs[b.trial_key].data.params == {"lr": "0.001"}

    nvfp4 = find_trial_runs(server.url, "outage", recipe="nvfp4", arch="cnn")
    assert [r.data.tags["trial_key"] for r in nvfp4] == sorted([a.trial_key, c.trial_key])
    assert find_trial_runs(server.url, "outage", recipe="nvfp4", seed=1)[0].info.run_id == c.run_id


@pytest.mark.e2e
@pytest.mark.slow
def test_resumed_trial_over_http_reopens_its_run(server, tmp_path, short_http_retries):
    first = tracker(server, tmp_path, "swin-tiny-2d_rht-s0-f0", "2d_rht")
    first.start()
    for epoch in range(4):
        first.log_epoch(epoch, {"loss": float(epoch)})
    first.finish("FAILED")
    second = tracker(server, tmp_path, "swin-tiny-2d_rht-s0-f0", "2d_rht", run_id=first.run_id)
    second.start()
    for epoch in range(2, 6):  # restarted from the epoch-1 checkpoint
        second.log_epoch(epoch, {"loss": 10.0 + epoch})
    assert second.finish().ok
    (run,) = find_trial_runs(server.url, "outage", trial_key="swin-tiny-2d_rht-s0-f0")
    assert run.info.run_id == first.run_id and run.info.status == "FINISHED"
    loss = steps_and_values(MlflowClient(server.url), run.info.run_id, "loss")
    assert loss == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0), (4, 14.0), (5, 15.0)]


# --------------------------------------------------------------------------- sweep ui


@pytest.mark.e2e
@pytest.mark.slow
def test_sweep_ui_serves_the_store_and_stops_on_ctrl_c(tmp_path):
    store = migrated_store(tmp_path / "store")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweep", "ui", "--tracking-uri", store, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    server_pid = None
    try:
        banner = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in banner, banner
        server_pid = int(banner.split("server pid ")[1].split(";")[0])
        wait_healthy(f"http://127.0.0.1:{port}", proc, None)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
            assert page.status == 200  # the UI itself, not only the API
        proc.send_signal(signal.SIGINT)  # Ctrl-C reaches `sweep ui`, which stops the server
        assert proc.wait(timeout=60) == 0
        assert "stopped" in proc.stdout.read()
        assert not port_answers(port)
        with pytest.raises(ProcessLookupError):
            os.killpg(server_pid, 0)  # no process of the server's group is left
    finally:
        for pid in filter(None, (server_pid, proc.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_sweep_ui_command_line(tmp_path):
    command = server_command(f"sqlite:///{tmp_path}/m.db", "127.0.0.1", 5123)
    assert command[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path}/m.db"
    assert command[command.index("--port") + 1] == "5123"
    assert command[command.index("--artifacts-destination") + 1] == str(tmp_path / "mlartifacts")


def test_sweep_ui_on_an_http_store_starts_nothing(capsys):
    from sweep.cli import main

    assert main(["ui", "--tracking-uri", "http://mlflow.example:5000"]) == 0
    assert "http://mlflow.example:5000" in capsys.readouterr().out


def test_sweep_ui_refuses_a_busy_port(capsys, tmp_path):
    from sweep.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["ui", "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--port", str(port)])
    assert code == 2
    assert f"port {port}" in capsys.readouterr().err
