"""A sweep's runs, read from MLflow into one tidy table, and saved as a snapshot.

The MLflow layout (docs/design.md, "MLflow"; names in trainables.mlflow_schema): experiment =
sweep name; one parent run tagged `sweep_parent=true`; one child run per trial with flat tags
(`TRIAL_TAGS`: sweep, trial_key, arch, scale, recipe, recipe_id, seed, fold, split_seed,
config_hash, git_sha) and final metrics (test_auprc, val_auprc, ...). The table has one row per
trial: the tag columns, `run_id`, `status`, `start_time`, `end_time`, `artifact_uri`, `n_runs`
(how many MLflow runs carried that trial_key; the kept one is the finished one, else the latest),
`hist_spikiness` computed from the run's `pred_hist.json` artifact
(`trainables.histogram.histogram_spikiness`; NaN without one), then one column per metric (its
latest value: final metrics must be logged at a step after the last epoch's).

Speed: runs come from `search_runs` in pages of thousands (`mlflow_schema.search_all`: one SQL
query per page, not one call per run); artifacts are read only for the prediction histograms of
finished runs and for the few runs Fig 5 draws, straight from disk when the artifact store is
local and through a thread pool otherwise.

A snapshot (`save_snapshot`) is runs.parquet + runs.csv + snapshot.json (sweep name, parent run,
the planned grid and the Fig 5 curves), enough to redo the analysis offline (`load_snapshot`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from trainables import mlflow_schema as schema
from trainables.histogram import histogram_spikiness

log = logging.getLogger(__name__)

INFO_COLUMNS = ("run_id", "status", "start_time", "end_time", "artifact_uri")
INTEGER_TAGS = ("recipe_id", "seed", "split_seed")
STRING_COLUMNS = tuple(
    c
    for c in (*schema.TRIAL_TAGS, *INFO_COLUMNS)
    if c not in (*INTEGER_TAGS, "start_time", "end_time")
)
SNAPSHOT_META = "snapshot.json"
_STATUS_PREFERENCE = {"FINISHED": 0, "RUNNING": 1, "SCHEDULED": 1, "KILLED": 2, "FAILED": 3}


class SweepNotFound(LookupError):
    """No MLflow experiment carries the sweep's name."""

    def __init__(self, name: str, tracking_uri: str, existing: Sequence[str]):
        self.name, self.tracking_uri, self.existing = name, tracking_uri, list(existing)
        listing = ", ".join(sorted(self.existing)) or "(none)"
        super().__init__(
            f"sweep {name!r} not found: no MLflow experiment named {name!r} at {tracking_uri}. "
            f"Existing experiments: {listing}"
        )


@dataclass
class SweepRuns:
    """What the analysis needs of a sweep: the runs table, the planned grid, the Fig 5 curves."""

    name: str
    table: pd.DataFrame
    parent_run_id: str | None = None
    plan: list[dict] | None = None
    curves: dict[str, dict] = field(default_factory=dict)  # trial_key -> {pr_curve, pred_hist}
    tracking_uri: str | None = None


# --------------------------------------------------------------------------- reading MLflow


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


