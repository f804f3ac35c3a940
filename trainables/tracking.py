"""MLflow tracking for one trial: one run per trial, resumed not duplicated, tolerant of outages.

The layout in MLflow (docs/design.md, "MLflow"): an experiment per sweep, one parent run per sweep
(tag ``sweep_parent=true``) and one child run per trial, named by its ``trial_key`` and tagged with
it. Everything here talks to MLflow through ``MlflowClient`` with explicit run ids, never through
``mlflow.start_run``'s global active run, so several trials in one process never collide. (Ray's
MLflow callback and ``setup_mlflow`` open a second run when a trial resumes; that is why they are
not used.)

Three rules make a trial exactly one run whatever happens to the process or the server:

1. **Find before create.** ``start()`` reopens the run id kept in the checkpoint, else the most
   recent non-deleted run of the experiment tagged with this ``trial_key``, and only then creates
   a run. Reopening sets the status back to RUNNING; ``finish()`` sets FINISHED, FAILED or KILLED.

2. **Each (metric, step) is logged once; the first value wins.** A resumed trial replays epochs:
   it restarts from the epoch-3 checkpoint after epochs 4 and 5 were already logged. The tracker
   knows, per metric, the highest step already logged (read back from MLflow when the run is
   opened, and from its own journal) and drops every new record at a step ``<=`` that. The same
   check runs again just before delivery, against steps re-read from the server after any failed
   delivery, so a request that reached the server but whose answer was lost is not sent twice.
   Final metrics (``log_final``) go one step past the last epoch, so they are the run's latest
   values (what the MLflow run table and ``run.data.metrics`` show) even when a per-epoch metric
   has the same name.

3. **Journal first, deliver second.** Every record (run opening, params, metrics, tags,
   artifacts, status) is appended to a JSONL journal in ``buffer_dir`` and fsync'd before any
   network call; delivered records are acknowledged in the same journal. A failed delivery
   (connection refused, timeout, 5xx, a locked sqlite file) leaves the record pending and
   training goes on: one warning per outage, none per record. Every later call first delivers
   the pending records in order; ``finish()`` retries with backoff for a bounded time and returns
   a ``DeliveryReport``. Whatever is still pending stays in the journal, for a resumed trial or
   ``flush_journal`` to deliver, or is handed to ``keep_pending`` (the sweep's storage:
   trainables.outbox), because a trial's own folder does not outlive it.
   If the server was down when the trial started, the run is found or created at the first
   delivery that succeeds. Records MLflow refuses for good (a 4xx answer: an invalid name, a
   param whose value changed) are acknowledged as rejected, counted and warned about.

MLflow's own HTTP client retries a failed request up to 7 times with exponential backoff (about
four minutes) and waits 120 s for an answer; training would stall that long at every epoch of an
outage. The journal already retries, so for HTTP stores the tracker sets
``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` and ``MLFLOW_HTTP_REQUEST_TIMEOUT=10`` in its process
environment, unless they are already set (an explicit setting wins).

Artifacts are copied into ``buffer_dir`` when they are recorded, so what is delivered later is
what was there at that moment; the copy is deleted once delivered.

For the UI: experiments are created with ``mlflow.experimentKind = custom_model_development``
(MLflow 3's model-training kind; `mark_training_experiment` adds it to older sweeps), and a
trial's description (``mlflow.note.content``, `TrialTracker.set_note`) and its dataset input
(`TrialTracker.log_dataset`) go through the journal like everything else.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (
    MAX_EXPERIMENT_TAG_VAL_LENGTH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

logger = logging.getLogger(__name__)

TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
JOURNAL_NAME = "mlflow_journal.jsonl"
BLOBS_DIR = "mlflow_blobs"
PARENT_TAG = "sweep_parent"
FINAL_STEP_TAG = "final_step"
NOTE_TAG = "mlflow.note.content"  # a run's or an experiment's description, Markdown in the UI
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"  # MLflow 3's "Machine learning" experiment kind

# MLflow's HTTP client defaults (7 retries, 120 s timeout) would stall training during an outage;
# the journal is the retry mechanism, so one quick attempt per delivery is enough.
SHORT_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


# --------------------------------------------------------------------------- store and experiment


def resolve_tracking_uri(explicit: str | None) -> str:
    """The tracking URI to use: the spec's value, else MLFLOW_TRACKING_URI, else a local sqlite
    file ``mlflow.db`` in the working directory.

    A relative sqlite path is made absolute here, against the current directory, because Ray
    runs each trial in its own working directory: ``sqlite:///mlflow.db`` would otherwise become
    one database per trial.
    """
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri.strip():
        return f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    uri = uri.strip()
    if "://" not in uri:
        raise ValueError(
            f"tracking_uri {uri!r} is not a URI; MLflow 3.17 rejects the file store. "
            "Use sqlite:///path/to/mlflow.db or http://host:port."
        )
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        path = Path(uri[len("sqlite:///") :])
        if not path.is_absolute():
            return f"sqlite:///{Path.cwd() / path}"
    return uri


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created if missing and restored if it was deleted (a deleted
    experiment keeps its name reserved, so creating it again would fail)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"experiment name must be a non-empty string, got {name!r}")
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            logger.warning("MLflow experiment %r was deleted; restoring it", name)
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(
            name,
            artifact_location=_artifact_location(client.tracking_uri, name),
            tags={EXPERIMENT_KIND_TAG: TRAINING_KIND},
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # another trial created it meanwhile
            raise
        return client.get_experiment_by_name(name).experiment_id


def _artifact_location(tracking_uri: str, experiment: str) -> str | None:
    # A sqlite store's default artifact root is ./mlruns of whatever directory the process is in
    # (a Ray trial's own directory); keep artifacts beside the database instead.
    if not tracking_uri.startswith("sqlite:///") or tracking_uri.endswith(":memory:"):
        return None
    root = Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts"
    return (root.resolve() / re.sub(r"[^A-Za-z0-9._-]+", "_", experiment)).as_uri()


def _use_short_http_retries(tracking_uri: str) -> None:
    if tracking_uri.startswith(("http://", "https://")):
        for key, value in SHORT_HTTP_SETTINGS.items():
            os.environ.setdefault(key, value)


# --------------------------------------------------------------------------- params and tags


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings to flat MLflow params: ``{"optim": {"lr": 1e-3}} -> {"optim.lr": "0.001"}``.

    Scalars become ``str(value)``; lists and tuples become JSON. Keys already flat stay as they
    are, so flattening twice changes nothing.
    """
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, prefix=f"{name}."))
        elif isinstance(value, list | tuple):
            flat[name] = json.dumps(value, default=str)
        else:
            flat[name] = str(value)
    return flat


