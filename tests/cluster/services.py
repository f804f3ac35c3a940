"""A real cluster on this machine, made of processes: an S3 server, an MLflow server whose artifacts
go to that S3, a Ray head without trial resources and Ray worker nodes joined to it.

Everything listens on 127.0.0.1 on ports picked free at start (other Ray clusters may run on this
host at the same time: no default port is used), and every process is started in its own process
group and stopped by that group, never by name (`ray stop` would stop every Ray on the host).

- S3: moto's server (`python -m moto.server`), what Ray's own Tune tests use for S3.
- MLflow: `mlflow server` on a sqlite store, `--artifacts-destination s3://mlflow/` on that S3,
  served through the server (clients upload to mlflow-artifacts:/ and hold no S3 keys).
- Ray: `ray start --head --num-cpus=0` (it schedules and hosts the jobs' drivers, runs no trial)
  and `ray start --address` per worker node, each with its own CPUs, a custom resource naming it
  and its own data cache; token auth on, the token passed in the environment as a cluster's nodes
  would get it. A worker node can be lost: `kill_worker` SIGKILLs its process group (its raylet,
  its workers, its agents), as a machine that loses power would.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port
from tests.support.sweeps import with_repo_on_path

S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "testing-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
MLFLOW_BUCKET = "mlflow"
SWEEP_BUCKET = "sweeps"
BIN = Path(sys.executable).parent


def wait_for(
    predicate, timeout: float, what: str, proc: Proc | None = None, poll: float = 0.25
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        if predicate():
            return
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


@dataclass
class Proc:
    """A process started in its own process group, its output in a log file."""

    name: str
    popen: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, name: str, argv: list[str], env: dict, log_dir: Path, cwd=None) -> Proc:
        log = log_dir / f"{name}.log"
        with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
            popen = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd or log_dir,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(name, popen, log)

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def group(self) -> list[int]:
        """PIDs of every live process in this process group."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ProcessLookupError):
                    if os.getpgid(int(entry.name)) == self.popen.pid:
                        pids.append(int(entry.name))
        return pids

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the group, then SIGKILL what is left of it."""
        self.kill(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=grace)
        deadline = time.monotonic() + grace
        while self.group() and time.monotonic() < deadline:
            time.sleep(0.3)
        self.kill(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)


@dataclass
class LocalCluster:
    """The services of one cluster; `env` is what a user of the cluster has in the shell."""

    root: Path
    ray_tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rc", dir="/tmp")))
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    procs: dict[str, Proc] = field(default_factory=dict)
    # Every address is chosen up front: each service's environment names the others.
    s3_url: str = field(default_factory=lambda: f"http://127.0.0.1:{free_port()}")
    mlflow_url: str = field(default_factory=lambda: f"http://127.0.0.1:{free_port()}")
    dashboard_url: str = field(default_factory=lambda: f"http://127.0.0.1:{free_port()}")
    gcs_address: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")

    @property
    def logs(self) -> Path:
        path = self.root / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("SWEEP_STORAGE", None)
        env.update(S3_KEYS)
        env.update(
            PATH=f"{BIN}:{env.get('PATH', '')}",
            AWS_ENDPOINT_URL=self.s3_url,
            NO_ALBUMENTATIONS_UPDATE="1",
            PYTHONUNBUFFERED="1",
            RAY_USAGE_STATS_ENABLED="0",
        )
        # The nodes import this checkout's packages, as a cluster's image holds the package (and
        # tests.support, for the loop callbacks a test spec names).
        return with_repo_on_path(env)

    @property
    def env(self) -> dict[str, str]:
        """A client's shell: the cluster's token, the S3 endpoint and keys, the tracking URI."""
        return self.base_env() | {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "MLFLOW_TRACKING_URI": self.mlflow_url,
        }

    # ------------------------------------------------------------------ S3 and MLflow

    def launch_s3(self) -> Callable[[], None]:
        port = self.s3_url.rsplit(":", 1)[1]
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port]
        proc = self._start("s3", argv, self.base_env())

        def ready() -> None:
            wait_for(lambda: http_ok(f"{self.s3_url}/moto-api/"), 60, "the S3 server", proc)
            import boto3

            s3 = boto3.client("s3", endpoint_url=self.s3_url, **_boto_keys())
            for bucket in (MLFLOW_BUCKET, SWEEP_BUCKET):
                s3.create_bucket(Bucket=bucket)

        return ready

    def launch_mlflow(self) -> Callable[[], None]:
        store = self.root / "mlflow.db"
        argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri"]
        argv += [f"sqlite:///{store}", "--host", "127.0.0.1"]
        argv += ["--port", self.mlflow_url.rsplit(":", 1)[1], "--workers", "1"]
        argv += ["--serve-artifacts", "--artifacts-destination", f"s3://{MLFLOW_BUCKET}/"]
        env = self.base_env() | {
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        proc = self._start("mlflow", argv, env)
        url = f"{self.mlflow_url}/health"
        return lambda: wait_for(lambda: http_ok(url), 180, "the MLflow server", proc)

    # ------------------------------------------------------------------ Ray

    def _node_env(self, cache: str) -> dict[str, str]:
        # What every node of a token-auth cluster has: the mode, the token, the storage keys, the
        # tracking server (as docker/compose.yaml gives its nodes).
        return self.base_env() | {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "SWEEP_DATA_CACHE": str(self.root / cache),
        }

    def _ports(self) -> list[str]:
        # Every port a node opens, explicit and free: Ray's defaults (6379, 8265, 10001, 52365,
        # workers from 10002) collide with the other Ray clusters on this host.
        flags = [
            "--node-manager-port",
            "--object-manager-port",
            "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port",
            "--metrics-export-port",
        ]
        # min/max 0: workers bind on ports the OS picks.
        return [f"{flag}={free_port()}" for flag in flags] + [
            "--min-worker-port=0",
            "--max-worker-port=0",
            "--object-store-memory=200000000",  # trials pass no objects; spare the shared host
        ]

    def launch_head(self) -> Callable[[], None]:
        port = self.gcs_address.rsplit(":", 1)[1]
        dash = self.dashboard_url.rsplit(":", 1)[1]
        argv = [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}"]
        argv += ["--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1"]
        argv += [f"--dashboard-port={dash}", f"--ray-client-server-port={free_port()}"]
        argv += ["--num-cpus=0", "--num-gpus=0", "--include-dashboard=true"]
        argv += ["--disable-usage-stats", f"--temp-dir={self.ray_tmp / 'head'}", *self._ports()]
        proc = self._start("ray-head", argv, self._node_env("cache-head"))
        url = f"{self.dashboard_url}/api/gcs_healthz"
        return lambda: wait_for(lambda: http_ok(url), 180, "the Ray head", proc)

    def add_worker(self, name: str, cpus: int = 1) -> None:
        argv = [str(BIN / "ray"), "start", "--block", f"--address={self.gcs_address}"]
        argv += ["--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", "--num-gpus=0"]
        argv += [f'--resources={{"{name}": 1}}', "--disable-usage-stats"]
        # Its own temp dir, as its own machine would have: nodes sharing one would share (and
        # garbage-collect) each other's runtime-env folders, the job driver's working dir included.
        argv += [f"--temp-dir={self.ray_tmp / name}", *self._ports()]
        expected = self.alive_nodes() + 1
        proc = self._start(name, argv, self._node_env(f"cache-{name}"))
        wait_for(lambda: self.alive_nodes() >= expected, 180, f"Ray node {name}", proc)

    def alive_nodes(self) -> int:
        from sweep.cluster import alive_nodes

        try:
            return alive_nodes(self.dashboard_url, env=self.env)
        except Exception:  # the dashboard is not answering yet
            return 0

    def jobs(self):
        """A Jobs API client holding the cluster's token (this process runs without one)."""
        from ray.job_submission import JobSubmissionClient

        from sweep.cluster import auth_headers

        return JobSubmissionClient(self.dashboard_url, headers=auth_headers(self.env))

    def kill_worker(self, name: str) -> None:
        """Lose a node: SIGKILL its raylet, its workers and its agents (its process group)."""
        proc = self.procs.pop(name)
        proc.kill(signal.SIGKILL)
        proc.popen.wait(timeout=30)
        wait_for(lambda: not proc.group(), 30, f"every process of {name} to die")

    # ------------------------------------------------------------------ all of it

    def _start(self, name: str, argv: list[str], env: dict) -> Proc:
        proc = Proc.start(name, argv, env, self.logs)
        self.procs[name] = proc
        return proc

    def start(self, workers: tuple[str, ...] = ("node_a", "node_b")) -> LocalCluster:
        """Everything at once (start-up is mostly waiting), the workers once the head answers."""
        try:
            waits = [self.launch_s3(), self.launch_mlflow(), self.launch_head()]
            for ready in waits:
                ready()
            for name in workers:
                self.add_worker(name)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every process group at once, SIGKILL what is left after `grace` seconds (the
        state of these services is thrown away: nothing needs a clean shutdown)."""
        procs = list(self.procs.values())
        self.procs.clear()
        for proc in procs:
            proc.kill(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(proc.group() for proc in procs) and time.monotonic() < deadline:
            time.sleep(0.3)
        for proc in procs:
            proc.kill(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=10)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def _boto_keys() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_KEYS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_KEYS["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_KEYS["AWS_DEFAULT_REGION"],
    }


def s3_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    """Every object key under s3://bucket/prefix (through boto3, independent of the product)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, **_boto_keys())
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    return keys
