"""`sweep ui [SWEEP] [--tracking-uri URI] [--host 127.0.0.1] [--port 5000]`: the MLflow UI.

The store is the one the sweeps log to (``--tracking-uri``, else the spec's ``tracking_uri`` when
SWEEP is a spec or a sweep whose spec is in the storage folder, else MLFLOW_TRACKING_URI, else
``mlflow.db`` in the current directory: ``trainables.mlflow_store.resolve_tracking_uri``, which
also makes a relative sqlite path absolute). For a database
store this starts ``mlflow server`` (the UI and the REST API) on it, prints the URL and waits;
Ctrl-C or SIGTERM stops the server and its workers. A store that is already an MLflow server
(``http://...``) has its own UI: the command prints that URL and starts nothing.

Given a sweep (its name, or its spec file), it also prints the URL of the sweep's experiment page
in the training view with the trials listed (sweep.notes.experiment_page_url); an unknown sweep
exits with code 2 and lists the experiments the store has.

The server listens on 127.0.0.1 unless told otherwise. It runs in its own process group, so
stopping it reaches uvicorn's workers too; it is asked to stop with SIGINT (what Ctrl-C sends),
then SIGTERM, then SIGKILL. MLflow's job executor (a background process for GenAI jobs the sweeps
never use) is off unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION says otherwise: it halves the
start-up time.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from sweep.notes import experiment_page_url
from trainables.mlflow_store import resolve_tracking_uri


def server_command(tracking_uri: str, host: str, port: int) -> list[str]:
    """The `mlflow server` command line serving ``tracking_uri`` on host:port."""
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri]
    command += ["--host", host, "--port", str(port), "--workers", "1"]
    if tracking_uri.startswith("sqlite:///"):
        # Artifacts of UI-created experiments beside the database, as the trials' (not ./).
        artifacts = Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts"
        command += ["--artifacts-destination", str(artifacts)]
    return command


def main(args: argparse.Namespace) -> int:
    try:
        name, uri = _sweep_and_store(args)
        experiment_id = _experiment_id(uri, name) if name else None
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if uri.startswith(("http://", "https://")):
        print(f"The tracking store is an MLflow server already; its UI is at {uri}")
        if experiment_id is not None:
            print(f"Sweep {name}: {experiment_page_url(uri, experiment_id)}", flush=True)
        return 0
    if not _port_is_free(args.host, args.port):
        print(
            f"error: port {args.port} on {args.host} is in use; choose another with --port",
            file=sys.stderr,
        )
        return 2
    env = os.environ | {
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get(
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"
        )
    }
    server = subprocess.Popen(
        server_command(uri, args.host, args.port), env=env, start_new_session=True
    )
    base = f"http://{args.host}:{args.port}"
    print(f"MLflow UI: {base}  (store {uri}; server pid {server.pid}; Ctrl-C stops it)", flush=True)
    if experiment_id is not None:
        print(f"Sweep {name}: {experiment_page_url(base, experiment_id)}", flush=True)
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        return server.wait()
    except KeyboardInterrupt:
        _stop(server)
        print("MLflow UI stopped", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def _sweep_and_store(args: argparse.Namespace) -> tuple[str | None, str]:
    """The sweep's name (None when none was given) and the tracking URI to serve."""
    given = getattr(args, "sweep", None)
    if not given:
        return None, resolve_tracking_uri(args.tracking_uri)
    spec_uri = None
    if given.endswith((".yaml", ".yml")) or Path(given).is_file():
        from sweep.spec import SpecError, load_spec

        try:
            spec = load_spec(given)
        except SpecError as exc:
            raise LookupError(str(exc)) from None
        name, spec_uri = spec.name, spec.tracking_uri
    else:
        name, spec_uri = given, _saved_tracking_uri(given, getattr(args, "storage", None))
    return name, resolve_tracking_uri(args.tracking_uri or spec_uri)


def _saved_tracking_uri(name: str, storage: str | None) -> str | None:
    """The tracking_uri of the spec the sweep last ran with, if its storage folder has it."""
    import yaml

    from sweep.spec import resolve_storage
    from sweep.storage import SweepStore

    try:
        store = SweepStore.open(resolve_storage(storage), name)
        if not store.exists(store.SPEC_FILE):
            return None
        return (yaml.safe_load(store.read_text(store.SPEC_FILE)) or {}).get("tracking_uri")
    except (OSError, ValueError, yaml.YAMLError):
        return None  # no readable storage: the store is then the flag's or the environment's


def _experiment_id(uri: str, name: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage != "active":
        known = sorted(e.name for e in client.search_experiments(max_results=1000))
        raise LookupError(
            f"no sweep (MLflow experiment) named {name!r} in {uri}; "
            f"experiments there: {', '.join(known) or 'none'}"
        )
    return experiment.experiment_id


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _stop(server: subprocess.Popen) -> None:
    """SIGINT, then SIGTERM, then SIGKILL to the server's process group, until none is left."""
    for sig, grace_s in ((signal.SIGINT, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        if _group_ended(server, grace_s):
            return


def _group_ended(server: subprocess.Popen, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        server.poll()  # reap the leader, so only live members keep the group
        try:
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False
