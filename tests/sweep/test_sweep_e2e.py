"""The sweep service end to end: real Ray on 127.0.0.1, a real sqlite MLflow store, real files.

- a small sweep runs to completion; running it again skips everything; adding a seed runs only
  the new trials; changing a result-affecting setting is refused;
- the driver is SIGKILLed mid-sweep, then `sweep resume` finishes every trial exactly once, the
  interrupted one from its checkpoint, with one MLflow run per trial and every epoch logged once;
- trials with fractional GPU requests are packed onto simulated GPU nodes as requested;
- a sweep submitted through the Jobs API to a `ray start --head` runs to completion.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support.hooks import slow_epochs
from tests.support.ports import free_port
from tests.support.sweeps import start_sweep, sweep_cli, sweep_env, tiny_spec, write_spec

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _sweep(tmp_path: Path, *args: str, check: bool = True, timeout: float = 420):
    out = sweep_cli(*args, env=sweep_env(tmp_path), cwd=tmp_path, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(
            f"sweep {' '.join(args)} -> {out.returncode}\n{out.stdout}\n{out.stderr}"
        )
    return out


def _ledger(tmp_path: Path, name: str) -> dict:
    path = tmp_path / "storage" / name / "ledger.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _runs(tmp_path: Path, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return client, [r for r in runs if "trial_key" in r.data.tags]


def _epoch_steps(client, run, metric: str = "train_loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, metric))


def test_run_is_idempotent_extends_and_refuses_changed_settings(tmp_path):
    spec = tiny_spec("idem", tmp_path)
    path = write_spec(tmp_path, spec)
    first = _sweep(tmp_path, "run", str(path))
    assert "2/2 trials finished" in first.stdout
    ledger = _ledger(tmp_path, "idem")
    assert {e["state"] for e in ledger.values()} == {"FINISHED"} and len(ledger) == 2

    again = _sweep(tmp_path, "run", str(path))
    assert "2 of 2 trials already finished: skipped" in again.stdout
    assert _ledger(tmp_path, "idem") == ledger  # nothing re-ran

    spec["grid"]["seed"] = [1, 2]  # a new seed: only its two trials run
    _sweep(tmp_path, "run", str(write_spec(tmp_path, spec)))
    ledger2 = _ledger(tmp_path, "idem")
    assert len(ledger2) == 4
    assert all(ledger2[k] == v for k, v in ledger.items())

    client, runs = _runs(tmp_path, "idem")
    assert Counter(r.data.tags["trial_key"] for r in runs) == Counter({k: 1 for k in ledger2})
    assert all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        assert _epoch_steps(client, run) == [1, 2, 3]
        assert 0.0 <= run.data.metrics["test_auprc"] <= 1.0

    status = _sweep(tmp_path, "status", "idem")
    assert "4 finished" in status.stdout

    spec["protocol"]["epochs"] = 4  # changes results: refused, nothing starts
    refused = _sweep(tmp_path, "run", str(write_spec(tmp_path, spec)), check=False)
    assert refused.returncode == 2
    assert "changed epochs" in refused.stderr
    assert _ledger(tmp_path, "idem") == ledger2


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _reported_epochs(tmp_path: Path, name: str, key: str) -> list[int]:
    epochs = []
    for result in (tmp_path / "storage" / name / "tune").glob(f"*/{key}/result.json"):
        for line in result.read_text().splitlines():
            if line.strip():
                epochs.append(json.loads(line).get("epoch"))
    return epochs


def test_driver_sigkill_then_resume_finishes_every_trial_exactly_once(tmp_path):
    spec = tiny_spec(
        "killed",
        tmp_path,
        grid={"recipe": ["baseline", "2d_rht_sr"]},
        # Each epoch lasts at least 1 s (a result-neutral test callback): on a quiet machine the
        # tiny trial otherwise runs its six epochs between two polls and the kill lands too late.
        protocol={"epochs": 6, "early_stop_warmup": 6, "callbacks": [slow_epochs(1.0)]},
        resources={"cpus_per_trial": 1, "max_concurrent": 1},
    )
    path = write_spec(tmp_path, spec)
    keys = ["cnn-tiny-baseline-s1-holdout", "cnn-tiny-2d_rht_sr-s1-holdout"]
    driver = start_sweep(
        path, sweep_env(tmp_path), tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        # One trial finished, the other has checkpointed at least two epochs: kill everything.
        _wait_for(
            lambda: (
                len(_ledger(tmp_path, "killed")) == 1
                and len(_reported_epochs(tmp_path, "killed", keys[1])) >= 2
            ),
            timeout=300,
            what="one finished trial and one half-way",
        )
    finally:
        # The embedded Ray's processes are in the driver's process group: this kills them all,
        # as losing the machine would, and touches no other Ray on this host.
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    before = _reported_epochs(tmp_path, "killed", keys[1])
    finished_before = _reported_epochs(tmp_path, "killed", keys[0])
    assert 2 <= len(before) < 6

    status = _sweep(tmp_path, "status", "killed")
    assert "1 finished" in status.stdout and "interrupted" in status.stdout.lower()

    out = _sweep(tmp_path, "resume", "killed")
    assert "2/2 trials finished" in out.stdout
    ledger = _ledger(tmp_path, "killed")
    assert {k: e["state"] for k, e in ledger.items()} == {k: "FINISHED" for k in keys}
    assert _reported_epochs(tmp_path, "killed", keys[0]) == finished_before  # not re-run
    resumed = _reported_epochs(tmp_path, "killed", keys[1])
    assert resumed[: len(before)] == before
    # Continued from a checkpoint, not from scratch: the first epoch after the resume follows the
    # last checkpoint Ray had registered (the epoch reported last, or one before it if the kill
    # came between its result and its checkpoint), and the trial ran to its last epoch.
    assert 2 <= resumed[len(before)] <= max(before) + 1
    assert resumed[-1] == 6

    client, runs = _runs(tmp_path, "killed")
    assert Counter(r.data.tags["trial_key"] for r in runs) == Counter(keys)
    for run in runs:
        assert run.info.status == "FINISHED"
        assert _epoch_steps(client, run) == list(range(1, 7))


def test_fractional_gpu_trials_are_packed_onto_simulated_gpu_nodes(tmp_path):
    import ray
    from ray import tune
    from ray.cluster_utils import Cluster

    from sweep.runner import tune_resources

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 1})
    cluster.add_node(num_cpus=2, num_gpus=1)
    try:
        ray.init(address=cluster.address)

        def probe(config):
            ctx = ray.get_runtime_context()
            tune.report(
                {"node": ctx.get_node_id(), "gpus": ctx.get_accelerator_ids().get("GPU", [])}
            )

        spec = tiny_spec(
            "packed", tmp_path, resources={"cpus_per_trial": 0.5, "gpus_per_trial": 0.5}
        )
        from sweep.spec import parse_spec

        trainable = tune_resources(parse_spec(spec), probe)
        results = tune.Tuner(
            trainable,
            param_space={"i": tune.grid_search(list(range(4)))},
            tune_config=tune.TuneConfig(max_concurrent_trials=4),
            run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), verbose=0),
        ).fit()
        rows = [(r.metrics["node"], tuple(r.metrics["gpus"])) for r in results]
        assert not results.errors
        # four half-GPU trials on two one-GPU nodes: two per node, sharing that node's GPU
        assert Counter(node for node, _ in rows) == Counter({n: 2 for n, _ in rows})
        assert all(len(gpus) == 1 for _, gpus in rows)
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_submit_through_the_jobs_api_runs_the_sweep(tmp_path):
    port, dash = free_port(), free_port()
    env = sweep_env(tmp_path)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    # Ray's unix sockets live under --temp-dir, whose path must stay short (the socket path limit
    # is 107 bytes), so not under pytest's long tmp_path.
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    # --block keeps `ray start` in the foreground: the head and everything it starts share its
    # process group, which the test stops by PID (never `ray stop`, which stops every Ray here).
    head = subprocess.Popen(
        [
            "ray",
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--num-cpus=2",
            "--include-dashboard=true",
            # Ray's default agent port (52365) may be another Ray's on this host: the job agent
            # would fail to bind and every submission answer "No available agent".
            f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            "--disable-usage-stats",
            f"--temp-dir={ray_tmp}",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        _wait_for(lambda: _answers(address), timeout=120, what="the Ray dashboard")
        spec = tiny_spec(
            "submitted", tmp_path, grid={"recipe": ["baseline"]}, protocol={"epochs": 2}
        )
        submit = ["submit", str(write_spec(tmp_path, spec)), "--address", address, "--wait"]
        out = sweep_cli(*submit, "--timeout", "300", env=env, timeout=360)
        logs = sweep_cli("logs", "submitted", "--address", address, env=env, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr + logs.stdout
        status = sweep_cli("status", "submitted", "--address", address, env=env, timeout=60)
        assert "SUCCEEDED" in status.stdout
        assert "1/1 trials finished" in logs.stdout
        assert _ledger(tmp_path, "submitted")["cnn-tiny-baseline-s1-holdout"]["state"] == "FINISHED"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_optuna_search_runs_its_budget_as_separate_tracked_trials(tmp_path):
    spec = tiny_spec(
        "tuned",
        tmp_path,
        grid={"recipe": ["baseline"]},
        protocol={"epochs": 2},
        search={
            "metric": "val_auprc",
            "mode": "max",
            "num_samples": 2,
            "seed": 0,
            "space": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
        },
    )
    _sweep(tmp_path, "run", str(write_spec(tmp_path, spec)))
    entry = _ledger(tmp_path, "tuned")["cnn-tiny-baseline-s1-holdout"]
    assert entry["state"] == "FINISHED" and 1e-4 <= entry["metrics"]["best_lr"] <= 1e-2

    client, runs = _runs(tmp_path, "tuned")
    keys = [r.data.tags["trial_key"] for r in runs]
    assert len(runs) == 2 and len(set(keys)) == 2  # one MLflow run per sample, never shared
    assert all(k.startswith("cnn-tiny-baseline-s1-holdout-") for k in keys)
    assert len({r.data.params["lr"] for r in runs}) == 2
    assert all(r.info.status == "FINISHED" for r in runs)
