"""Decode once: the whole dataset, resized, as two memory-mapped uint8 arrays shared by all trials.

A sweep runs hundreds of trials on the same few thousand TIFFs. Decoding and resizing them in
every trial, every epoch, would cost more than the training of the small models, so the first
trial on a node decodes everything once into

    <cache dir>/<dataset>-<size>px-<fingerprint>/
        images.npy   N x S x S x 3 uint8   (np.load(..., mmap_mode="r"): pages shared by all
        masks.npy    N x S x S     uint8    processes on the node, read lazily by the OS)
        index.json   per row: patient, slice number, positive; plus the fingerprint

and every later trial only maps the files. At 256 px LGG is ~1 GB, read from the page cache.

The cache root (`cache_root`): a trial's `cache_dir`, else $SWEEP_DATA_CACHE, else
~/.cache/nvfp4-sweep. Everything a node caches is a subfolder of it: the decoded datasets in
`data/` (this module), the generated synthetic datasets in `synthetic/` (trainables.data) and
torch.compile's kernels in `inductor/` (trainables.factories).

Keyed, not trusted: the fingerprint hashes the resolved root, every image/mask path with its
size and modification time, the image size and a format version. Editing, adding or removing
a file changes it, and the next build decodes into a new entry (old entries stay until deleted;
a process still mapping one keeps working).

Concurrent builders: an entry is decoded into a private temporary folder and published with one
atomic `os.rename`, so a reader sees either nothing or a complete entry. An `fcntl` lock per key
makes the other builders wait instead of decoding the same data in parallel; should the lock not
hold (some network filesystems), the rename still lets exactly one result win and the others
discard theirs.

Images are resized as albumentations' `Resize` in the pipelines resizes them (OpenCV, bilinear
for images, nearest for masks); the pipelines' own `Resize` is then an identity, and cached and
uncached data give bit-identical samples (tested).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from trainables import lgg
from trainables.lgg import DatasetError, SliceInfo

CACHE_FORMAT = 1
ENV_VAR = "SWEEP_DATA_CACHE"
DECODED_DIR = "data"  # the decoded datasets' subfolder of the cache root


def cache_root(configured: str | os.PathLike | None = None) -> Path:
    """The node's cache folder: `configured` (a trial's cache_dir), else $SWEEP_DATA_CACHE, else
    ~/.cache/nvfp4-sweep. What is cached lives in subfolders of it (see the module docstring)."""
    chosen = configured or os.environ.get(ENV_VAR) or Path.home() / ".cache" / "nvfp4-sweep"
    return Path(chosen).expanduser()


def fingerprint(scan: lgg.ScanResult, image_size: int) -> str:
    """A hash of what the cache entry depends on: file list, sizes, mtimes and the image size."""
    digest = hashlib.sha256()
    header = {"format": CACHE_FORMAT, "root": str(scan.root.resolve()), "size": image_size}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for pair in scan.pairs:
        for path in (pair.image, pair.mask):
            stat = path.stat()
            rel = path.relative_to(scan.root).as_posix()
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@dataclass
class DecodedDataset:
    """A cache entry: `load(i)` is (image S x S x 3 uint8, mask S x S uint8 in {0, 1})."""

    path: Path
    image_size: int
    fingerprint: str
    slices: list[SliceInfo]
    built: bool = False  # True when this call decoded the data (for tests and logs)
    _arrays: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.slices)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        # Mapped lazily, per process: DataLoader workers map the files themselves instead of
        # receiving a pickled copy of a gigabyte.
        if self._arrays is None:
            images = np.load(self.path / "images.npy", mmap_mode="r")
            masks = np.load(self.path / "masks.npy", mmap_mode="r")
            self._arrays = (images, masks)
        return self._arrays

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        images, masks = self.arrays()
        return np.array(images[index]), np.array(masks[index])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}


# --------------------------------------------------------------------------- building


def _resize(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    # What albumentations' Resize in the pipelines does (cv2, bilinear / nearest), without
    # importing albumentations and torch into every builder; a test checks they agree bit for bit.
    if image.shape[:2] == (size, size):
        return image, mask
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return image, mask


def _decode_into(folder: Path, scan: lgg.ScanResult, image_size: int, key: str) -> None:
    """Decode, check and resize every slice into `folder`; raise DatasetError listing problems."""
    folder.mkdir(parents=True)
    n, s = len(scan.pairs), image_size
    images = np.lib.format.open_memmap(folder / "images.npy", "w+", np.uint8, (n, s, s, 3))
    masks = np.lib.format.open_memmap(folder / "masks.npy", "w+", np.uint8, (n, s, s))
    problems: list[lgg.Problem] = []
    rows = []
    for i, pair in enumerate(scan.pairs):
        decoded = lgg.read_pair_or_problems(pair)
        if isinstance(decoded, list):
            problems.extend(decoded)
            continue
        image, mask = decoded
        rows.append({"patient": pair.patient, "number": pair.number, "positive": bool(mask.any())})
        images[i], masks[i] = _resize(image, mask, image_size)
    if problems:
        raise DatasetError(scan.root, problems)
    images.flush()
    masks.flush()
    del images, masks
    index = {
        "format": CACHE_FORMAT,
        "root": str(scan.root),
        "image_size": image_size,
        "fingerprint": key,
        "slices": rows,
    }
    (folder / "index.json").write_text(json.dumps(index))


def _open_entry(path: Path, built: bool) -> DecodedDataset:
    index = json.loads((path / "index.json").read_text())
    if index.get("format") != CACHE_FORMAT:
        raise ValueError(
            f"cache entry {path} has format {index.get('format')}, "
            f"expected {CACHE_FORMAT}: delete it"
        )
    slices = [SliceInfo(r["patient"], r["number"], r["positive"]) for r in index["slices"]]
    return DecodedDataset(path, index["image_size"], index["fingerprint"], slices, built)


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_complete(entry: Path) -> bool:
    return (entry / "index.json").is_file()  # written last, inside the folder renamed into place


def open_cache(
    root: Path | str, image_size: int, cache_dir: Path | str | None = None
) -> DecodedDataset:
    """The decoded dataset at `root` resized to `image_size`, decoding it first if needed, in
    `cache_dir` (default: the `data/` folder of `cache_root()`).

    Raises DatasetError (listing every problem, each naming its file) when the data is bad;
    nothing is then left in the cache.
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    scan = lgg.scan(root)
    if scan.problems:
        raise DatasetError(root, scan.problems)
    key = fingerprint(scan, image_size)
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / DECODED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    entry = folder / f"{Path(root).resolve().name}-{image_size}px-{key[:16]}"
    if _is_complete(entry):
        return _open_entry(entry, built=False)
    with _exclusive(folder / f".{entry.name}.lock"):
        if _is_complete(entry):  # another process built it while we waited
            return _open_entry(entry, built=False)
        _remove_abandoned(folder, entry.name)
        tmp = folder / f".{entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            _decode_into(tmp, scan, image_size, key)
            _publish(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _open_entry(entry, built=True)


def _remove_abandoned(folder: Path, name: str) -> None:
    """Delete temporary folders of builders on this host that died before publishing."""
    for leftover in folder.glob(f".{name}.tmp-*"):
        pid = int(leftover.name.rsplit("-", 2)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(leftover, ignore_errors=True)
        except PermissionError:  # alive, someone else's
            pass


def _publish(tmp: Path, entry: Path) -> None:
    try:
        os.rename(tmp, entry)
    except OSError:
        if not _is_complete(entry):  # not a lost race: a real error
            raise
