"""A trial's MLflow records, journalled on disk first and delivered to the store second.

Every record a trial's tracker makes (run opening, params, metrics, tags, artifacts, dataset
inputs, status) is appended to a JSONL journal (`Journal`, ``mlflow_journal.jsonl`` in the
tracker's ``buffer_dir``) and fsync'd before any network call; the `Courier` delivers the pending
records in order and acknowledges each in the same journal. A failed delivery (connection
refused, timeout, 5xx, a locked sqlite file) leaves the record pending: one warning per outage,
none per record, and the next delivery starts with it. Records MLflow refuses for good (a 4xx
answer: an invalid name, a param whose value changed) are acknowledged as rejected, counted and
warned about. A `DeliveryReport` says what reached the store.

The courier keeps each (metric, step) logged once: before sending metrics it knows the steps the
run already has (read back when the run is opened, and again after any failed delivery, so a
request that reached the server but whose answer was lost is not sent twice). If the server was
down when the trial started, the run is found or created at the first delivery that succeeds
("open" record: the run id kept in the checkpoint, else the latest run with the trial's
``trial_key``, else a new run).

Artifacts are copied into ``buffer_dir`` when they are recorded (``mlflow_blobs/``), so what is
delivered later is what was there at that moment; the copy is deleted once delivered. Whatever a
trial leaves pending is delivered by a resumed trial, by `flush_journal`, or from the sweep's
outbox (trainables.outbox, sweep.sync), which keeps journal folders after the trial's own folder
is gone. The tracker that writes the journal is trainables.tracking.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_METRICS_PER_BATCH

from trainables import mlflow_schema as schema
from trainables.mlflow_store import (
    chunks,
    get_or_create_experiment,
    latest_run,
    log_new_params,
    log_tags,
    resolve_tracking_uri,
    use_short_http_retries,
)

__all__ = [
    "BLOBS_DIR",
    "JOURNAL_NAME",
    "Courier",
    "DeliveryReport",
    "Journal",
    "flush_journal",
    "flush_until",
    "now_ms",
    "pending_records",
]

logger = logging.getLogger(__name__)

JOURNAL_NAME = "mlflow_journal.jsonl"
BLOBS_DIR = "mlflow_blobs"

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


class _Rejected(Exception):
    """A record that can never be delivered (its artifact copy is gone, it has no run)."""


class Journal:
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
        record = {"seq": self.next_seq, "kind": kind, "t": now_ms(), **payload}
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


def now_ms() -> int:
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


class Courier:
    """Delivers a journal's pending records to MLflow, in order, and keeps track of outages."""

    def __init__(self, tracking_uri: str, journal: Journal, *, retry_after_s: float):
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
            log_new_params(client, self.run_id, record["params"])
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
            run = latest_run(client, experiment_id, schema.TRIAL_KEY_TAG, record["trial_key"])
        if run is None:
            run = client.create_run(
                experiment_id,
                start_time=record["t"],
                tags=record["tags"],
                run_name=record["trial_key"],
            )
            self.server_steps = {}
        else:
            log_tags(client, run.info.run_id, record["tags"])
            client.update_run(run.info.run_id, status="RUNNING")
            self.server_steps = _max_steps(client, run.info.run_id)
            if schema.FINAL_STEP_TAG in run.data.tags:
                self.final_step = int(run.data.tags[schema.FINAL_STEP_TAG])
        self.run_id = run.info.run_id
        self.journal.set_run(self.run_id)

    def _log_metrics(self, client: MlflowClient, record: dict) -> None:
        if self.server_steps is None:
            self.server_steps = _max_steps(client, self.run_id)
        steps = self.server_steps
        fresh = [m for m in record["metrics"] if m["step"] > steps.get(m["key"], -1)]
        items = [Metric(m["key"], m["value"], m["t"], m["step"]) for m in fresh]
        for chunk in chunks(items, MAX_METRICS_PER_BATCH):
            client.log_batch(self.run_id, metrics=chunk)
        for m in fresh:
            steps[m["key"]] = max(steps.get(m["key"], -1), m["step"])
        if record.get("final"):  # remembered so that a rerun of the end logs at the same step
            step = record["metrics"][0]["step"]
            client.log_batch(self.run_id, tags=[RunTag(schema.FINAL_STEP_TAG, str(step))])
            self.final_step = step

    def _log_tag_changes(self, client: MlflowClient, record: dict) -> None:
        log_tags(client, self.run_id, record.get("tags", {}))
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


def _max_steps(client: MlflowClient, run_id: str) -> dict[str, int]:
    keys = client.get_run(run_id).data.metrics
    return {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in keys}


def flush_until(courier: Courier, timeout_s: float) -> bool:
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
    return len(Journal(Path(buffer_dir)).pending)


def flush_journal(
    buffer_dir: Path, tracking_uri: str | None = None, *, timeout_s: float = 0.0
) -> DeliveryReport:
    """Deliver what a trial left pending in its journal (for example after its process died
    during an outage). Retries for up to ``timeout_s`` seconds."""
    path = Path(buffer_dir) / JOURNAL_NAME
    if not path.exists():
        raise FileNotFoundError(f"no MLflow journal at {path}")
    uri = resolve_tracking_uri(tracking_uri)
    use_short_http_retries(uri)
    courier = Courier(uri, Journal(Path(buffer_dir)), retry_after_s=0.0)
    flush_until(courier, timeout_s)
    return courier.report()


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
