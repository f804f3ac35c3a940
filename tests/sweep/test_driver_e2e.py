"""The sweep driver against what operators do to it, with real Ray and real MLflow (sqlite).

One small spec throughout (tiny CNN trials of 5 epochs, each asking every CPU of the embedded
Ray, so two trials run one at a time):

- an uninterrupted reference sweep of one trial;
- SIGINT (to the process group, as Ctrl-C in a terminal) and SIGTERM (to the driver) mid-epoch:
  exit 130/143, every finished epoch kept, `sweep resume` continues each trial from its last
  checkpoint, and the per-epoch metrics equal the reference's epoch by epoch, each logged once;
  meanwhile every listening socket of the sweep's processes is on the loopback interface, with
  Ray's token auth on (the product default: these tests unset the suite's RAY_AUTH_MODE=disabled);
- a second driver of a running sweep is refused, naming the first; the progress line says why
  the sweep's second trial is pending (the first holds every CPU);
- no Ray process outlives its driver: stopped by a signal, or SIGKILLed (Ray's agents alone would
  hold their ports for about a minute), and the SIGKILLed driver's lock is stale;
- a GPU request on this GPU-less machine is refused before anything is written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.support.hooks import slow_epochs
from tests.support.sweeps import start_sweep, sweep_cli, sweep_env, tiny_spec, write_spec

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KEYS = ["cnn-tiny-baseline-s1-holdout", "cnn-tiny-nvfp4-s1-holdout"]
PER_EPOCH = ("train_loss", "val_loss", "val_auprc")
EPOCHS = 5
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _node_cpus() -> int:
    """The CPUs the embedded Ray gets (Ray's own count: cgroup limits included)."""
    from ray._private.utils import get_num_cpus

    return int(get_num_cpus())


CPUS = _node_cpus()


def _spec(root: Path, name: str, *, recipes=("baseline", "nvfp4"), delay=0.0, **resources):
    protocol = {"epochs": EPOCHS, "early_stop_warmup": EPOCHS}
    if delay:
        protocol["callbacks"] = [slow_epochs(delay)]  # not hashed: same results
    spec = tiny_spec(
        name,
        root,
        grid={"recipe": list(recipes)},
        protocol=protocol,
        resources={"cpus_per_trial": CPUS, "max_concurrent": 2, **resources},
    )
    return write_spec(root, spec)


def _env(root: Path) -> dict:
    env = sweep_env(root, cache=root.parent / "cache")
    env.pop("RAY_AUTH_MODE")  # the product's default: Ray's token auth on
    return env


def _sweep(root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return sweep_cli(*args, env=_env(root), cwd=root, timeout=timeout)


def _start(root: Path, spec: Path) -> subprocess.Popen:
    return start_sweep(
        spec, _env(root), root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _history(root: Path, name: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """trial key -> metric -> [(epoch, value)] as MLflow holds them."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    out = {}
    for run in client.search_runs([experiment.experiment_id]):
        if "trial_key" not in run.data.tags:
            continue
        out[run.data.tags["trial_key"]] = {
            m: sorted((h.step, h.value) for h in client.get_metric_history(run.info.run_id, m))
            for m in PER_EPOCH
        }
    return out


def _status(root: Path, name: str):
    from sweep.status import sweep_status
    from sweep.storage import SweepStore

    return sweep_status(SweepStore.open(str(root / "storage"), name))


def _reported_epochs(root: Path, name: str, key: str) -> list[int]:
    epochs = []
    for result in sorted((root / "storage" / name / "tune").glob(f"*/{key}/result.json")):
        epochs += [json.loads(line)["epoch"] for line in result.read_text().splitlines() if line]
    return [int(e) for e in epochs]


def _wait_for_epochs(root: Path, name: str, count: int, driver: subprocess.Popen) -> None:
    """Until the first trial has reported `count` epochs; fails when the driver exits first."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if len(_reported_epochs(root, name, KEYS[0])) >= count:
            return
        if driver.poll() is not None:
            raise AssertionError(f"driver exited ({driver.returncode}) before epoch {count}")
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for epoch {count} of {KEYS[0]}")


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {p.name()}")
        except psutil.NoSuchProcess:
            continue
    return out


def _assert_no_orphans(procs: list[psutil.Process], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while _alive(procs) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(procs), f"still running after the driver ended: {_alive(procs)}"


def _exposed_listeners(procs: list[psutil.Process]) -> list[str]:
    """Listening sockets of these processes reachable from another machine."""
    exposed = []
    for p in procs:
        try:
            for conn in p.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr.ip not in LOOPBACK:
                    exposed.append(f"{p.name()} (pid {p.pid}) on {conn.laddr.ip}:{conn.laddr.port}")
        except psutil.NoSuchProcess:
            continue
    return exposed


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted sweep's per-epoch metrics."""
    root = tmp_path_factory.mktemp("reference")
    out = _sweep(root, "run", str(_spec(root, "reference", recipes=("baseline",))))
    assert out.returncode == 0, out.stdout + out.stderr
    history = _history(root, "reference")
    assert sorted(history) == KEYS[:1]
    for metrics in history.values():  # (val_* also holds the final value, at step EPOCHS + 1)
        assert [step for step, _ in metrics["train_loss"]] == list(range(1, EPOCHS + 1))
    return history


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_stop_signal_keeps_every_finished_epoch_and_resume_matches_reference(
    tmp_path, reference, signum
):
    history = reference
    name = f"stopped-{signum.name.lower()}"
    # Each epoch sleeps 2 s before it trains (a test callback): the signal lands mid-trial.
    spec = _spec(tmp_path, name, recipes=("baseline",), delay=2.0)
    driver = _start(tmp_path, spec)
    procs = []
    try:
        _wait_for_epochs(tmp_path, name, 2, driver)
        procs = _tree(driver.pid)
        if signum == signal.SIGINT:
            _check_listeners(procs)
        before = _reported_epochs(tmp_path, name, KEYS[0])
        if signum == signal.SIGINT:
            os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
        else:
            driver.send_signal(signal.SIGTERM)  # `kill PID`
        stdout, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum], stderr
    assert "every finished epoch is kept" in stderr and "sweep resume" in stderr
    _assert_no_orphans(procs)

    kept = _reported_epochs(tmp_path, name, KEYS[0])
    assert kept[: len(before)] == before and len(kept) < EPOCHS  # stopped mid-trial
    assert not (tmp_path / "storage" / name / "tune" / "run-001" / ".complete").exists()
    assert [row.state for row in _status(tmp_path, name)] == ["INTERRUPTED"]

    out = _sweep(tmp_path, "resume", name)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1/1 trials finished" in out.stdout
    resumed = _reported_epochs(tmp_path, name, KEYS[0])
    # Continued from the last checkpoint (the last epoch kept, or the one before it if the stop
    # fell between a result and its checkpoint), never from epoch 1, and on to the end.
    assert resumed[: len(kept)] == kept
    assert max(kept) <= resumed[len(kept)] <= max(kept) + 1 and resumed[-1] == EPOCHS
    # Epoch by epoch, each logged once, equal to the uninterrupted run's values.
    assert _history(tmp_path, name) == {KEYS[0]: history[KEYS[0]]}


def _check_listeners(procs) -> None:
    """Nothing of the running sweep listens beyond this host, and Ray asks for its token."""
    assert not _exposed_listeners(procs), _exposed_listeners(procs)
    ray_env = [p.environ() for p in procs if p.name() in ("gcs_server", "raylet")]
    assert len(ray_env) == 2 and all(env.get("RAY_AUTH_MODE") == "token" for env in ray_env)
    assert all(len(env.get("RAY_AUTH_TOKEN", "")) >= 32 for env in ray_env)


def test_second_driver_is_refused_and_sigkill_of_the_first_leaves_no_ray_process(tmp_path):
    from sweep.lock import holder, read_record
    from sweep.storage import SweepStore

    name = "killed-driver"
    # The second trial waits for the first one's CPUs: after 1 s the progress line says why.
    spec = _spec(tmp_path, name, delay=5.0, pending_warning_s=1)
    driver = _start(tmp_path, spec)
    try:
        _wait_for_epochs(tmp_path, name, 1, driver)
        procs = _tree(driver.pid)
        assert {"gcs_server", "raylet"} <= {p.name() for p in procs}

        second = _sweep(tmp_path, "run", str(spec), timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"PID {driver.pid} on host" in second.stderr and "since" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        assert driver.poll() is None  # the first one runs on, undisturbed
        procs = _tree(driver.pid)  # with the trial's worker
    finally:
        driver.kill()  # the driver alone, not its group: its Ray processes are on their own
        stdout, _ = driver.communicate()
    _assert_no_orphans(procs, within=20.0)  # Ray's agents alone would take about 60 s

    pending = next(line for line in stdout.splitlines() if "pending for" in line)
    assert f"each asks {CPUS} CPU" in pending and f"free/total now: 0/{CPUS} CPU" in pending

    store = SweepStore.open(str(tmp_path / "storage"), name)
    assert read_record(store).pid == driver.pid and holder(store) is None  # stale: free to take


def test_impossible_gpu_request_is_refused_before_anything_is_written(tmp_path):
    out = _sweep(tmp_path, "run", str(_spec(tmp_path, "gpu", gpus_per_trial=1)), timeout=180)
    assert out.returncode == 2, out.stdout + out.stderr
    message = out.stderr.strip().splitlines()[-1]  # after Ray's own "Started a local Ray" line
    assert message.startswith("error: resources.gpus_per_trial: 1 GPUs per trial asked")
    assert "largest node of this Ray cluster has 0" in message
    assert not (tmp_path / "storage").exists()
    assert not (tmp_path / "mlflow.db").exists()  # no experiment, no parent run
