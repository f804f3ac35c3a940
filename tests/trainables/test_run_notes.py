"""What a trial's MLflow run shows in the UI: its description, its dataset input, its system
metrics, and the experiment's kind; against the real per-session sqlite store.

A tiny run goes through `run_tracked` (the path of the Ray trainable and `sweep train-one`), then
again from its finished checkpoint, as a resumed trial would: the note is the same and the dataset
is not logged twice.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from tests.support.hooks import InjectedFailure, fail_at_epoch
from tests.support.trials import tiny_config
from trainables import cache, system_metrics
from trainables.config import TUNE_KEY, TrackingConfig, TrialConfig
from trainables.data import resolve_data_root
from trainables.mlflow_schema import EXPERIMENT_KIND_TAG, NOTE_TAG, TRAINING_KIND
from trainables.mlflow_store import (
    get_or_create_experiment,
    mark_training_experiment,
    start_sweep_run,
)
from trainables.run_notes import DIGEST_LENGTH, dataset_input, trial_note
from trainables.tracked_run import run_tracked
from trainables.tracking import TrialTracker

SYSTEM_KEYS = {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"}


@pytest.fixture
def uri() -> str:
    return os.environ["MLFLOW_TRACKING_URI"]


def tiny(tmp_path, experiment: str, **changes) -> TrialConfig:
    fields = {
        "recipe": "nvfp4",
        "seed": 3,
        "synthetic": {"patients": 6, "size": 32, "seed": 0, "slices_per_patient": 4},
        "epochs": 2,
        "tracking": {"tracking_uri": os.environ["MLFLOW_TRACKING_URI"], "experiment": experiment},
    }
    return tiny_config(tmp_path / "cache", **{**fields, **changes})


def only_run(client: MlflowClient, experiment: str):
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return found, runs[0]


@pytest.mark.slow
def test_a_tracked_run_describes_itself_and_its_data(uri, tmp_path):
    client = MlflowClient(uri)
    tracking = {
        "tracking_uri": uri,
        "experiment": "notes-finished",
        "system_metrics": True,  # on a CPU "auto" would record nothing
        "system_metrics_interval_s": 0.2,
    }
    config = tiny(tmp_path, "notes-finished", tracking=tracking)
    result = run_tracked(config, tmp_path / "ckpt", callbacks=[])

    experiment, run = only_run(client, "notes-finished")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    note = run.data.tags[NOTE_TAG]
    final = result.final_metrics
    assert note.startswith(f"**{config.trial_key}**: CNN (U-Net) at scale `tiny`")
    assert "**NVFP4 Full** (`nvfp4`: every operand 1x16" in note
    assert f"Best weights from epoch {result.best_epoch}:" in note
    assert f"val AUPRC {final['val_auprc']:.4f}, test AUPRC {final['test_auprc']:.4f}" in note
    assert "Ran the full budget of 2 epochs." in note

    (given,) = run.inputs.dataset_inputs
    root = resolve_data_root(config)
    entry = cache.open_cache(root, 32, tmp_path / "cache" / "data")  # the entry the run read
    assert given.dataset.digest == entry.fingerprint[:DIGEST_LENGTH]
    assert given.dataset.name == "synthetic-6p-4s-32px-seed0"
    assert given.dataset.source_type == "synthetic"
    assert '"uri": "synthetic"' in given.dataset.source
    assert [(t.key, t.value) for t in given.tags] == [("mlflow.data.context", "training")]
    assert set(run.data.metrics) >= SYSTEM_KEYS

    # Run again from the finished checkpoint (a trial restored after its end).
    run_tracked(config, tmp_path / "ckpt", callbacks=[])
    _, again = only_run(client, "notes-finished")
    assert again.data.tags[NOTE_TAG] == note
    assert len(again.inputs.dataset_inputs) == 1


@pytest.mark.slow
def test_a_failed_run_says_why(uri, tmp_path):
    config = tiny(tmp_path, "notes-failed", callbacks=[fail_at_epoch(2)], epochs=3)
    with pytest.raises(InjectedFailure):
        run_tracked(config, tmp_path / "ckpt", callbacks=[])
    _, run = only_run(MlflowClient(uri), "notes-failed")
    assert run.info.status == "FAILED"
    note = run.data.tags[NOTE_TAG]
    assert "Did not finish: `InjectedFailure`: injected failure at the start of epoch 2" in note
    assert len(run.inputs.dataset_inputs) == 1  # logged before training started
    assert not any(k.startswith("system/") for k in run.data.metrics)  # "auto" on a CPU: off


def test_early_stopping_and_real_data_are_described(tmp_path):
    data = tmp_path / "kaggle_3m"
    data.mkdir()
    config = TrialConfig.from_fields(
        {"arch": "swin", "scale": "tiny", "recipe": "2d_rht_sr", "seed": 1, "fold": "f2",
         "data_path": str(data), "epochs": 100, "early_stop_patience": 20,
         "early_stop_warmup": 40}
    )  # fmt: skip
    result = SimpleNamespace(
        final_metrics={"best_epoch": 41.0, "val_auprc": 0.5, "test_auprc": 0.25, "epochs_run": 61},
        history=[{}] * 61,
        stopped_early=True,
    )
    note = trial_note(config, result)
    assert "Swin transformer at scale `tiny`" in note and "fold 2 (split seed 2026)" in note
    assert f"data `{data}` at 256 px" in note
    assert "val AUPRC 0.5000, test AUPRC 0.2500" in note
    assert "Stopped early after epoch 61 of 100" in note and "for 20 epochs after the 40" in note
    assert trial_note(config, None, None).endswith("Did not finish (interrupted).")
    sample = config.replace(sample_suffix="0a1b2c3d")
    assert trial_note(sample, result).startswith(f"**{config.trial_key}-0a1b2c3d**: Swin")

    datasets = SimpleNamespace(**{s: _Split(["p1", "p2"], 10) for s in ("train", "val", "test")})
    given = dataset_input(config, datasets, data)
    assert given["name"] == "kaggle_3m" and given["source_type"] == "local"
    assert len(given["digest"]) == DIGEST_LENGTH  # no cache source: path and version hashed
    assert '"uri": "' + str(data) in given["source"]


class _Split(list):
    """A split dataset stand-in: a length and its patients (no data source)."""

    def __init__(self, patients, n):
        super().__init__(range(n))
        self.patients = patients


def test_system_metrics_setting_is_not_hashed_and_reaches_the_trial():
    base = {"arch": "cnn", "scale": "tiny", "recipe": "baseline", "seed": 0, "synthetic": {}}
    off = TrialConfig.from_fields({**base, "tracking": {"system_metrics": False}})
    on = TrialConfig.from_fields({**base, "tracking": {"system_metrics": True}})
    assert off.config_hash == on.config_hash == TrialConfig.from_fields(base).config_hash

    sent = on.replace(
        tracking={"tracking_uri": "sqlite:///x.db", "experiment": "e",
                  "system_metrics": True, "system_metrics_interval_s": 2.5},
    )  # fmt: skip
    tracking = TrialConfig.from_tune({TUNE_KEY: sent.to_tune()}).tracking
    assert tracking.system_metrics is True and tracking.system_metrics_interval_s == 2.5

    assert system_metrics.wanted(TrackingConfig(), "cuda")
    assert not system_metrics.wanted(TrackingConfig(), "cpu")
    assert system_metrics.wanted(TrackingConfig(system_metrics=True), "cpu")
    assert not system_metrics.wanted(TrackingConfig(system_metrics=False), "cuda")
    assert not system_metrics.wanted(None, "cuda")
    assert system_metrics.start(TrackingConfig(system_metrics=True), None, "cpu") is None


def test_experiment_kind_set_once_and_a_users_choice_kept(uri):
    client = MlflowClient(uri)
    new = get_or_create_experiment(client, "kind-new")
    assert client.get_experiment(new).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND

    old = client.create_experiment("kind-old")  # a sweep created before the tag existed
    start_sweep_run(uri, "kind-old", tags={"sweep": "kind-old"}, params={})
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND

    client.set_experiment_tag(old, EXPERIMENT_KIND_TAG, "genai_development")  # chosen in the UI
    mark_training_experiment(client, old)
    start_sweep_run(uri, "kind-old", tags={"sweep": "kind-old"}, params={})
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_bad_notes_and_datasets_are_refused(uri, tmp_path):
    tracker = TrialTracker(
        tracking_uri=uri, experiment="notes-bad", trial_key="k", tags={}, params={},
        buffer_dir=tmp_path / "buf",
    )  # fmt: skip
    tracker.start()
    with pytest.raises(ValueError, match="must be a string"):
        tracker.set_note(None)
    with pytest.raises(ValueError, match=r"lacks \['digest', 'source'\]"):
        tracker.log_dataset({"name": "d", "source_type": "local"})
    with pytest.raises(ValueError, match="longer than MLflow's 36"):
        tracker.log_dataset({"name": "d", "digest": "x" * 37, "source_type": "s", "source": "{}"})
    tracker.set_note("x" * 9000)  # cut to MLflow's limit, with a warning, not refused
    assert tracker.finish().ok
    note = MlflowClient(uri).get_run(tracker.run_id).data.tags[NOTE_TAG]
    assert len(note) == 8000 and note.endswith("...")
