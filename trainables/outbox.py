"""The tracking outbox: MLflow records a trial could not deliver, kept in the sweep's storage.

A trial ends (finished, failed or killed) and MLflow has been unreachable for longer than its
finish window: its journal (trainables.journal) still holds records. The trial's own folder is
scratch and goes away with it, so the journal folder is copied here, into the sweep's storage
(a local folder or s3://, through pyarrow's filesystem layer like the rest of the sweep), and
the next `sweep run`, `sweep resume`, `sweep status` or `sweep sync NAME` delivers it.

    <storage>/<sweep>/tracking_outbox/<trial_key>/v<lines>/
        mlflow_journal.jsonl   the journal: records, acknowledgements, the run id once known
        mlflow_blobs/          copies of the artifacts not delivered yet
        entry.json             written last: {trial_key, tracking_uri, pending, kept_at}

Exactly once, however often delivery is interrupted: each copy is a new version folder named by
the journal's length (a journal only grows), complete once its entry.json exists, and older
versions are deleted only after a newer one is complete; a reader takes the newest complete
version. Delivering a version again is harmless: the courier re-reads from MLflow the steps each
metric already has and sends only later ones, params only when missing, tags and the status are
set (not added), and an artifact overwrites its own path.

A trial that starts again (Ray's retry, `sweep resume`) discards its outbox entry first
(`discard`): a restored journal already holds the same records, and in any case the new
attempt's own end sets the run's status, which an old entry delivered later would overwrite.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from trainables.files import atomic_write, filesystem_for

# trainables.journal (hence mlflow, seconds to import) is imported only to deliver or keep
# records: `sweep status` reads the outbox without it.

logger = logging.getLogger(__name__)

OUTBOX_DIR = "tracking_outbox"
ENTRY_FILE = "entry.json"


@dataclass(frozen=True)
class Outbox:
    """The outbox folder `root` of one sweep, inside filesystem `fs`."""

    fs: pafs.FileSystem
    root: str
    uri: str  # how to name it to a person

    @classmethod
    def at(cls, uri: str, endpoint: str | None = None) -> Outbox:
        fs, root = filesystem_for(uri, endpoint)
        return cls(fs, root, uri)

    # ---- writing (the trial)

    def keep(self, journal_dir: Path, trial_key: str, tracking_uri: str) -> str:
        """Copy a journal folder in as a new version of `trial_key`'s entry; returns its URI."""
        from trainables.journal import JOURNAL_NAME, pending_records

        lines = len((journal_dir / JOURNAL_NAME).read_bytes().splitlines())
        version = f"{self.root}/{trial_key}/v{lines:09d}"
        self.fs.create_dir(version, recursive=True)
        pafs.copy_files(
            str(journal_dir),
            version,
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=self.fs,
        )
        entry = {
            "trial_key": trial_key,
            "tracking_uri": tracking_uri,
            "pending": pending_records(journal_dir),
            "kept_at": time.time(),
        }
        self._write(f"{version}/{ENTRY_FILE}", json.dumps(entry, indent=1).encode())
        self._drop_older(trial_key, keep=version)
        return f"{self.uri}/{trial_key}"

    def discard(self, trial_key: str) -> None:
        """Forget `trial_key`'s entry (its restarted trial holds the same records)."""
        path = f"{self.root}/{trial_key}"
        if self.fs.get_file_info(path).type == pafs.FileType.Directory:
            self.fs.delete_dir(path)

    # ---- reading and delivering (the driver, `sweep status`, `sweep sync`)

    def entries(self) -> list[dict]:
        """The newest complete version of every entry: its entry.json plus "path"."""
        found = []
        for key in self._dirs(self.root):
            version = self._newest(key)
            if version is not None:
                entry = json.loads(self._read(f"{version}/{ENTRY_FILE}"))
                found.append(entry | {"path": version})
        return found

    def deliver(self, entry: dict, timeout_s: float = 0.0):
        """Deliver one entry to its MLflow store; remove it when nothing is left pending, else
        keep what is left as a newer version. Returns the DeliveryReport."""
        from trainables.journal import flush_journal

        with tempfile.TemporaryDirectory(prefix="outbox-") as tmp:
            local = Path(tmp) / "journal"
            local.mkdir()
            pafs.copy_files(
                entry["path"],
                str(local),
                source_filesystem=self.fs,
                destination_filesystem=pafs.LocalFileSystem(),
            )
            (local / ENTRY_FILE).unlink()
            report = flush_journal(local, entry["tracking_uri"], timeout_s=timeout_s)
            if report.pending:
                if report.delivered or report.rejected:  # progress: keep what is left
                    self.keep(local, entry["trial_key"], entry["tracking_uri"])
            else:
                self.discard(entry["trial_key"])
        return report

    # ---- internals

    def _dirs(self, path: str) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def _newest(self, trial_key: str) -> str | None:
        for name in reversed(self._dirs(f"{self.root}/{trial_key}")):
            version = f"{self.root}/{trial_key}/{name}"
            if self.fs.get_file_info(f"{version}/{ENTRY_FILE}").type == pafs.FileType.File:
                return version
        return None

    def _drop_older(self, trial_key: str, keep: str) -> None:
        for name in self._dirs(f"{self.root}/{trial_key}"):
            version = f"{self.root}/{trial_key}/{name}"
            if version != keep:
                self.fs.delete_dir(version)

    def _read(self, path: str) -> str:
        with self.fs.open_input_stream(path) as f:
            return f.read().decode()

    def _write(self, path: str, data: bytes) -> None:
        if isinstance(self.fs, pafs.LocalFileSystem):
            atomic_write(Path(path), data)
        else:  # an object store's PUT is atomic already
            with self.fs.open_output_stream(path) as f:
                f.write(data)


def keeper(outbox: Outbox, trial_key: str, tracking_uri: str):
    """The `keep_pending` hook of a TrialTracker: copies its journal into the outbox."""

    def keep(journal_dir: Path, report) -> str:
        return outbox.keep(journal_dir, trial_key, tracking_uri)

    return keep