def read_sweep(
    tracking_uri: str, name: str, *, page_size: int = schema.PAGE_SIZE, histograms: bool = True
) -> SweepRuns:
    """The sweep's runs table (plus parent run and plan) from the MLflow store at `tracking_uri`.

    Raises SweepNotFound (naming the existing experiments) when no experiment is called `name`.
    """
    client = _client(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        existing = [e.name for e in client.search_experiments()]
        raise SweepNotFound(name, tracking_uri, existing)
    sweep_filter = schema.tag_filter(schema.SWEEP_TAG, name)
    runs = schema.search_all(client, [experiment.experiment_id], sweep_filter, page_size)
    parents = [r for r in runs if r.data.tags.get(schema.PARENT_TAG) == schema.PARENT_VALUE]
    children = [r for r in runs if r.data.tags.get(schema.PARENT_TAG) != schema.PARENT_VALUE]
    parent = max(parents, key=lambda r: r.info.start_time or 0, default=None)
    table = runs_table(children)
    if histograms:
        add_histogram_spikiness(client, table)
    plan = None
    if parent is not None:
        plan = read_json_artifact(
            client, parent.info.run_id, parent.info.artifact_uri, schema.PLAN_ARTIFACT
        )
        plan = validate_plan(plan) if plan is not None else None
    return SweepRuns(
        name, table, parent.info.run_id if parent else None, plan, tracking_uri=tracking_uri
    )


def runs_table(runs: Iterable) -> pd.DataFrame:
    """One row per trial from MLflow Run objects (runs without a trial_key tag are skipped)."""
    records, skipped = [], 0
    for run in runs:
        tags = run.data.tags
        if schema.TRIAL_KEY_TAG not in tags:
            skipped += 1
            continue
        record = {c: tags.get(c) for c in schema.TRIAL_TAGS}
        info = run.info
        record.update(
            run_id=info.run_id,
            status=info.status,
            start_time=info.start_time,
            end_time=info.end_time,
            artifact_uri=info.artifact_uri,
        )
        for metric, value in run.data.metrics.items():
            record[metric if metric not in record else f"metric.{metric}"] = value
        records.append(record)
    if skipped:
        log.warning("ignored %d run(s) without a trial_key tag", skipped)
    frame = (
        pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=schema.TRIAL_TAGS)
    )
    return tidy(_one_row_per_trial(frame))


def tidy(table: pd.DataFrame) -> pd.DataFrame:
    """Fixed column order and types (also for an empty table)."""
    for c in (*schema.TRIAL_TAGS, *INFO_COLUMNS):
        if c not in table.columns:
            table[c] = pd.Series(dtype=object)
    if "n_runs" not in table.columns:
        table["n_runs"] = 1
    if "hist_spikiness" not in table.columns:
        table["hist_spikiness"] = np.nan
    for c in (*INTEGER_TAGS, "start_time", "end_time", "n_runs"):
        table[c] = pd.to_numeric(table[c], errors="coerce").astype("Int64")
    for c in STRING_COLUMNS:  # one representation whether read live, from Parquet or from CSV
        table[c] = table[c].astype("str")
    table["hist_spikiness"] = table["hist_spikiness"].astype(float)
    fixed = [*schema.TRIAL_TAGS, *INFO_COLUMNS, "n_runs", "hist_spikiness"]
    metrics = sorted(c for c in table.columns if c not in fixed)
    return table[fixed + metrics].reset_index(drop=True)


def _one_row_per_trial(table: pd.DataFrame) -> pd.DataFrame:
    # A trial tracked twice (e.g. rerun after its run was lost) keeps its finished run, else the
    # latest; the count stays visible so duplicates are not silent.
    for c in INFO_COLUMNS:
        if c not in table.columns:
            table[c] = pd.Series(dtype=object)
    table = table.assign(
        n_runs=table.groupby("trial_key")["trial_key"].transform("size"),
        _pref=table["status"].map(_STATUS_PREFERENCE).fillna(9),
        _start=pd.to_numeric(table["start_time"], errors="coerce").fillna(0),
    )
    table = table.sort_values(["trial_key", "_pref", "_start"], ascending=[True, True, False])
    return table.drop_duplicates("trial_key").drop(columns=["_pref", "_start"])


def validate_plan(plan: object) -> list[dict]:
    """The parent's plan.json: a list of {trial_key, arch, scale, recipe, seed, fold}."""
    needed = {"trial_key", "arch", "scale", "recipe", "seed", "fold"}
    if not isinstance(plan, list) or not all(isinstance(p, dict) for p in plan):
        raise ValueError(
            f"{schema.PLAN_ARTIFACT} must be a JSON list of objects with keys {sorted(needed)}"
        )
    for i, entry in enumerate(plan):
        if not needed <= entry.keys():
            raise ValueError(
                f"{schema.PLAN_ARTIFACT} entry {i} lacks {sorted(needed - entry.keys())}"
            )
    return plan


# --------------------------------------------------------------------------- artifacts


def _local_path(artifact_uri: str | None) -> Path | None:
    """The directory of a local artifact store, None for a remote one."""
    if not artifact_uri:
        return None
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "":
        return Path(artifact_uri)
    return None