def _param_values(params: Mapping[str, object]) -> dict[str, str]:
    flat = flatten_config(params)
    for key, value in flat.items():
        if len(value) > MAX_PARAM_VAL_LENGTH:
            logger.warning(
                "param %r is longer than MLflow's %d characters; truncated",
                key,
                MAX_PARAM_VAL_LENGTH,
            )
            flat[key] = value[: MAX_PARAM_VAL_LENGTH - 3] + "..."
    return flat


def _filter_value(value: object) -> str:
    text = str(value)
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise ValueError(f"tag value {text!r} holds both quote characters; MLflow cannot search it")


# --------------------------------------------------------------------------- sweep level


def start_sweep_run(
    tracking_uri: str | None,
    experiment: str,
    *,
    tags: Mapping[str, str],
    params: Mapping[str, object],
) -> str:
    """The sweep's parent run id: the existing one (tag ``sweep_parent=true``) when the sweep is
    run again, else a new run. Its status is set to RUNNING; params already logged keep their
    first value (a changed value is warned about, since MLflow params are immutable)."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    experiment_id = get_or_create_experiment(client, experiment)
    mark_training_experiment(client, experiment_id)  # sweeps created before the tag existed
    run_tags = {str(k): str(v) for k, v in tags.items()} | {PARENT_TAG: "true"}
    found = client.search_runs(
        [experiment_id],
        f"tags.{PARENT_TAG} = 'true'",
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    if found:
        run_id = found[0].info.run_id
        _log_tags(client, run_id, run_tags)
        client.update_run(run_id, status="RUNNING")
    else:
        name = run_tags.get("sweep", experiment)
        run_id = client.create_run(experiment_id, tags=run_tags, run_name=name).info.run_id
    _log_new_params(client, run_id, _param_values(params))
    return run_id


def end_sweep_run(tracking_uri: str | None, run_id: str, status: str = "FINISHED") -> None:
    """Set the parent run's terminal status (FINISHED, FAILED or KILLED)."""
    _check_status(status)
    MlflowClient(resolve_tracking_uri(tracking_uri)).set_terminated(run_id, status)


