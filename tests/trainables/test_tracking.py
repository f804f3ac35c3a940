"""MLflow tracking against a real sqlite store (the per-session one from conftest).

What must hold whatever happens to the trial: exactly one run per trial_key, every (metric, step)
logged exactly once, the right terminal status, nothing lost while the store is unavailable.
The HTTP server cases (stopped and restarted mid-trial) are in test_tracking_server.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.support.mlflow_runs import find_trial_runs
from trainables.journal import BLOBS_DIR, JOURNAL_NAME, DeliveryReport, flush_journal
from trainables.mlflow_store import (
    end_sweep_run,
    flatten_config,
    resolve_tracking_uri,
    start_sweep_run,
)
from trainables.tracking import TrialTracker

TAGS = {"sweep": "s", "arch": "cnn", "scale": "tiny", "recipe": "nvfp4", "seed": "0"}


@pytest.fixture
def uri() -> str:
    return os.environ["MLFLOW_TRACKING_URI"]


@pytest.fixture
def client(uri) -> MlflowClient:
    return MlflowClient(uri)


@pytest.fixture
def experiment(request) -> str:
    return f"exp-{request.node.name}"


@pytest.fixture
def make_tracker(uri, experiment, tmp_path):
    def make(key="cnn-tiny-nvfp4-s0-holdout", buffer="buf", uri=uri, **kwargs):
        kwargs.setdefault("tags", TAGS)
        kwargs.setdefault("params", {"optim": {"lr": 1e-3}, "epochs": 8})
        kwargs.setdefault("finish_timeout_s", 5.0)
        kwargs.setdefault("retry_after_s", 0.0)
        return TrialTracker(
            tracking_uri=uri,
            experiment=experiment,
            trial_key=key,
            buffer_dir=tmp_path / buffer,
            **kwargs,
        )

    return make


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def runs_of(uri: str, experiment: str, key: str):
    return find_trial_runs(uri, experiment, trial_key=key)


# --------------------------------------------------------------------------- one trial


def test_start_log_finish_is_one_complete_run(make_tracker, client, uri, experiment, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = tmp_path / "best.pt"
    weights.write_bytes(b"weights")
    tracker = make_tracker(parent_run_id="parent123")
    tracker.start()
    for epoch in range(3):
        tracker.log_epoch(epoch, {"loss": 1.0 / (epoch + 1), "val_auprc": 0.1 * epoch})
    tracker.log_final({"val_auprc": 0.9, "test_auprc": 0.8, "best_epoch": 2})
    tracker.log_dict({"arch": "cnn"}, "config.json")
    fig = plt.figure()
    plt.plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "pr_curve.png")
    plt.close(fig)
    tracker.log_artifact(tmp_path / "pr_curve.png", "plots")
    tracker.log_artifact(weights, "weights")
    report = tracker.finish()

    assert report == DeliveryReport(tracker.run_id, delivered=report.delivered, pending=0)
    assert report.ok and tracker.state() == {"run_id": tracker.run_id}
    assert tracker.finish() == report  # finishing twice changes nothing
    (run,) = runs_of(uri, experiment, "cnn-tiny-nvfp4-s0-holdout")
    assert run.info.run_id == tracker.run_id and run.info.status == "FINISHED"
    expected_tags = TAGS | {
        "trial_key": "cnn-tiny-nvfp4-s0-holdout",
        "mlflow.runName": "cnn-tiny-nvfp4-s0-holdout",
        "mlflow.parentRunId": "parent123",
    }
    assert run.data.tags.items() >= expected_tags.items()
    assert run.data.params == {"optim.lr": "0.001", "epochs": "8"}
    assert history(client, run.info.run_id, "loss") == [(0, 1.0), (1, 0.5), (2, 1 / 3)]
    # Final metrics go one step past the last epoch: they are the run's latest values.
    assert history(client, run.info.run_id, "val_auprc") == [(0, 0.0), (1, 0.1), (2, 0.2), (3, 0.9)]
    assert run.data.metrics["val_auprc"] == 0.9 and run.data.metrics["test_auprc"] == 0.8
    paths = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert paths == {"config.json", "plots", "weights"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == [
        "plots/pr_curve.png"
    ]
    local = client.download_artifacts(run.info.run_id, "config.json", str(tmp_path))
    assert json.loads(Path(local).read_text()) == {"arch": "cnn"}
    # Delivered artifact copies are removed from the buffer.
    assert not any((tmp_path / "buf" / BLOBS_DIR).rglob("*.*"))


@pytest.mark.parametrize("status", ["FINISHED", "FAILED", "KILLED"])
def test_finish_sets_the_terminal_status(make_tracker, uri, experiment, status):
    tracker = make_tracker()
    tracker.start()
    assert runs_of(uri, experiment, tracker.trial_key)[0].info.status == "RUNNING"
    tracker.log_epoch(0, {"loss": 1.0})
    assert tracker.finish(status).ok
    assert runs_of(uri, experiment, tracker.trial_key)[0].info.status == status


def test_context_manager_marks_a_crash_failed(make_tracker, uri, experiment):
    with pytest.raises(ZeroDivisionError), make_tracker() as tracker:
        tracker.log_epoch(0, {"loss": 1.0})
        _ = 1 / 0
    assert runs_of(uri, experiment, tracker.trial_key)[0].info.status == "FAILED"


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("found_by", ["run_id", "trial_key_tag", "journal"])
def test_resumed_trial_reopens_its_run_and_drops_replayed_epochs(
    make_tracker, client, uri, experiment, found_by
):
    first = make_tracker()
    first.start()
    for epoch in range(6):
        first.log_epoch(epoch, {"loss": float(epoch), "val_auprc": 0.1 * epoch})
    first.finish("FAILED")  # the trial crashed after epoch 5; its last checkpoint is epoch 3

    kwargs = {
        "run_id": {"run_id": first.state()["run_id"], "buffer": "fresh"},
        "trial_key_tag": {"buffer": "fresh"},  # journal lost (another node), no run id
        "journal": {},  # same buffer_dir, no run id
    }[found_by]
    second = make_tracker(**kwargs)
    second.start()
    assert second.run_id == first.run_id
    (run,) = runs_of(uri, experiment, second.trial_key)
    assert run.info.status == "RUNNING"  # reopened
    for epoch in range(4, 8):  # replays 4 and 5 with other values, then goes on
        second.log_epoch(epoch, {"loss": 100.0 + epoch, "val_auprc": 0.5})
    second.log_final({"test_auprc": 0.7})
    assert second.finish().ok

    (run,) = runs_of(uri, experiment, second.trial_key)
    assert run.info.status == "FINISHED"
    loss = history(client, run.info.run_id, "loss")
    assert loss == [(e, float(e)) for e in range(6)] + [(6, 106.0), (7, 107.0)]
    assert [s for s, _ in history(client, run.info.run_id, "val_auprc")] == list(range(8))
    assert history(client, run.info.run_id, "test_auprc") == [(8, 0.7)]
    assert run.data.params == {"optim.lr": "0.001", "epochs": "8"}  # re-logging did not fail


def test_trial_ending_again_does_not_log_final_metrics_twice(make_tracker, client):
    first = make_tracker()
    first.start()
    first.log_epoch(0, {"val_auprc": 0.1})
    first.log_final({"val_auprc": 0.3, "test_auprc": 0.2})
    # the process dies here, before finish(); the retried trial has no epoch left to run
    second = make_tracker(run_id=first.run_id, buffer="fresh")
    second.start()
    second.log_final({"val_auprc": 0.3, "test_auprc": 0.25})
    assert second.finish().ok
    assert history(client, second.run_id, "test_auprc") == [(1, 0.2)]
    assert history(client, second.run_id, "val_auprc") == [(0, 0.1), (1, 0.3)]


def test_a_deleted_run_is_not_reopened(make_tracker, client, uri, experiment):
    first = make_tracker()
    first.start()
    first.finish()
    client.delete_run(first.run_id)
    second = make_tracker(run_id=first.run_id, buffer="fresh")
    second.start()
    assert second.run_id != first.run_id
    assert [r.info.run_id for r in runs_of(uri, experiment, second.trial_key)] == [second.run_id]
    second.finish()


# --------------------------------------------------------------------------- store unavailable


def test_store_unavailable_at_start_creates_the_run_at_first_delivery(
    make_tracker, client, uri, experiment, tmp_path, caplog
):
    # A sqlite store whose folder is a plain file cannot be opened: an outage with no server.
    blocked = tmp_path / "store"
    blocked.write_text("not a folder")
    down_uri = f"sqlite:///{blocked / 'mlflow.db'}"
    tracker = make_tracker(uri=down_uri)
    with caplog.at_level(logging.WARNING, logger="trainables.journal"):
        tracker.start()  # no exception
        for epoch in range(3):
            tracker.log_epoch(epoch, {"loss": float(epoch)})
        assert tracker.run_id is None
        assert tracker.state() == {"run_id": None}
        # The store comes back: a copy of the session store, already migrated.
        blocked.unlink()
        blocked.mkdir()
        client.search_experiments()  # make sure the session database exists
        shutil.copy(uri[len("sqlite:///") :], blocked / "mlflow.db")
        tracker.log_epoch(3, {"loss": 3.0})
        assert tracker.run_id is not None
        report = tracker.finish()
    assert report.ok
    assert sum("unreachable" in r.message for r in caplog.records) == 1  # once per outage
    back = MlflowClient(down_uri)
    assert history(back, tracker.run_id, "loss") == [(e, float(e)) for e in range(4)]
    assert back.get_run(tracker.run_id).info.status == "FINISHED"


def test_records_left_pending_are_delivered_by_flush_journal(
    make_tracker, client, uri, experiment, tmp_path
):
    blocked = tmp_path / "store"
    blocked.write_text("not a folder")
    down_uri = f"sqlite:///{blocked / 'mlflow.db'}"
    tracker = make_tracker(uri=down_uri, finish_timeout_s=0.0)
    tracker.start()
    tracker.log_epoch(0, {"loss": 0.5})
    report = tracker.finish()
    assert report.run_id is None and report.pending == 4 and not report.ok  # open, params, ...

    blocked.unlink()
    blocked.mkdir()
    client.search_experiments()
    shutil.copy(uri[len("sqlite:///") :], blocked / "mlflow.db")
    later = flush_journal(tmp_path / "buf", down_uri)
    assert later.ok and later.delivered == 4
    back = MlflowClient(down_uri)
    assert back.get_run(later.run_id).info.status == "FINISHED"
    assert history(back, later.run_id, "loss") == [(0, 0.5)]
    assert flush_journal(tmp_path / "buf", down_uri).delivered == 0  # nothing twice


def test_a_record_mlflow_refuses_is_counted_and_does_not_block_the_rest(make_tracker, client):
    tracker = make_tracker()
    tracker.start()
    tracker.log_epoch(0, {"bad//name": 1.0})  # MLflow answers 400 for this name
    tracker.log_epoch(1, {"loss": 1.0})
    report = tracker.finish()
    assert report.rejected == 1 and report.pending == 0 and not report.ok
    assert history(client, tracker.run_id, "loss") == [(1, 1.0)]


def test_a_torn_last_journal_line_is_dropped(make_tracker, client, tmp_path):
    tracker = make_tracker()
    tracker.start()
    tracker.log_epoch(0, {"loss": 1.0})
    journal = tmp_path / "buf" / JOURNAL_NAME
    with open(journal, "a") as f:
        f.write('{"seq": 99, "kind": "metr')  # the process died mid-write
    resumed = make_tracker(run_id=tracker.run_id)
    resumed.start()
    resumed.log_epoch(1, {"loss": 2.0})
    assert resumed.finish().ok
    assert history(client, tracker.run_id, "loss") == [(0, 1.0), (1, 2.0)]


def test_a_corrupt_journal_line_is_named(make_tracker, tmp_path):
    (tmp_path / "buf").mkdir()
    (tmp_path / "buf" / JOURNAL_NAME).write_text('{"seq": 1}\ngarbage\n{"ack": 1}\n')
    with pytest.raises(ValueError, match=r"mlflow_journal.jsonl:2"):
        make_tracker().start()


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_with_a_clear_error(make_tracker, tmp_path):
    tracker = make_tracker()
    with pytest.raises(RuntimeError, match="start"):
        tracker.log_epoch(0, {"loss": 1.0})
    tracker.start()
    with pytest.raises(ValueError, match="epoch"):
        tracker.log_epoch(-1, {"loss": 1.0})
    with pytest.raises(ValueError, match="'loss'"):
        tracker.log_epoch(0, {"loss": "high"})
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        tracker.log_artifact(tmp_path / "nowhere.pt")
    with pytest.raises(ValueError, match="FINISHED, FAILED, KILLED"):
        tracker.finish("DONE")
    tracker.finish()
    with pytest.raises(RuntimeError, match="finished"):
        tracker.log_epoch(1, {"loss": 1.0})
    with pytest.raises(ValueError, match="own buffer_dir"):
        make_tracker(key="vit_adamw-tiny-nvfp4-s0-holdout").start()
    with pytest.raises(ValueError, match="trial_key"):
        make_tracker(key="")


# --------------------------------------------------------------------------- sweep level


def test_search_by_tags_returns_exactly_the_wanted_runs(uri, experiment, make_tracker):
    parent = start_sweep_run(uri, experiment, tags={"sweep": "s"}, params={"spec": "a.yaml"})
    for recipe in ("baseline", "nvfp4"):
        for seed in (0, 1):
            key = f"cnn-tiny-{recipe}-s{seed}-holdout"
            tags = TAGS | {"recipe": recipe, "seed": str(seed)}
            tracker = make_tracker(key=key, buffer=key, tags=tags, parent_run_id=parent)
            tracker.start()
            tracker.finish()
    runs = find_trial_runs(uri, experiment, recipe="nvfp4", seed=1)
    assert [r.data.tags["trial_key"] for r in runs] == ["cnn-tiny-nvfp4-s1-holdout"]
    everything = find_trial_runs(uri, experiment)
    assert len(everything) == 4 and parent not in {r.info.run_id for r in everything}
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in everything)
    assert find_trial_runs(uri, experiment, recipe="fwd_only") == []
    assert find_trial_runs(uri, "no-such-experiment") == []


def test_sweep_parent_run_is_reused_when_the_sweep_runs_again(uri, experiment, client):
    first = start_sweep_run(uri, experiment, tags={"sweep": "s"}, params={"spec": "a.yaml"})
    end_sweep_run(uri, first, "KILLED")
    again = start_sweep_run(uri, experiment, tags={"sweep": "s"}, params={"spec": "b.yaml"})
    assert again == first
    run = client.get_run(first)
    assert run.info.status == "RUNNING" and run.data.params == {"spec": "a.yaml"}
    assert run.data.tags["sweep_parent"] == "true"


def test_resolve_tracking_uri(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("http://mlflow:5000") == "http://mlflow:5000"
    assert resolve_tracking_uri("sqlite:///rel/m.db") == f"sqlite:///{tmp_path}/rel/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri(None) == "http://env:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(ValueError, match="sqlite:///"):
        resolve_tracking_uri("./mlruns")


def test_flatten_config_makes_dotted_string_params():
    config = {"model": {"arch": "cnn", "widths": [8, 16]}, "lr": 0.001, "amp": False, "x": None}
    flat = flatten_config(config)
    assert flat == {
        "model.arch": "cnn",
        "model.widths": "[8, 16]",
        "lr": "0.001",
        "amp": "False",
        "x": "None",
    }
    assert flatten_config(flat) == flat
