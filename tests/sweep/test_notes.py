"""The sweep's parent run and descriptions (experiment and parent run), its trials view, and
`sweep ui SWEEP`.

Rendering is checked on a parsed spec; writing against the per-session sqlite store. The browser
test (test_ui_browser.py) checks what the UI makes of them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweep import notes, ui_cli
from sweep.cli import build_parser
from sweep.plan import expand
from sweep.spec import parse_spec
from trainables.mlflow_schema import NOTE_TAG
from trainables.mlflow_store import start_sweep_run

SPEC = {
    "name": "notes-sweep",
    "data": {"synthetic": {"patients": 6, "size": 32}, "image_size": 32},
    "grid": {
        "arch": ["cnn", "swin"],
        "scale": ["tiny"],
        "recipe": ["baseline", "nvfp4", "2d_rht_sr"],
        "seed": [1, 2],
    },
    "protocol": {"epochs": 2, "batch_size": 8},
}


def spec_and_plan(**changes):
    spec = parse_spec({**SPEC, **changes})
    return spec, expand(spec)


def test_the_note_names_the_sweep_grid_data_storage_and_status():
    spec, plan = spec_and_plan()
    common = {"storage": "/s/notes-sweep", "experiment_id": "7", "parent_run_id": "p1"}
    running = notes.sweep_note(spec, plan, notes.NoteFacts(**common))
    assert running.startswith("## Sweep `notes-sweep`\n")
    assert "**Running** since " in running and "12 trials planned" in running
    assert "| arch | cnn (6), swin (6) |" in running
    assert "| recipe | baseline (4), nvfp4 (4), 2d_rht_sr (4) |" in running
    assert "| seed | 1 (6), 2 (6) |" in running
    assert "synthetic (6 patients x 16 slices, 32 px, seed 0), holdout split" in running
    assert "the paper's, with batch_size=8, epochs=2" in running
    assert "**Storage**: `/s/notes-sweep`" in running
    assert "[spec.yaml](#/experiments/7/runs/p1/artifacts/spec.yaml)" in running
    assert "[notes-sweep](#/experiments/7/runs/p1)" in running
    assert "not logged yet; `sweep analyze notes-sweep`" in running

    keys = [t.key for t in plan.trials]
    facts = notes.NoteFacts(
        **common, finished=keys[:10], failed=keys[10:], figures=["analysis/figures/fig6.png"]
    )
    done = notes.sweep_note(spec, plan, facts, inline_figures=True)
    assert f"**10 of 12 trials finished**, 2 not finished (`{keys[10]}`, `{keys[11]}`)" in done
    assert "[report.md](#/experiments/7/runs/p1/artifacts/analysis/report.md)" in done
    assert "[fig6.png](#/experiments/7/runs/p1/artifacts/analysis/figures/fig6.png)" in done
    assert "![fig6.png](get-artifact?path=analysis%2Ffigures%2Ffig6.png&run_uuid=p1)" in done
    linked = notes.NoteFacts(**common, figures=["analysis/figures/f.png"])
    assert "![" not in notes.sweep_note(spec, plan, linked)


def test_the_parent_run_keeps_spec_plan_versions_and_the_trials_git_sha(tmp_path):
    from sweep import runner
    from sweep.storage import SweepStore
    from trainables.code_version import code_version

    uri = os.environ["MLFLOW_TRACKING_URI"]
    spec, plan = spec_and_plan(name="notes-parent", storage=str(tmp_path))
    parent = runner._start_parent_run(uri, spec, plan)
    client = MlflowClient(uri)
    run = client.get_run(parent)
    assert run.data.tags["sweep_parent"] == "true" and run.data.tags["sweep"] == spec.name
    # The trials' tag is the sha in their code version: the same 12 characters.
    assert run.data.tags["git_sha"] == (code_version().partition("+g")[2] or "unknown")
    assert run.data.params == {"trials": "12", "storage": spec.resolved_storage()}
    local = Path(client.download_artifacts(parent, "", str(tmp_path / "artifacts")))
    assert json.loads((local / "plan.json").read_text()) == plan.to_rows()
    assert "mlflow" in json.loads((local / "versions.json").read_text())
    assert yaml.safe_load((local / "spec.yaml").read_text())["name"] == spec.name

    store = SweepStore.open(str(tmp_path), spec.name)
    runner._finish_parent_run(store, uri, parent, ok=False)
    assert client.get_run(parent).info.status == "FAILED"
    assert runner._start_parent_run(uri, spec, plan) == parent  # the sweep run again: reopened
    runner._finish_parent_run(store, uri, parent, ok=True)
    assert client.get_run(parent).info.status == "FINISHED"


def test_describe_sweep_writes_both_notes_and_the_trials_view(tmp_path):
    uri = os.environ["MLFLOW_TRACKING_URI"]
    spec, plan = spec_and_plan(name="notes-describe")
    parent = start_sweep_run(uri, spec.name, tags={"sweep": spec.name}, params={})
    client = MlflowClient(uri)
    figure = tmp_path / "fig4_auprc_vs_scale.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    client.log_artifact(parent, str(figure), "analysis/figures")
    client.log_text(parent, "{}", "analysis/figures/fig4_auprc_vs_scale.json")  # not a PNG

    keys = [t.key for t in plan.trials]
    notes.describe_sweep(uri, spec, plan, storage="/s", parent_run_id=parent, finished=keys)
    experiment = client.get_experiment_by_name(spec.name)
    note = experiment.tags[NOTE_TAG]
    assert "## Sweep `notes-describe`" in note and "**12 of 12 trials finished**" in note
    assert "[fig4_auprc_vs_scale.png](" in note and "![" not in note
    parent_note = client.get_run(parent).data.tags[NOTE_TAG]
    assert "![fig4_auprc_vs_scale.png](get-artifact?path=analysis%2Ffigures%2F" in parent_note
    view = json.loads(experiment.tags["mlflow.sharedViewState.sweep-trials"])
    assert view == notes.TRIALS_VIEW
    assert [k["groupByData"] for k in view["groupBy"]["groupByKeys"]] == ["arch", "scale", "recipe"]


def test_experiment_page_url():
    url = notes.experiment_page_url("http://127.0.0.1:5000/", "12")
    assert url == (
        "http://127.0.0.1:5000/#/experiments/12/runs"
        "?workflowType=machine_learning&viewStateShareKey=sweep-trials"
    )


def test_sweep_ui_finds_the_sweep_by_spec_or_by_name(tmp_path, monkeypatch):
    parser = build_parser()
    db = f"sqlite:///{tmp_path / 'other.db'}"
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump({**SPEC, "tracking_uri": db}))
    args = parser.parse_args(["ui", str(spec_file)])
    assert ui_cli._sweep_and_store(args) == ("notes-sweep", db)
    flag = f"sqlite:///{tmp_path / 'flag.db'}"
    args = parser.parse_args(["ui", str(spec_file), "--tracking-uri", flag])
    assert ui_cli._sweep_and_store(args)[1] == flag  # the flag wins

    # By name: the spec the sweep last ran with, in its storage folder, says where it is tracked.
    (tmp_path / "storage" / "named").mkdir(parents=True)
    (tmp_path / "storage" / "named" / "spec.yaml").write_text(yaml.safe_dump({"tracking_uri": db}))
    args = parser.parse_args(["ui", "named", "--storage", str(tmp_path / "storage")])
    assert ui_cli._sweep_and_store(args) == ("named", db)
    env = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    args = parser.parse_args(["ui", "elsewhere", "--storage", str(tmp_path / "storage")])
    assert ui_cli._sweep_and_store(args) == ("elsewhere", env)


def test_sweep_ui_on_an_unknown_sweep_exits_2_naming_what_exists(capsys):
    uri = os.environ["MLFLOW_TRACKING_URI"]
    start_sweep_run(uri, "notes-known", tags={}, params={})
    from sweep.cli import main

    assert main(["ui", "notes-nope", "--tracking-uri", uri, "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "no sweep (MLflow experiment) named 'notes-nope'" in err and "notes-known" in err


def test_a_bad_spec_given_to_sweep_ui_exits_2(tmp_path, capsys):
    from sweep.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**SPEC, "grid": {**SPEC["grid"], "arch": ["mlp"]}}))
    assert main(["ui", str(bad)]) == 2
    assert "grid.arch" in capsys.readouterr().err


@pytest.mark.parametrize("value", [True, False, "auto"])
def test_spec_tracking_section(value):
    spec = parse_spec({**SPEC, "tracking": {"system_metrics": value}})
    assert spec.tracking.system_metrics == value and spec.tracking.system_metrics_interval_s == 10
    with pytest.raises(ValueError, match="tracking.system_metrics_interval_s"):
        parse_spec({**SPEC, "tracking": {"system_metrics_interval_s": 0}})
    with pytest.raises(ValueError, match="tracking.system_metrics"):
        parse_spec({**SPEC, "tracking": {"system_metrics": "sometimes"}})


def test_sweep_analyze_later_rewrites_only_the_analysis_part(tmp_path):
    uri = os.environ["MLFLOW_TRACKING_URI"]
    spec, plan = spec_and_plan(name="notes-refresh")
    parent = start_sweep_run(uri, spec.name, tags={"sweep": spec.name}, params={})
    keys = [t.key for t in plan.trials]
    notes.describe_sweep(uri, spec, plan, storage="/s", parent_run_id=parent, finished=keys)
    client = MlflowClient(uri)
    before = client.get_run(parent).data.tags[NOTE_TAG]
    assert "not logged yet; `sweep analyze notes-refresh`" in before

    figure = tmp_path / "fig6_normalized_auprc.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    client.log_artifact(parent, str(figure), "analysis/figures")
    notes.refresh_analysis(uri, spec.name, parent)
    after = client.get_run(parent).data.tags[NOTE_TAG]
    head = before[: before.index(notes.ANALYSIS_MARK)]
    assert after.startswith(head) and "**12 of 12 trials finished**" in after
    assert "not logged yet" not in after and "[report.md](" in after
    assert "![fig6_normalized_auprc.png](get-artifact?" in after
    experiment_note = client.get_experiment_by_name(spec.name).tags[NOTE_TAG]
    assert "[fig6_normalized_auprc.png](" in experiment_note and "![" not in experiment_note

    bare = start_sweep_run(uri, "notes-bare", tags={}, params={})  # no note: left without one
    notes.refresh_analysis(uri, "notes-bare", bare)
    assert NOTE_TAG not in client.get_run(bare).data.tags
