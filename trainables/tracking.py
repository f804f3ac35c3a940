"""MLflow tracking for one trial: one run per trial, resumed not duplicated, tolerant of outages.

`TrialTracker` is what the training loop logs through (trainables.loop): per-epoch and final
metrics, params and tags, artifacts, the run's description and dataset input, the terminal
status. It writes every record to its journal and lets the courier deliver it
(trainables.journal); the store, its experiments and the sweep's parent run are
trainables.mlflow_store, the tag and artifact names trainables.mlflow_schema. (Ray's MLflow
callback and ``setup_mlflow`` open a second run when a trial resumes; that is why they are not
used.)

Three rules make a trial exactly one run whatever happens to the process or the server:

1. **Find before create.** ``start()`` reopens the run id kept in the checkpoint, else the most
   recent non-deleted run of the experiment tagged with this ``trial_key``, and only then creates
   a run. Reopening sets the status back to RUNNING; ``finish()`` sets FINISHED, FAILED or KILLED.

2. **Each (metric, step) is logged once; the first value wins.** A resumed trial replays epochs:
   it restarts from the epoch-3 checkpoint after epochs 4 and 5 were already logged. The tracker
   knows, per metric, the highest step already logged (read back from MLflow when the run is
   opened, and from its own journal) and drops every new record at a step ``<=`` that; the
   courier checks again just before delivery. Final metrics (``log_final``) go one step past the
   last epoch, so they are the run's latest values (what the MLflow run table and
   ``run.data.metrics`` show) even when a per-epoch metric has the same name.

3. **Journal first, deliver second.** A failed delivery leaves the record pending in the journal
   and training goes on. Every later call first delivers the pending records in order;
   ``finish()`` retries with backoff for a bounded time and returns a ``DeliveryReport``.
   Whatever is still pending stays in the journal, for a resumed trial or
   ``trainables.journal.flush_journal`` to deliver, or is handed to ``keep_pending`` (the sweep's
   storage: trainables.outbox), because a trial's own folder does not outlive it. For an HTTP
   store the tracker makes MLflow's client try each request once, quickly
   (`mlflow_store.use_short_http_retries`): the journal is the retry mechanism.

For the UI: a trial's description (``mlflow.note.content``, `TrialTracker.set_note`) and its
dataset input (`TrialTracker.log_dataset`) go through the journal like everything else.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from trainables import mlflow_schema as schema
from trainables.journal import Courier, DeliveryReport, Journal, flush_until, now_ms
from trainables.mlflow_store import (
    check_status,
    limit_tag,
    param_values,
    resolve_tracking_uri,
    use_short_http_retries,
)

__all__ = ["MAX_DATASET_DIGEST_LENGTH", "TrialTracker"]

logger = logging.getLogger(__name__)

MAX_DATASET_DIGEST_LENGTH = 36  # the sqlite/SQL store's column width


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
            schema.TRIAL_KEY_TAG: trial_key,
            "mlflow.runName": trial_key,
        }
        if parent_run_id:
            self.tags["mlflow.parentRunId"] = parent_run_id
        self.params = param_values(params)
        self.buffer_dir = Path(buffer_dir)
        self.parent_run_id = parent_run_id
        self.finish_timeout_s = finish_timeout_s
        self.retry_after_s = retry_after_s
        self.keep_pending = keep_pending
        self._explicit_run_id = run_id
        self._journal: Journal | None = None
        self._courier: Courier | None = None
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
        use_short_http_retries(self.tracking_uri)
        self._journal = Journal(self.buffer_dir)
        self._check_journal_owner()
        self._courier = Courier(self.tracking_uri, self._journal, retry_after_s=self.retry_after_s)
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

    def set_note(self, text: str) -> None:
        """The run's description (``mlflow.note.content``, Markdown in the UI); the last one set
        wins. Journalled and delivered like every other record."""
        if not isinstance(text, str):
            raise ValueError(f"a run note must be a string, got {type(text).__name__}")
        self.log_tags({schema.NOTE_TAG: limit_tag(text, MAX_TAG_VAL_LENGTH)})

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
        check_status(status)
        if self._report is not None:
            self._courier.flush(force=True)
            self._report = self._courier.report()
            return self._report
        journal = self._open_journal()
        journal.append("status", status=status)
        flush_until(self._courier, self.finish_timeout_s)
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
                "them (trainables.journal.flush_journal delivers them later)",
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

    def _open_journal(self) -> Journal:
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
            now = now_ms()
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
