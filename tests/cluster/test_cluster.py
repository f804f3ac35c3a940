"""A sweep on a real multi-node Ray cluster with its state in S3, the path a lab takes.

The cluster (tests/cluster/services.py): a Ray head that runs no trial, two worker nodes of one
CPU each, an S3 server, an MLflow server whose artifacts go to that S3; Ray token auth on. The
sweep keeps its spec, ledger and Tune checkpoints in s3://sweeps/lab-study; the nodes get the
S3 endpoint and keys, the tracking URI and the cluster token from their environment, the spec
holds none of them.

One sweep, two trials run one after the other:
1. `sweep submit` runs it through the Jobs API; the first trial finishes;
2. the worker node running the second trial is lost mid-trial (SIGKILL of its raylet, workers and
   agents): the trial is retried on the other node from its last checkpoint in S3;
3. the job is stopped (the driver lost) and `sweep submit` again resumes the sweep: the finished
   trial is not rerun, the interrupted one continues from its checkpoint;
4. the second trial's per-epoch and final metrics are bitwise those of the same trial run
   uninterrupted in this process; one MLflow run per trial, each epoch logged once;
5. `sweep status` and `sweep analyze` from a folder holding nothing of the sweep, given the
   storage URI and the tracking URI, report what the cluster has (the analysis report is the one
   the driver wrote and logged to MLflow).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.cluster.services import SWEEP_BUCKET, LocalCluster, s3_keys, wait_for
from tests.support.hooks import slow_epochs
from tests.support.sweeps import sweep_cli, tiny_spec

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow]

NAME = "lab"
STORAGE = f"s3://{SWEEP_BUCKET}/lab-study"
EPOCHS = 12  # the retry after the node loss must still be running when the job is stopped
FIRST, SECOND = "cnn-tiny-baseline-s1-holdout", "cnn-tiny-nvfp4-s1-holdout"


def lab_spec(**overrides) -> dict:
    spec = tiny_spec(
        NAME,
        # Big enough for an epoch to take seconds: the node is lost between two of them.
        data={
            "synthetic": {"patients": 8, "size": 48, "seed": 0, "slices_per_patient": 8},
            "image_size": 48,
        },
        # Every epoch lasts a second at least, however fast the machine: the node loss and the
        # stop below must land with epochs still to run (the callback changes no result; the
        # nodes import it from this checkout, on their PYTHONPATH).
        protocol={"epochs": EPOCHS, "early_stop_warmup": EPOCHS, "callbacks": [slow_epochs(1.0)]},
        # One trial at a time: the node that is lost runs exactly one, known, trial.
        resources={"cpus_per_trial": 1, "max_concurrent": 1},
        storage=STORAGE,
        failure={"max_retries": 2},
        analyze=True,
    )
    return spec | overrides


def lab_cli(lab: LocalCluster, *args: str, cwd: Path, env: dict | None = None, timeout=120):
    return sweep_cli(*args, env=env or lab.env, cwd=cwd, timeout=timeout)


def ok(out: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def s3_text(lab: LocalCluster, key: str) -> str | None:
    import boto3

    from tests.cluster.services import _boto_keys

    s3 = boto3.client("s3", endpoint_url=lab.s3_url, **_boto_keys())
    try:
        return s3.get_object(Bucket=SWEEP_BUCKET, Key=key)["Body"].read().decode()
    except s3.exceptions.NoSuchKey:
        return None


def ledger(lab: LocalCluster) -> dict:
    text = s3_text(lab, f"lab-study/{NAME}/ledger.json")
    return json.loads(text) if text else {}


def checkpoints(lab: LocalCluster, key: str) -> set[int]:
    """Indices of the trial's checkpoints in S3 (checkpoint_000003 is the 4th epoch's)."""
    found = set()
    for obj in s3_keys(lab.s3_url, SWEEP_BUCKET, f"lab-study/{NAME}/tune/"):
        parts = obj.split("/")
        for i, part in enumerate(parts[:-1]):
            if part.startswith("checkpoint_") and parts[i - 1] == key:
                found.add(int(part.removeprefix("checkpoint_")))
    return found


def node_running_a_trial(lab: LocalCluster, lost: str | None = None) -> str:
    """The worker node (by name) that hosts the one live Tune trial actor (Ray's state API)."""
    trials, found = trial_actor_nodes(lab, lost)
    assert len(trials) == 1 and trials[0], f"trial actors on {trials}; live actors: {found}"
    return trials[0]


def trial_actor_nodes(lab: LocalCluster, lost: str | None = None):
    """(names of the live worker nodes hosting a Tune trial actor, every live actor with its
    node's name) from Ray's state API, leaving out the node `lost`."""
    from ray.util.state.api import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    from sweep.cluster import auth_headers

    state = StateApiClient(address=lab.dashboard_url, headers=auth_headers(lab.env))
    alive = ListApiOptions(filters=[("state", "=", "ALIVE")], detail=True)
    nodes = state.list(StateResource.NODES, options=alive, raise_on_missing_output=False)
    names = {
        n.node_id: next((r for r in n.resources_total if r.startswith("node_")), None)
        for n in nodes
    }
    actors = state.list(StateResource.ACTORS, options=alive, raise_on_missing_output=False)
    # Only on live nodes: a node just lost, and its trial actor, read ALIVE until Ray's health
    # check gives up on it (seconds), so the caller names the node it killed.
    names = {node: name for node, name in names.items() if name != lost}
    trials = [
        names[a.node_id] for a in actors if "ImplicitFunc" in a.class_name and a.node_id in names
    ]
    return trials, [(a.class_name, names.get(a.node_id)) for a in actors]


def progressing(lab: LocalCluster, predicate):
    """`predicate`, failing at once if the sweep's latest job has failed (its logs attached)."""
    jobs = lab.jobs()

    def check() -> bool:
        latest = max(jobs.list_jobs(), key=lambda j: j.start_time or 0)
        if str(latest.status).rsplit(".", 1)[-1] == "FAILED":
            logs = jobs.get_job_logs(latest.submission_id)
            raise AssertionError(f"job {latest.submission_id} failed:\n{logs[-4000:]}")
        return predicate()

    return check


def job_state(lab: LocalCluster, cwd: Path) -> str:
    out = ok(lab_cli(lab, "status", NAME, "--address", lab.dashboard_url, cwd=cwd))
    return out.stdout.split(":")[1].split()[0]


def test_sweep_survives_a_lost_node_and_a_lost_driver(cluster: LocalCluster, tmp_path):
    lab = cluster
    client = tmp_path / "client"
    client.mkdir()
    spec_path = client / "lab.yaml"
    spec_path.write_text(yaml.safe_dump(lab_spec()))
    submit = ["submit", str(spec_path), "--address", lab.dashboard_url]
    started = time.monotonic()

    # 1. Submitted through the Jobs API (with the cluster's token, from the environment).
    ok(lab_cli(lab, *submit, cwd=client))
    wait_for(
        progressing(
            lab,
            lambda: (
                ledger(lab).get(FIRST, {}).get("state") == "FINISHED"
                and max(checkpoints(lab, SECOND), default=-1) >= 1
            ),
        ),
        240,
        "the first trial finished and the second checkpointed twice",
    )

    print(f"first trial finished, second half-way: {time.monotonic() - started:.0f} s")

    # 2. The node running the second trial is lost mid-trial.
    before_loss = checkpoints(lab, SECOND)
    assert max(before_loss) < EPOCHS - 2, "the trial ran too far before the node was lost"
    lost = node_running_a_trial(lab)
    lab.kill_worker(lost)
    survivor = next(n for n in lab.procs if n.startswith("node_"))
    # Tune restarts the trial once Ray has noticed the loss; until then the state API may still
    # list the dead node's actor and no other (CI saw the check below run before the retry
    # existed), so wait for the retried actor, then for an epoch it logs.
    wait_for(
        progressing(lab, lambda: trial_actor_nodes(lab, lost=lost)[0] == [survivor]),
        180,
        "the second trial to be retried on the surviving node",
        poll=1.0,
    )
    # Progress after the loss is an epoch MLflow had not seen: a checkpoint folder alone could be
    # the partial upload of the node that was killed while writing it.
    logged = max(epoch_steps(lab, tracked_runs(lab)[SECOND], "train_loss"), default=0)
    wait_for(
        progressing(
            lab, lambda: max(epoch_steps(lab, tracked_runs(lab)[SECOND], "train_loss")) > logged
        ),
        180,
        "the second trial to log a new epoch, on the surviving node",
    )
    assert node_running_a_trial(lab, lost=lost) == survivor
    print(f"node lost, trial retried on {survivor}: {time.monotonic() - started:.0f} s")
    first_done = ledger(lab)[FIRST]

    # 3. The driver is lost: the job is stopped mid-trial (from here, at once: `sweep stop`'s own
    # start-up would let the trial run on), then the sweep is submitted again.
    jobs = lab.jobs()
    jobs.stop_job(max(jobs.list_jobs(), key=lambda j: j.start_time or 0).submission_id)
    wait_for(lambda: job_state(lab, client) == "STOPPED", 60, "the job to stop")
    assert ledger(lab).get(SECOND, {}).get("state") != "FINISHED"
    assert max(epoch_steps(lab, tracked_runs(lab)[SECOND], "train_loss")) < EPOCHS
    stopped_at = max(checkpoints(lab, SECOND))
    again = ok(lab_cli(lab, *submit, "--wait", "--timeout", "300", cwd=client, timeout=330))
    assert "SUCCEEDED" in again.stdout
    logs = ok(lab_cli(lab, "logs", NAME, "--address", lab.dashboard_url, cwd=client)).stdout
    assert "1 of 2 trials already finished: skipped" in logs
    assert "resuming interrupted experiment run-001" in logs
    assert "2/2 trials finished" in logs
    print(f"sweep on the cluster: {time.monotonic() - started:.0f} s")

    # The sweep's state is in S3: spec, ledger, the trials' checkpoints.
    final = ledger(lab)
    assert {k: e["state"] for k, e in final.items()} == {FIRST: "FINISHED", SECOND: "FINISHED"}
    assert final[FIRST] == first_done  # not rerun
    assert yaml.safe_load(s3_text(lab, f"lab-study/{NAME}/spec.yaml"))["storage"] == STORAGE
    assert max(checkpoints(lab, SECOND)) > stopped_at
    assert s3_keys(lab.s3_url, "mlflow"), "no MLflow artifact reached S3"

    # 4. Bitwise what an uninterrupted run gives; one MLflow run per trial, each epoch once.
    runs = tracked_runs(lab)
    assert sorted(runs) == [FIRST, SECOND]
    for run in runs.values():
        assert run.info.status == "FINISHED"
        assert epoch_steps(lab, run, "train_loss") == list(range(1, EPOCHS + 1))
    reference = uninterrupted(final[SECOND]["config"], tmp_path / "reference")
    assert_same_as_reference(lab, runs[SECOND], reference)

    # 5. Readable from anywhere: a folder with nothing of the sweep, no default storage.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in lab.env.items() if k not in ("MLFLOW_TRACKING_URI", "SWEEP_STORAGE")}
    status = ok(
        lab_cli(lab, "status", NAME, "--storage", STORAGE, "--json", cwd=elsewhere, env=env)
    )
    rows = {r["key"]: r for r in json.loads(status.stdout)}
    assert {k: r["state"] for k, r in rows.items()} == {FIRST: "FINISHED", SECOND: "FINISHED"}
    for key, row in rows.items():
        assert row["metrics"]["test_auprc"] == final[key]["metrics"]["test_auprc"]
    on_cluster = driver_report(lab)  # what the driver's `analyze: true` logged to MLflow
    ok(lab_cli(lab, "analyze", NAME, "--tracking-uri", lab.mlflow_url, cwd=elsewhere, env=env))
    here = (elsewhere / "results" / NAME / "analysis" / "report.md").read_text()
    assert undated(here) == undated(on_cluster)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["results"]  # nothing else written
    print(f"cluster test, all checks: {time.monotonic() - started:.0f} s")


def tracked_runs(lab: LocalCluster) -> dict:
    from tests.support.mlflow_runs import find_trial_runs

    runs = find_trial_runs(lab.mlflow_url, NAME)
    keys = [r.data.tags["trial_key"] for r in runs]
    assert len(keys) == len(set(keys)), f"duplicate MLflow runs: {keys}"
    return {r.data.tags["trial_key"]: r for r in runs}


def epoch_steps(lab: LocalCluster, run, metric: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    history = MlflowClient(lab.mlflow_url).get_metric_history(run.info.run_id, metric)
    return sorted(m.step for m in history)


def uninterrupted(config: dict, folder: Path):
    """The same trial (the config the ledger recorded), in this process, without a stop."""
    from trainables.config import TrialConfig
    from trainables.loop import train

    trial = TrialConfig.from_fields(config).replace(
        cache_dir=str(folder / "cache"), tracking=None, callbacks=[]
    )
    return train(trial, checkpoint_dir=folder / "checkpoint")


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def assert_same_as_reference(lab: LocalCluster, run, reference) -> None:
    from mlflow.tracking import MlflowClient

    from trainables.loop import TIMING_KEYS

    client = MlflowClient(lab.mlflow_url)
    for name, value in reference.final_metrics.items():
        if name not in TIMING_KEYS:
            assert same(run.data.metrics[name], value), f"final {name}: {run.data.metrics[name]}"
    for epoch in reference.history:
        for name, value in epoch.items():
            if name in TIMING_KEYS or name == "epoch":
                continue
            history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, name)}
            assert same(history[epoch["epoch"]], value), f"{name} at epoch {epoch['epoch']}"