def read_json_artifact(client, run_id: str, artifact_uri: str | None, path: str) -> object | None:
    """A run's JSON artifact, or None when it is absent or unreadable (never raises)."""
    local = _local_path(artifact_uri)
    try:
        if local is not None:
            file = local / path
            return json.loads(file.read_text()) if file.is_file() else None
        with tempfile.TemporaryDirectory() as tmp:
            return json.loads(Path(client.download_artifacts(run_id, path, tmp)).read_text())
    except Exception as exc:  # noqa: BLE001 - a missing/garbled artifact is "no data", not a crash
        log.debug("artifact %s of run %s unreadable: %s", path, run_id, exc)
        return None


def read_json_artifacts(client, rows: pd.DataFrame, path: str, workers: int = 8) -> list:
    """`read_json_artifact` for every (run_id, artifact_uri) row, in parallel."""
    pairs = list(zip(rows["run_id"], rows["artifact_uri"], strict=True))
    if not pairs:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(pairs))) as pool:
        return list(pool.map(lambda p: read_json_artifact(client, p[0], p[1], path), pairs))


def _histogram_counts(hist: object) -> list | None:
    if isinstance(hist, dict) and isinstance(hist.get("counts"), list):
        return hist["counts"]
    return None


def add_histogram_spikiness(client, table: pd.DataFrame) -> None:
    """Column `hist_spikiness` from each finished run's pred_hist.json (NaN where absent)."""
    finished = table[table["status"] == "FINISHED"]
    hists = read_json_artifacts(client, finished, schema.HISTOGRAM_ARTIFACT)
    scores = [
        histogram_spikiness(c) if (c := _histogram_counts(h)) is not None else np.nan for h in hists
    ]
    table.loc[finished.index, "hist_spikiness"] = scores


def fetch_curves(sweep_runs: SweepRuns, trial_keys: Iterable[str]) -> None:
    """Read pr_curve.json and pred_hist.json of the given trials into `sweep_runs.curves`."""
    table = sweep_runs.table
    rows = table[table["trial_key"].isin(set(trial_keys))]
    if rows.empty or sweep_runs.tracking_uri is None:
        return
    client = _client(sweep_runs.tracking_uri)
    pr = read_json_artifacts(client, rows, schema.PR_CURVE_ARTIFACT)
    hist = read_json_artifacts(client, rows, schema.HISTOGRAM_ARTIFACT)
    for key, p, h in zip(rows["trial_key"], pr, hist, strict=True):
        sweep_runs.curves[key] = {"pr_curve": p, "pred_hist": h}


# --------------------------------------------------------------------------- snapshots


def save_snapshot(sweep_runs: SweepRuns, out_dir: Path) -> list[Path]:
    """Write runs.parquet, runs.csv and snapshot.json into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parquet, csv, meta = out_dir / "runs.parquet", out_dir / "runs.csv", out_dir / SNAPSHOT_META
    sweep_runs.table.to_parquet(parquet, index=False)
    sweep_runs.table.to_csv(csv, index=False)
    meta.write_text(
        json.dumps(
            {
                "sweep": sweep_runs.name,
                "parent_run_id": sweep_runs.parent_run_id,
                "tracking_uri": sweep_runs.tracking_uri,
                "plan": sweep_runs.plan,
                "curves": sweep_runs.curves,
            },
            indent=1,
        )
    )
    return [parquet, csv, meta]


def load_snapshot(path: Path | str, name: str | None = None) -> SweepRuns:
    """A snapshot written by `save_snapshot`: its folder, its runs.parquet or its runs.csv."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        path = next(
            (folder / f for f in ("runs.parquet", "runs.csv") if (folder / f).is_file()),
            folder / "runs.parquet",
        )
    if not path.is_file():
        raise FileNotFoundError(f"snapshot not found: {path} (expected runs.parquet or runs.csv)")
    if path.suffix == ".parquet":
        table = pd.read_parquet(path)
    elif path.suffix == ".csv":
        table = pd.read_csv(path, dtype=dict.fromkeys(STRING_COLUMNS, "str"))
    else:
        raise ValueError(f"snapshot {path} must be a .parquet or .csv file or a folder")
    table = tidy(table)
    meta_file = folder / SNAPSHOT_META
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    plan = meta.get("plan")
    return SweepRuns(
        name or meta.get("sweep") or path.stem,
        table,
        meta.get("parent_run_id"),
        validate_plan(plan) if plan is not None else None,
        meta.get("curves") or {},
        tracking_uri=None,
    )
