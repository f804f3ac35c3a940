"""Where a sweep keeps its state: a folder (local or shared) or an s3:// prefix.

    <storage>/<sweep name>/
        spec.yaml       the spec the sweep was last run with (what `sweep resume NAME` reads)
        ledger.json     one entry per trial key: config hash, state, final metrics (`sweep.ledger`)
        tune/           Ray Tune experiments, one per `sweep run` that had trials to run

Everything goes through pyarrow's filesystem layer, the same one Ray Tune uses for its
storage_path, so a sweep on MinIO (s3:// plus an endpoint) works like one on local disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from trainables.files import atomic_write, filesystem_for


@dataclass(frozen=True)
class SweepStore:
    """The storage folder of one sweep."""

    fs: pafs.FileSystem
    root: str  # path of <storage>/<name> inside `fs`
    storage_uri: str  # what Ray Tune gets as storage_path (a local path or s3://...)
    name: str

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
        return f"{self.storage_uri}/tune"

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