def undated(report: str) -> str:
    """The report without the minute it was written at."""
    return re.sub(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}( UTC)?", "<when>", report)


def driver_report(lab: LocalCluster) -> str:
    """The report.md the job's driver logged to the sweep's parent run (its artifacts are in S3)."""
    from mlflow.tracking import MlflowClient

    from trainables.mlflow_schema import ANALYSIS_ARTIFACT, REPORT_ARTIFACT

    client = MlflowClient(lab.mlflow_url)
    experiment = client.get_experiment_by_name(NAME)
    parents = client.search_runs(
        [experiment.experiment_id], filter_string="tags.sweep_parent = 'true'"
    )
    assert len(parents) == 1
    path = f"{ANALYSIS_ARTIFACT}/{REPORT_ARTIFACT}"
    return Path(client.download_artifacts(parents[0].info.run_id, path)).read_text()


def test_a_cluster_refuses_storage_or_tracking_its_nodes_do_not_share(cluster, tmp_path):
    lab = cluster
    nodes = lab.alive_nodes()
    assert nodes >= 2
    local = tmp_path / "lab-local.yaml"
    local.write_text(yaml.safe_dump(lab_spec(name="local", storage=str(tmp_path / "sweeps"))))
    out = lab_cli(lab, "submit", str(local), "--address", lab.dashboard_url, cwd=tmp_path)
    assert out.returncode == 2
    assert "is a local path, and this Ray cluster has" in out.stderr
    assert "s3://" in out.stderr and "storage_shared: true" in out.stderr
    assert not [j for j in lab.jobs().list_jobs() if (j.metadata or {}).get("sweep") == "local"]
    assert not (tmp_path / "sweeps").exists()

    # What the spec leaves to the cluster is checked by the driver, on the cluster: here a
    # driver connected to it from this machine, whose default storage is a local folder.
    unset = tmp_path / "lab-unset.yaml"
    spec = lab_spec(name="unset")
    del spec["storage"]
    unset.write_text(yaml.safe_dump(spec))
    env = lab.env | {"SWEEP_STORAGE": str(tmp_path / "default")}
    out = lab_cli(lab, "run", str(unset), "--address", lab.gcs_address, cwd=tmp_path, env=env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "is a local path, and this Ray cluster has" in out.stderr
    assert not (tmp_path / "default").exists()


def test_the_cluster_token_is_required_and_sent(cluster, tmp_path):
    lab = cluster
    tokenless = {k: v for k, v in lab.env.items() if k != "RAY_AUTH_TOKEN"}
    tokenless["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    for args in (["status", NAME], ["logs", NAME], ["stop", NAME]):
        out = lab_cli(lab, *args, "--address", lab.dashboard_url, cwd=tmp_path, env=tokenless)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "refused the request" in out.stderr and "RAY_AUTH_TOKEN" in out.stderr
    wrong = tokenless | {"RAY_AUTH_TOKEN": "0" * 32}
    out = lab_cli(lab, "status", NAME, "--address", lab.dashboard_url, cwd=tmp_path, env=wrong)
    assert out.returncode == 2 and "refused the request" in out.stderr
    token_file = tmp_path / "token"
    token_file.write_text(lab.token)
    with_path = tokenless | {"RAY_AUTH_TOKEN_PATH": str(token_file)}
    for command in ("status", "logs", "stop"):  # authenticated: the cluster answers
        out = lab_cli(
            lab, command, "none", "--address", lab.dashboard_url, cwd=tmp_path, env=with_path
        )
        assert out.returncode == 2 and "no job of sweep 'none'" in out.stderr, out.stderr


def test_one_driver_per_sweep_on_s3(cluster, tmp_path, monkeypatch):
    from sweep.lock import acquire
    from sweep.storage import SweepStore

    lab = cluster
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, lab.env[key])
    spec = lab_spec(name="locked", storage=f"s3://{SWEEP_BUCKET}/locks")
    path = tmp_path / "locked.yaml"
    path.write_text(yaml.safe_dump(spec))
    store = SweepStore.open(spec["storage"], "locked", endpoint=lab.s3_url)
    with acquire(store):  # this process is the first driver
        out = lab_cli(lab, "run", str(path), cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "already being run by" in out.stderr and str(os.getpid()) in out.stderr
    assert s3_text(lab, "locks/locked/ledger.json") is None  # the second driver wrote nothing