def find_trial_runs(tracking_uri: str | None, experiment: str, **tag_filters: object) -> list[Run]:
    """Every non-deleted trial run of ``experiment`` whose tags equal ``tag_filters`` (values
    compared as strings), sorted by trial_key. The parent run is never included. An experiment
    that does not exist has no runs."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage == "deleted":
        return []
    clauses = [
        f"tags.`{key}` = {_filter_value(value)}" for key, value in sorted(tag_filters.items())
    ]
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [found.experiment_id],
            " AND ".join(clauses),
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            page_token=token,
        )
        runs.extend(run for run in page if "trial_key" in run.data.tags)
        token = page.token
        if not token:
            break
    return sorted(runs, key=lambda run: run.data.tags["trial_key"])


def _log_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    for chunk in _chunks([RunTag(k, v) for k, v in tags.items()], MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, tags=chunk)


def _log_new_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    # MLflow params are immutable: send only the missing ones, so a resumed trial never fails.
    existing = client.get_run(run_id).data.params
    changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
    if changed:
        logger.warning("run %s keeps its first value of changed params %s", run_id, changed)
    items = [Param(k, v) for k, v in params.items() if k not in existing]
    for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=chunk)


def _chunks(items: list, size: int) -> Iterable[list]:
    # log_batch takes at most 1000 metrics and 100 params or tags per call.
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _check_status(status: str) -> None:
    if status not in TERMINAL_STATUSES:
        raise ValueError(f"status must be one of {', '.join(TERMINAL_STATUSES)}; got {status!r}")


# --------------------------------------------------------------------------- the journal


@dataclass(frozen=True)
class DeliveryReport:
    """What reached MLflow: records delivered by this process, records still pending in the
    journal (to be delivered later), records MLflow refused for good."""

    run_id: str | None
    delivered: int
    pending: int
    rejected: int = 0

    @property
    def ok(self) -> bool:
        return self.pending == 0 and self.rejected == 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class _Rejected(Exception):
    """A record that can never be delivered (its artifact copy is gone, it has no run)."""


class _Journal:
    """Append-only JSONL in ``directory``: records ``{"seq", "kind", "t", ...}``, acknowledgements
    ``{"ack": seq}`` and the run id once known ``{"run": id}``. Each line is fsync'd; a line torn
    by a crash is cut off when the journal is opened again."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / JOURNAL_NAME
        self.records: list[dict] = []
        self.run_id: str | None = None
        self._acked: set[int] = set()
        self._load()
        self.pending = [r for r in self.records if r["seq"] not in self._acked]
        self.next_seq = 1 + max((r["seq"] for r in self.records), default=0)

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # a write torn by a crash: drop the partial line
            data = data[: data.rfind(b"\n") + 1]
            self.path.write_bytes(data)
        for number, line in enumerate(data.decode().splitlines(), start=1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(
                    f"{self.path}:{number}: not a journal line: {line[:80]!r}"
                ) from None
            if "seq" in entry:
                self.records.append(entry)
            elif "ack" in entry:
                self._acked.add(entry["ack"])
            elif "run" in entry:
                self.run_id = entry["run"]

    def blob_dir(self, seq: int) -> Path:
        path = self.directory / BLOBS_DIR / f"{seq:06d}"
        shutil.rmtree(path, ignore_errors=True)  # left over by a crash before its record
        path.mkdir(parents=True)
        return path

    def append(self, kind: str, **payload: Any) -> dict:
        record = {"seq": self.next_seq, "kind": kind, "t": _now_ms(), **payload}
        self._write(record)
        self.next_seq += 1
        self.records.append(record)
        self.pending.append(record)
        return record

    def ack(self, record: dict, rejected: str | None = None) -> None:
        self._write({"ack": record["seq"]} | ({"rejected": rejected} if rejected else {}))
        self._acked.add(record["seq"])
        self.pending.remove(record)
        if record["kind"] == "artifact":  # the copy is in MLflow now
            shutil.rmtree((self.directory / record["blob"]).parent, ignore_errors=True)

    def set_run(self, run_id: str) -> None:
        if run_id != self.run_id:
            self._write({"run": run_id})
            self.run_id = run_id

    def final_step(self) -> int | None:
        finals = [r["metrics"][0]["step"] for r in self.records if r.get("final")]
        return max(finals, default=None)

    def logged_steps(self) -> dict[str, int]:
        steps: dict[str, int] = {}
        for record in self.records:
            for m in record.get("metrics", ()):
                steps[m["key"]] = max(steps.get(m["key"], -1), m["step"])
        return steps

    def _write(self, entry: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- delivery


def _is_permanent(exc: Exception) -> bool:
    # A 4xx answer will be the same next time; anything else (connection refused, timeout, 5xx,
    # a locked sqlite file) may pass later.
    if isinstance(exc, _Rejected):
        return True
    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return 400 <= status < 500 and status not in (408, 429)
    return False


class _Courier:
    """Delivers a journal's pending records to MLflow, in order, and keeps track of outages."""

    def __init__(self, tracking_uri: str, journal: _Journal, *, retry_after_s: float):
        self.tracking_uri = tracking_uri
        self.journal = journal
        self.run_id = journal.run_id
        self.delivered = 0
        self.rejected = 0
        self.server_steps: dict[str, int] | None = None  # None: re-read before sending metrics
        self.final_step: int | None = None  # the step of final metrics, once logged
        self._client: MlflowClient | None = None
        self._retry_after_s = retry_after_s
        self._backoff_s = retry_after_s
        self._down_since: float | None = None
        self._next_try = 0.0

    def flush(self, *, force: bool = False) -> bool:
        """Deliver pending records in order; False if some are still pending. Between attempts
        during an outage it waits ``retry_after_s`` (doubling, at most 60 s) unless forced."""
        if not self.journal.pending:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        while self.journal.pending:
            record = self.journal.pending[0]
            try:
                self._deliver(record)
            except Exception as exc:
                if not _is_permanent(exc):
                    self._outage(exc)
                    return False
                self._reject(record, exc)
                continue
            self.journal.ack(record)
            self.delivered += 1
        self._recovered()
        return True

    def report(self) -> DeliveryReport:
        return DeliveryReport(self.run_id, self.delivered, len(self.journal.pending), self.rejected)

    # ---- one record

    def _deliver(self, record: dict) -> None:
        kind = record["kind"]
        if kind == "open":
            self._open(record)
            return
        if self.run_id is None:
            raise _Rejected("no MLflow run: the journal has no run opening before this record")
        client = self._connect()
        if kind == "params":
            _log_new_params(client, self.run_id, record["params"])
        elif kind == "metrics":
            self._log_metrics(client, record)
        elif kind == "artifact":
            self._log_artifact(client, record)
        elif kind == "tags":
            self._log_tag_changes(client, record)
        elif kind == "status":
            client.set_terminated(self.run_id, record["status"], end_time=record["t"])
        elif kind == "inputs":
            _log_dataset_inputs(client, self.run_id, record["datasets"])
        else:
            raise _Rejected(f"unknown journal record kind {kind!r}")

    def _open(self, record: dict) -> None:
        client = self._connect()
        experiment_id = get_or_create_experiment(client, record["experiment"])
        run = None
        for candidate in dict.fromkeys(filter(None, (record.get("run_id"), self.run_id))):
            run = _active_run(client, candidate)
            if run is not None:
                break
        if run is None:
            run = _run_by_trial_key(client, experiment_id, record["trial_key"])
        if run is None:
            run = client.create_run(
                experiment_id,
                start_time=record["t"],
                tags=record["tags"],
                run_name=record["trial_key"],
            )
            self.server_steps = {}
        else:
            _log_tags(client, run.info.run_id, record["tags"])
            client.update_run(run.info.run_id, status="RUNNING")
            self.server_steps = _max_steps(client, run.info.run_id)
            if FINAL_STEP_TAG in run.data.tags:
                self.final_step = int(run.data.tags[FINAL_STEP_TAG])
        self.run_id = run.info.run_id
        self.journal.set_run(self.run_id)

    def _log_metrics(self, client: MlflowClient, record: dict) -> None:
        if self.server_steps is None:
            self.server_steps = _max_steps(client, self.run_id)
        steps = self.server_steps
        fresh = [m for m in record["metrics"] if m["step"] > steps.get(m["key"], -1)]
        items = [Metric(m["key"], m["value"], m["t"], m["step"]) for m in fresh]
        for chunk in _chunks(items, MAX_METRICS_PER_BATCH):
            client.log_batch(self.run_id, metrics=chunk)
        for m in fresh:
            steps[m["key"]] = max(steps.get(m["key"], -1), m["step"])
        if record.get("final"):  # remembered so that a rerun of the end logs at the same step
            step = record["metrics"][0]["step"]
            client.log_batch(self.run_id, tags=[RunTag(FINAL_STEP_TAG, str(step))])
            self.final_step = step

    def _log_tag_changes(self, client: MlflowClient, record: dict) -> None:
        _log_tags(client, self.run_id, record.get("tags", {}))
        if record.get("delete"):  # deleting a tag the run lacks is an error in MLflow
            present = client.get_run(self.run_id).data.tags
            for key in record["delete"]:
                if key in present:
                    client.delete_tag(self.run_id, key)

    def _log_artifact(self, client: MlflowClient, record: dict) -> None:
        blob = self.journal.directory / record["blob"]
        if not blob.exists():
            raise _Rejected(f"buffered artifact copy {blob} is missing")
        if blob.is_dir():
            target = "/".join(filter(None, (record.get("artifact_path"), blob.name)))
            client.log_artifacts(self.run_id, str(blob), target)
        else:
            client.log_artifact(self.run_id, str(blob), record.get("artifact_path"))

    # ---- connection state

    def _connect(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def _outage(self, exc: Exception) -> None:
        now = time.monotonic()
        if self._down_since is None:
            logger.warning(
                "MLflow at %s is unreachable (%s: %s); training continues, records are kept in "
                "%s and delivered when it is back",
                self.tracking_uri,
                type(exc).__name__,
                _first_line(exc),
                self.journal.path,
            )
            self._down_since = now
            self._backoff_s = self._retry_after_s
        else:
            self._backoff_s = min(2 * self._backoff_s, 60.0)
        self._next_try = now + self._backoff_s
        # The failed request may have reached the server: re-read steps before sending again.
        self.server_steps = None

    def _recovered(self) -> None:
        if self._down_since is not None:
            logger.warning(
                "MLflow at %s is reachable again after %.0f s; buffered records delivered",
                self.tracking_uri,
                time.monotonic() - self._down_since,
            )
            self._down_since = None
        self._next_try = 0.0

    def _reject(self, record: dict, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {_first_line(exc)}"
        logger.warning(
            "MLflow refused journal record %d (%s): %s", record["seq"], record["kind"], reason
        )
        self.journal.ack(record, rejected=reason)
        self.rejected += 1


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _active_run(client: MlflowClient, run_id: str) -> Run | None:
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            logger.warning("MLflow run %s does not exist; looking the trial up by its tag", run_id)
            return None
        raise
    return run if run.info.lifecycle_stage == "active" else None


def _run_by_trial_key(client: MlflowClient, experiment_id: str, trial_key: str) -> Run | None:
    runs = client.search_runs(
        [experiment_id],
        f"tags.trial_key = {_filter_value(trial_key)}",
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0] if runs else None


def _max_steps(client: MlflowClient, run_id: str) -> dict[str, int]:
    keys = client.get_run(run_id).data.metrics
    return {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in keys}


def _flush_until(courier: _Courier, timeout_s: float) -> bool:
    """Retry delivery with exponential backoff (0.5 s doubling to 8 s) for at most timeout_s."""
    deadline = time.monotonic() + timeout_s
    delay = 0.5
    while not courier.flush(force=True):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(2 * delay, 8.0)
    return True


def pending_records(buffer_dir: Path) -> int:
    """How many records of the journal in ``buffer_dir`` are not delivered yet (0: no journal)."""
    if not (Path(buffer_dir) / JOURNAL_NAME).exists():
        return 0
    return len(_Journal(Path(buffer_dir)).pending)


def flush_journal(
    buffer_dir: Path, tracking_uri: str | None = None, *, timeout_s: float = 0.0
) -> DeliveryReport:
    """Deliver what a trial left pending in its journal (for example after its process died
    during an outage). Retries for up to ``timeout_s`` seconds."""
    path = Path(buffer_dir) / JOURNAL_NAME
    if not path.exists():
        raise FileNotFoundError(f"no MLflow journal at {path}")
    uri = resolve_tracking_uri(tracking_uri)
    _use_short_http_retries(uri)
    courier = _Courier(uri, _Journal(Path(buffer_dir)), retry_after_s=0.0)
    _flush_until(courier, timeout_s)
    return courier.report()


# --------------------------------------------------------------------------- the trial's tracker


class TrialTracker:
    """One trial's MLflow run. Training never raises because tracking is down (see the module
    docstring for the rules); bad input (a non-numeric metric, a missing file) raises at once.

    ``retry_after_s`` is the first wait between delivery attempts during an outage (it doubles,
    at most 60 s); ``finish_timeout_s`` bounds the retries of ``finish()``. ``keep_pending``, when
    given, is called by ``finish()`` with the journal folder if records are still pending, and
    returns where it put them (the sweep's storage: trainables.outbox), so that they outlive the
    trial's folder.
    """

    def __init__(
        self,
        *,
        tracking_uri: str | None,
        experiment: str,
        trial_key: str,
        tags: Mapping[str, str],
        params: Mapping[str, object],
        buffer_dir: Path,
        parent_run_id: str | None = None,
        run_id: str | None = None,
        finish_timeout_s: float = 60.0,
        retry_after_s: float = 5.0,
        keep_pending: Callable[[Path, DeliveryReport], str] | None = None,
    ):
        for field, value in (("experiment", experiment), ("trial_key", trial_key)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{field} must be a non-empty string, got {value!r}")
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment
        self.trial_key = trial_key
        self.tags = {str(k): str(v) for k, v in tags.items()} | {
            "trial_key": trial_key,
            "mlflow.runName": trial_key,
        }
        if parent_run_id:
            self.tags["mlflow.parentRunId"] = parent_run_id
        self.params = _param_values(params)
        self.buffer_dir = Path(buffer_dir)
        self.parent_run_id = parent_run_id
        self.finish_timeout_s = finish_timeout_s
        self.retry_after_s = retry_after_s
        self.keep_pending = keep_pending
        self._explicit_run_id = run_id
        self._journal: _Journal | None = None
        self._courier: _Courier | None = None
        self._steps: dict[str, int] = {}
        self._report: DeliveryReport | None = None

    @property
    def run_id(self) -> str | None:
        if self._courier is not None and self._courier.run_id is not None:
            return self._courier.run_id
        return self._explicit_run_id

    def start(self) -> None:
        """Open the run (create, reopen by id, or find by trial_key tag) and log tags and params.
        With the server down, the run is opened at the first delivery that succeeds."""
        if self._journal is not None:
            raise RuntimeError(f"tracker of {self.trial_key} was already started")
        _use_short_http_retries(self.tracking_uri)
        self._journal = _Journal(self.buffer_dir)
        self._check_journal_owner()
        self._courier = _Courier(self.tracking_uri, self._journal, retry_after_s=self.retry_after_s)
        self._steps = self._journal.logged_steps()
        self._journal.append(
            "open",
            experiment=self.experiment,
            trial_key=self.trial_key,
            tags=self.tags,
            run_id=self._explicit_run_id,
        )
        self._journal.append("params", params=self.params)
        self._flush()

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Per-epoch metrics at ``step=epoch``; metrics already logged at this step or a later one
        (an epoch replayed after a resume) are dropped."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self._record_metrics(epoch, metrics)

    def log_final(self, metrics: Mapping[str, float]) -> None:
        """Final metrics (test_auprc, val_auprc, best_epoch, ...), one step past the last epoch so
        that they are the run's latest values. A trial that ends again after a resume logs them at
        the same step as before (tag ``final_step``), so they are not logged twice."""
        journal = self._open_journal()
        known = (self._courier.final_step, journal.final_step())
        step = max((s for s in known if s is not None), default=None)
        if step is None:
            step = 1 + max(self._steps.values(), default=-1)
        self._record_metrics(step, metrics, final=True)

    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> None:
        """A file or a directory, copied now and uploaded under ``artifact_path``."""
        journal = self._open_journal()
        source = Path(local_path)
        if not source.exists():
            raise FileNotFoundError(f"artifact {source} does not exist")
        blob = journal.blob_dir(journal.next_seq) / source.name
        if source.is_dir():
            shutil.copytree(source, blob)
        else:
            shutil.copy2(source, blob)
        self._record_artifact(blob, artifact_path)

    def log_dict(self, obj: dict, artifact_file: str) -> None:
        """``obj`` as JSON (or YAML for a .yaml/.yml name) at ``artifact_file`` in the run."""
        journal = self._open_journal()
        artifact_path, name = _split_artifact_file(artifact_file)
        blob = journal.blob_dir(journal.next_seq) / name
        if blob.suffix in (".yaml", ".yml"):
            import yaml

            blob.write_text(yaml.safe_dump(obj, sort_keys=False), encoding="utf-8")
        else:
            blob.write_text(json.dumps(obj, indent=2, default=str), encoding="utf-8")
        self._record_artifact(blob, artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """``text`` as the file ``artifact_file`` in the run."""
        journal = self._open_journal()
        artifact_path, name = _split_artifact_file(artifact_file)
        blob = journal.blob_dir(journal.next_seq) / name
        blob.write_text(text, encoding="utf-8")
        self._record_artifact(blob, artifact_path)

    def log_tags(self, tags: Mapping[str, str], delete: Iterable[str] = ()) -> None:
        """Set ``tags`` on the run and remove the tags named in ``delete`` (if present)."""
        journal = self._open_journal()
        values = {str(k): str(v)[:MAX_TAG_VAL_LENGTH] for k, v in tags.items()}
        journal.append("tags", tags=values, delete=sorted(delete))
        self._flush()

    def log_figure(self, fig, artifact_file: str) -> None:
        """A matplotlib figure saved in the format its name says (.png, .svg, .pdf, ...)."""
        journal = self._open_journal()
        artifact_path, name = _split_artifact_file(artifact_file)
        if not Path(name).suffix:
            raise ValueError(f"artifact_file {artifact_file!r} needs an extension such as .png")
        blob = journal.blob_dir(journal.next_seq) / name
        fig.savefig(blob)
        self._record_artifact(blob, artifact_path)

    def set_note(self, text: str) -> None:
        """The run's description (``mlflow.note.content``, Markdown in the UI); the last one set
        wins. Journalled and delivered like every other record."""
        if not isinstance(text, str):
            raise ValueError(f"a run note must be a string, got {type(text).__name__}")
        self.log_tags({NOTE_TAG: _limit_tag(text, MAX_TAG_VAL_LENGTH)})

    def log_dataset(self, dataset: Mapping[str, str]) -> None:
        """One MLflow dataset input of the run: ``{"name", "digest", "source_type", "source"}``
        plus optional ``"schema"``, ``"profile"`` and ``"context"`` (the input's
        ``mlflow.data.context`` tag, e.g. "training"). Logging the same name and digest again
        (a resumed trial) adds nothing."""
        missing = sorted({"name", "digest", "source_type", "source"} - set(dataset))
        if missing:
            raise ValueError(f"dataset input lacks {missing}; got keys {sorted(dataset)}")
        if len(str(dataset["digest"])) > MAX_DATASET_DIGEST_LENGTH:
            raise ValueError(
                f"dataset digest {dataset['digest']!r} is longer than MLflow's "
                f"{MAX_DATASET_DIGEST_LENGTH} characters"
            )
        journal = self._open_journal()
        journal.append("inputs", datasets=[{k: str(v) for k, v in dataset.items()}])
        self._flush()

    def finish(self, status: str = "FINISHED") -> DeliveryReport:
        """Set the terminal status and deliver everything pending, retrying with backoff for at
        most ``finish_timeout_s``. What is still pending stays in the journal. Calling it again
        only retries the delivery once and returns the updated report."""
        _check_status(status)
        if self._report is not None:
            self._courier.flush(force=True)
            self._report = self._courier.report()
            return self._report
        journal = self._open_journal()
        journal.append("status", status=status)
        _flush_until(self._courier, self.finish_timeout_s)
        self._report = self._courier.report()
        if self._report.pending and self.keep_pending is not None:
            where = self.keep_pending(journal.directory, self._report)
            logger.warning(
                "trial %s: %d MLflow records not delivered; kept in %s and delivered by the "
                "next `sweep run`, `sweep resume`, `sweep status` or `sweep sync`",
                self.trial_key,
                self._report.pending,
                where,
            )
        elif not self._report.ok:
            logger.warning(
                "trial %s: %d MLflow records not delivered, %d refused; the journal %s keeps "
                "them (trainables.tracking.flush_journal delivers them later)",
                self.trial_key,
                self._report.pending,
                self._report.rejected,
                journal.path,
            )
        return self._report

    def state(self) -> dict:
        """What to keep in the trial checkpoint to reopen this run on resume."""
        return {"run_id": self.run_id}

    def __enter__(self) -> TrialTracker:
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._report is None:
            interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
            self.finish("FINISHED" if exc_type is None else "KILLED" if interrupted else "FAILED")

    # ---- internals

    def _open_journal(self) -> _Journal:
        if self._journal is None:
            raise RuntimeError(f"call start() before logging for trial {self.trial_key}")
        if self._report is not None:
            raise RuntimeError(f"trial {self.trial_key} already finished")
        return self._journal

    def _check_journal_owner(self) -> None:
        owners = {r["trial_key"] for r in self._journal.records if r["kind"] == "open"}
        if owners - {self.trial_key}:
            raise ValueError(
                f"buffer_dir {self.buffer_dir} holds the MLflow journal of {sorted(owners)}, "
                f"not of {self.trial_key}: give each trial its own buffer_dir"
            )

    def _record_metrics(self, step: int, metrics: Mapping[str, float], final: bool = False) -> None:
        journal = self._open_journal()
        values = _metric_values(metrics)
        fresh = {k: v for k, v in values.items() if step > self._steps.get(k, -1)}
        if len(fresh) < len(values):
            logger.debug(
                "trial %s step %d: %s already logged, dropped",
                self.trial_key,
                step,
                sorted(values.keys() - fresh.keys()),
            )
        if fresh:
            now = _now_ms()
            records = [{"key": k, "value": v, "step": step, "t": now} for k, v in fresh.items()]
            journal.append("metrics", metrics=records, **({"final": True} if final else {}))
            for key in fresh:
                self._steps[key] = step
        self._flush()

    def _record_artifact(self, blob: Path, artifact_path: str | None) -> None:
        journal = self._open_journal()
        relative = blob.relative_to(journal.directory).as_posix()
        journal.append("artifact", blob=relative, artifact_path=artifact_path)
        self._flush()

    def _flush(self) -> None:
        self._courier.flush()
        if self._courier.server_steps:  # steps logged by earlier processes of this trial
            for key, step in self._courier.server_steps.items():
                self._steps[key] = max(self._steps.get(key, -1), step)


def _metric_values(metrics: Mapping[str, float]) -> dict[str, float]:
    values = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"metric names must be non-empty strings, got {key!r}")
        try:
            values[key] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"metric {key!r} must be a number, got {value!r}") from None
    return values


def _split_artifact_file(artifact_file: str) -> tuple[str | None, str]:
    parts = [p for p in str(artifact_file).replace("\\", "/").split("/") if p]
    if not parts or ".." in parts:
        raise ValueError(f"artifact_file must be a relative file name, got {artifact_file!r}")
    return ("/".join(parts[:-1]) or None), parts[-1]


# --------------------------------------------------------------------------- what the UI shows
# The experiment's kind, descriptions and dataset inputs: what makes the MLflow UI open a sweep
# on its training runs and lets every page say what it is.

MAX_DATASET_DIGEST_LENGTH = 36  # the sqlite/SQL store's column width


def mark_training_experiment(client: MlflowClient, experiment_id: str) -> None:
    """Tag the experiment as a model-training one (``mlflow.experimentKind``) unless it already
    has a kind: a kind chosen by a user in the UI is kept."""
    experiment = client.get_experiment(experiment_id)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)


def set_experiment_note(client: MlflowClient, experiment_id: str, text: str) -> None:
    """The experiment's description (Markdown), shown on its page in the UI."""
    limited = _limit_tag(text, MAX_EXPERIMENT_TAG_VAL_LENGTH)
    client.set_experiment_tag(experiment_id, NOTE_TAG, limited)


def set_run_note(client: MlflowClient, run_id: str, text: str) -> None:
    """A run's description (Markdown), shown on the run's page in the UI."""
    client.set_tag(run_id, NOTE_TAG, _limit_tag(text, MAX_TAG_VAL_LENGTH))


def _limit_tag(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    logger.warning("description of %d characters cut to MLflow's %d", len(text), limit)
    return text[: limit - 3] + "..."


def _log_dataset_inputs(client: MlflowClient, run_id: str, datasets: list[dict]) -> None:
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = []
    for d in datasets:
        dataset = Dataset(
            d["name"], d["digest"], d["source_type"], d["source"], d.get("schema"), d.get("profile")
        )
        tags = [InputTag(MLFLOW_DATASET_CONTEXT, d["context"])] if d.get("context") else []
        inputs.append(DatasetInput(dataset, tags))
    client.log_inputs(run_id, datasets=inputs)
