"""The LGG "kaggle_3m" folder layout: find the slices, pair them, read them, and say what is wrong.

The dataset (Buda et al., Kaggle "lgg-mri-segmentation/kaggle_3m") is one folder per patient::

    kaggle_3m/
        data.csv                                  <- root files are ignored
        TCGA_CS_4941_19960909/
            TCGA_CS_4941_19960909_1.tif           <- image: H x W x 3 uint8 (pre-contrast, FLAIR,
            TCGA_CS_4941_19960909_1_mask.tif         post-contrast); mask: H x W uint8, 0 or 255
            TCGA_CS_4941_19960909_2.tif
            ...
            TCGA_CS_4941_19960909_10.tif          <- slice 10 sorts after 9: pair and order by the
                                                     number, never by the string

Two levels of checking, because they cost differently:

- `scan(root)` only lists and stats files: it pairs every image with its mask by slice number and
  reports structural problems (a file that is not `<folder>_<n>[_mask].tif`, an image without a
  mask or the reverse, a duplicate slice number, no patients at all). The cache fingerprints the
  result of a scan, so it must stay cheap.
- `read_pair(pair)` decodes one slice and checks its content (unreadable or truncated TIFF, wrong
  channel count or dtype, image/mask size mismatch, mask values other than {0, 255} or {0, 1}).

`check_dataset(root)` runs both over everything and returns a `DatasetReport` that lists *every*
problem, each naming its file, instead of stopping at the first one: a user fixing a download wants
the whole list at once.

Channel order is kept exactly as stored (the paper's public code read the files with OpenCV, which
silently swaps to BGR, and then normalized with RGB statistics; we do not).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tifffile

MASK_SUFFIX = "_mask"
_SLICE_NAME = re.compile(r"^(?P<prefix>.+)_(?P<number>[^_]+)$")


class Problem(NamedTuple):
    """One thing wrong with the dataset: the file it is about, and what is wrong with it."""

    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


class DatasetError(ValueError):
    """Raised when a dataset cannot be used; `.problems` lists every problem found."""

    def __init__(self, root: Path | str, problems: list[Problem]):
        self.root = str(root)
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems[:20])
        more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        super().__init__(
            f"{len(self.problems)} problem(s) in dataset {self.root} "
            f"(run `sweep data check {self.root}` for the full list):\n{lines}{more}"
        )


@dataclass(frozen=True)
class SlicePair:
    """One slice of one patient: where its image and mask live."""

    patient: str  # the patient folder name, e.g. TCGA_CS_4941_19960909
    number: int  # the slice number n of `<patient>_<n>.tif`
    image: Path
    mask: Path


@dataclass(frozen=True)
class SliceInfo:
    """What the splits need to know about a slice: whose it is and whether it shows tumour."""

    patient: str
    number: int
    positive: bool  # any tumour pixel in the mask, at the stored resolution


@dataclass
class ScanResult:
    """What `scan` found: the paired slices (sorted by patient, then slice number) and problems."""

    root: Path
    pairs: list[SlicePair] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def patients(self) -> list[str]:
        return sorted({p.patient for p in self.pairs})


@dataclass
class DatasetReport:
    """The result of `check_dataset`: a summary of the slices and every problem found."""

    root: str
    patients: int
    slices: int
    positive_slices: int
    image_size: tuple[int, int] | None  # (H, W) of the images, the most common one if mixed
    problems: list[Problem]

    @property
    def positive_fraction(self) -> float:
        return self.positive_slices / self.slices if self.slices else 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "patients": self.patients,
            "slices": self.slices,
            "positive_slices": self.positive_slices,
            "positive_fraction": self.positive_fraction,
            "image_size": list(self.image_size) if self.image_size else None,
            "problems": [{"file": p.file, "message": p.message} for p in self.problems],
        }


# --------------------------------------------------------------------------- scanning (no decoding)


def _is_patient_folder(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".") and any(path.glob("*.tif"))


def _parse_name(path: Path, folder: str) -> tuple[int, bool] | Problem:
    """(slice number, is_mask) for `<folder>_<n>[_mask].tif`, or the Problem with the name."""
    stem = path.stem
    is_mask = stem.endswith(MASK_SUFFIX)
    if is_mask:
        stem = stem[: -len(MASK_SUFFIX)]
    match = _SLICE_NAME.match(stem)
    expected = f"expected {folder}_<n>.tif or {folder}_<n>{MASK_SUFFIX}.tif"
    if match is None or match["prefix"] != folder:
        return Problem(
            str(path), f"file name does not belong to patient folder {folder}: {expected}"
        )
    if not match["number"].isdigit():
        return Problem(str(path), f"slice number {match['number']!r} is not numeric: {expected}")
    return int(match["number"]), is_mask


def _scan_patient(folder: Path) -> tuple[list[SlicePair], list[Problem]]:
    images: dict[int, Path] = {}
    masks: dict[int, Path] = {}
    problems: list[Problem] = []
    for path in sorted(folder.glob("*.tif")):
        if path.name.startswith("."):  # e.g. macOS "._" resource forks left by unzipping
            continue
        parsed = _parse_name(path, folder.name)
        if isinstance(parsed, Problem):
            problems.append(parsed)
            continue
        number, is_mask = parsed
        bucket = masks if is_mask else images
        if number in bucket:
            problems.append(
                Problem(str(path), f"duplicate slice number {number} (also {bucket[number].name})")
            )
            continue
        bucket[number] = path
    for number in sorted(images.keys() - masks.keys()):
        expected = f"{folder.name}_{number}{MASK_SUFFIX}.tif"
        problems.append(Problem(str(images[number]), f"image has no mask (expected {expected})"))
    for number in sorted(masks.keys() - images.keys()):
        expected = f"{folder.name}_{number}.tif"
        problems.append(Problem(str(masks[number]), f"mask has no image (expected {expected})"))
    pairs = [
        SlicePair(folder.name, n, images[n], masks[n]) for n in sorted(images.keys() & masks.keys())
    ]
    return pairs, problems


def scan(root: Path | str) -> ScanResult:
    """List and pair every slice under `root` (one sub-folder per patient) without decoding."""
    root = Path(root)
    result = ScanResult(root)
    if not root.is_dir():
        result.problems.append(
            Problem(str(root), "dataset folder does not exist or is not a folder")
        )
        return result
    folders = sorted(p for p in root.iterdir() if _is_patient_folder(p))
    if not folders:
        hint = " (did you mean its kaggle_3m sub-folder?)" if (root / "kaggle_3m").is_dir() else ""
        message = f"no patients found: no sub-folder holds .tif slices{hint}"
        result.problems.append(Problem(str(root), message))
        return result
    for folder in folders:
        pairs, problems = _scan_patient(folder)
        result.pairs.extend(pairs)
        result.problems.extend(problems)
    return result


# --------------------------------------------------------------------------- decoding one slice


class SliceError(ValueError):
    """A slice whose content is unusable; `.problem` names the file."""

    def __init__(self, problem: Problem):
        self.problem = problem
        super().__init__(str(problem))


def _read_tiff(path: Path) -> np.ndarray:
    try:
        return tifffile.imread(path)
    except Exception as exc:  # tifffile raises many types for truncated/corrupt files
        raise SliceError(
            Problem(str(path), f"unreadable TIFF ({type(exc).__name__}: {exc})")
        ) from exc


def read_image(path: Path | str) -> np.ndarray:
    """The H x W x 3 uint8 image at `path`, channels in their stored order."""
    path = Path(path)
    image = _read_tiff(path)
    if image.ndim != 3 or image.shape[2] != 3:
        raise SliceError(
            Problem(
                str(path),
                f"expected an H x W x 3 image (3 channels), found shape {tuple(image.shape)}",
            )
        )
    if image.dtype != np.uint8:
        raise SliceError(Problem(str(path), f"expected uint8 pixels, found {image.dtype}"))
    return image


def read_mask(path: Path | str) -> np.ndarray:
    """The H x W mask at `path` as uint8 {0, 1} (stored as 0/255, or already 0/1)."""
    path = Path(path)
    mask = _read_tiff(path)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise SliceError(
            Problem(
                str(path), f"expected an H x W mask (1 channel), found shape {tuple(mask.shape)}"
            )
        )
    if mask.dtype not in (np.uint8, np.bool_):
        raise SliceError(Problem(str(path), f"expected uint8 mask values, found {mask.dtype}"))
    mask = mask.astype(np.uint8, copy=False)
    values = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    if not (set(values) <= {0, 255} or set(values) <= {0, 1}):
        shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise SliceError(
            Problem(str(path), f"mask values must be {{0, 255}} or {{0, 1}}, found {{{shown}}}")
        )
    return (mask > 0).astype(np.uint8)


def _check_sizes(pair: SlicePair, image: np.ndarray, mask: np.ndarray) -> None:
    if image.shape[:2] != mask.shape:
        raise SliceError(
            Problem(
                str(pair.mask),
                f"mask is {mask.shape[0]}x{mask.shape[1]} but "
                f"its image {pair.image.name} is "
                f"{image.shape[0]}x{image.shape[1]}",
            )
        )


def read_pair(pair: SlicePair) -> tuple[np.ndarray, np.ndarray]:
    """Decode and check one slice: (image H x W x 3 uint8, mask H x W uint8 in {0, 1})."""
    image = read_image(pair.image)
    mask = read_mask(pair.mask)
    _check_sizes(pair, image, mask)
    return image, mask


def read_pair_or_problems(pair: SlicePair) -> tuple[np.ndarray, np.ndarray] | list[Problem]:
    """Like read_pair, but return the problems of the image and of the mask, not just the first."""
    found: list[Problem] = []
    decoded: list[np.ndarray] = []
    for reader, path in ((read_image, pair.image), (read_mask, pair.mask)):
        try:
            decoded.append(reader(path))
        except SliceError as exc:
            found.append(exc.problem)
    if found:
        return found
    image, mask = decoded
    try:
        _check_sizes(pair, image, mask)
    except SliceError as exc:
        return [exc.problem]
    return image, mask


# --------------------------------------------------------------------------- the whole dataset


def check_dataset(root: Path | str) -> DatasetReport:
    """Scan and decode every slice under `root`; summarize it and list every problem found."""
    result = scan(root)
    problems = list(result.problems)
    sizes: Counter[tuple[int, int]] = Counter()
    slices = positive = 0
    patients: set[str] = set()
    for pair in result.pairs:
        decoded = read_pair_or_problems(pair)
        if isinstance(decoded, list):
            problems.extend(decoded)
            continue
        image, mask = decoded
        sizes[image.shape[:2]] += 1
        slices += 1
        positive += bool(mask.any())
        patients.add(pair.patient)
    image_size = sizes.most_common(1)[0][0] if sizes else None
    return DatasetReport(str(root), len(patients), slices, positive, image_size, problems)
