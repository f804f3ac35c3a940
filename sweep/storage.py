"""Where a sweep keeps its state: a folder (local or shared) or an s3:// prefix.

    <storage>/<sweep name>/
        spec.yaml       the spec the sweep was last run with (what `sweep resume NAME` reads)
        ledger.json     one entry per trial key: config hash, state, final metrics (`sweep.ledger`)
        driver.lock     the running driver (`sweep.lock`)
        tracking_outbox/   MLflow records kept during an outage (`sweep.sync`, trainables.outbox)
        tune/           Ray Tune experiments, one per `sweep run` that had trials to run:
          run-001/
            .trial_keys.json   the trial keys it was started with
            .complete          written once every trial of it ended (finished or failed)
            <trial>/result.json   Ray Tune's: one JSON line per reported result

The names are this class's: the modules that read and write those files ask it for them.

Everything goes through pyarrow's filesystem layer, the same one Ray Tune uses for its
storage_path, so a sweep on MinIO (s3:// plus an endpoint) works like one on local disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pyarrow.fs as pafs

from trainables.files import atomic_write, filesystem_for


@dataclass(frozen=True)
class SweepStore:
    """The storage folder of one sweep."""

    fs: pafs.FileSystem
    root: str  # path of <storage>/<name> inside `fs`
    storage_uri: str  # what Ray Tune gets as storage_path (a local path or s3://...)
    name: str

    SPEC_FILE: ClassVar[str] = "spec.yaml"
    LEDGER_FILE: ClassVar[str] = "ledger.json"
    LOCK_FILE: ClassVar[str] = "driver.lock"
    TUNE_DIR: ClassVar[str] = "tune"
    KEYS_FILE: ClassVar[str] = ".trial_keys.json"
    COMPLETE_MARKER: ClassVar[str] = ".complete"
    RESULT_FILE: ClassVar[str] = "result.json"

    @classmethod
    def open(cls, storage: str, name: str, endpoint: str | None = None) -> SweepStore:
        fs, base = filesystem_for(storage, endpoint)
        uri = storage.rstrip("/") if "://" in storage else base
        return cls(fs=fs, root=f"{base}/{name}", storage_uri=f"{uri}/{name}", name=name)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def tune_uri(self) -> str:
        return f"{self.storage_uri}/{self.TUNE_DIR}"

    # -- the Ray Tune experiments, oldest first

    def experiments(self) -> list[str]:
        return self.list_dirs(self.TUNE_DIR)

    def new_experiment(self, trial_keys: list[str]) -> str:
        """Name the next experiment ("run-003") and record the trial keys it starts with."""
        experiment = f"run-{len(self.experiments()) + 1:03d}"
        self.write_text(json.dumps(sorted(trial_keys)), self.TUNE_DIR, experiment, self.KEYS_FILE)
        return experiment

    def trial_keys(self, experiment: str) -> list[str] | None:
        """The trial keys `experiment` started with (None: it never got that far)."""
        parts = (self.TUNE_DIR, experiment, self.KEYS_FILE)
        return json.loads(self.read_text(*parts)) if self.exists(*parts) else None

    def mark_complete(self, experiment: str) -> None:
        self.write_text("", self.TUNE_DIR, experiment, self.COMPLETE_MARKER)

    def is_complete(self, experiment: str) -> bool:
        return self.exists(self.TUNE_DIR, experiment, self.COMPLETE_MARKER)

    def trial_result(self, experiment: str, trial: str) -> str:
        """Path of a trial's Ray Tune `result.json` (`trial`: its folder, the trial's run key)."""
        return self.path(self.TUNE_DIR, experiment, trial, self.RESULT_FILE)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def read_text(self, *parts: str) -> str:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return f.read().decode()

    def write_text(self, text: str, *parts: str) -> None:
        """Write a whole file atomically: readers see the old or the new text, never a mix."""
        target = self.path(*parts)
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        if self.is_local:
            atomic_write(Path(target), text.encode())
        else:  # an object store's PUT is atomic already
            with self.fs.open_output_stream(target) as f:
                f.write(text.encode())

    def list_dirs(self, *parts: str) -> list[str]:
        selector = pafs.FileSelector(self.path(*parts), allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)
