"""A synthetic stand-in for LGG, written in the exact kaggle_3m layout so the real loader reads it.

The real dataset cannot be downloaded on machines without internet, so tests and the quickstart
train on this instead. It is not noise with blobs: it has to be learnable, and hard enough that
recipes can differ. Each patient is a head phantom sampled in axial slices through an ellipsoid:

- anatomy: a skull/scalp ring, white matter under a wavy grey-matter rim (darker on T1, brighter
  on FLAIR), a smooth tissue texture (a sum of random 3-D plane waves, so neighbouring slices look
  alike), the interhemispheric fissure and two CSF ventricles that are largest near the middle of
  the volume, a smooth bias field and Gaussian noise. The head's size, tilt, position and
  per-channel gains vary by patient; the cross-section shrinks towards the top and bottom slices.
- channels as in LGG: 0 = pre-contrast T1 (tumour slightly dark), 1 = FLAIR (tumour bright: the
  brightest channel, as in the real data), 2 = post-contrast T1 (an enhancing rim in some patients).
- tumour: one lobulated blob per patient (radius modulated by random angular harmonics, soft
  edge), spanning a contiguous run of slices and growing then shrinking through the run. Its
  size, shape, position, edge softness and contrast vary; about a fifth of the patients have a
  faint one. The per-patient fraction of tumour slices is spread evenly over 0.10-0.60 and shuffled,
  so the dataset averages ~35% positive slices like LGG, and the patient-level stratification of
  the splits has something to stratify.
- the mask is where the tumour is (0/255), as the FLAIR-abnormality masks of LGG.

Patient ids, slice counts and tumour fractions come from one generator per dataset, each
patient's pixels from `np.random.default_rng([seed, patient_index])`: the output is a pure
function of the arguments. Generation is vectorized over each patient's slices, and the TIFFs
are written from a byte template (see `_TiffTemplate`): 12 patients x 20 slices at 64 px take
about half a second, an LGG-sized 110 x ~36 at 256 px a few minutes on two cores.

The dataset is written into a temporary sibling folder and renamed into place, so `out` is either
untouched or complete, never half-written.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

_SITES = ("CS", "DU", "EZ", "FG", "HT")  # TCGA tissue-source sites present in LGG
MIN_SIZE = 16
MAX_PATIENTS = 9000


@dataclass(frozen=True)
class SynthSummary:
    """What `write_synthetic` wrote."""

    root: Path
    patients: int
    slices: int
    positive_slices: int

    @property
    def positive_fraction(self) -> float:
        return self.positive_slices / self.slices if self.slices else 0.0


# --------------------------------------------------------------------------- one patient


@dataclass(frozen=True)
class _Patient:
    folder: str
    n_slices: int
    tumour_fraction: float


def _patients(n: int, seed: int, slices_per_patient: int | None) -> list[_Patient]:
    rng = np.random.default_rng([seed, 2**31])
    numbers = rng.choice(9000, size=n, replace=False) + 1000
    fractions = rng.permutation(np.linspace(0.10, 0.60, n) if n > 1 else np.array([0.35]))
    days = rng.integers(0, 365 * 20, size=n)
    counts = rng.integers(24, 49, size=n)
    out = []
    for i in range(n):
        date = np.datetime64("1990-01-01") + np.timedelta64(int(days[i]), "D")
        site = _SITES[int(numbers[i]) % len(_SITES)]
        folder = f"TCGA_{site}_{numbers[i]}_{str(date).replace('-', '')}"
        n_slices = slices_per_patient or int(counts[i])
        out.append(_Patient(folder, n_slices, float(fractions[i])))
    return out


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    # Python floats keep the float32 grids float32 (a NumPy float64 scalar would upcast them).
    return float(rng.uniform(low, high))


def _plane_waves(rng, x, y, z, count: int = 6) -> np.ndarray:
    """Smooth texture, mean 0.5, SD 0.2: a sum of random 3-D plane waves on the slice grid."""
    total = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), dtype=np.float32)
    for _ in range(count):
        kx, ky, kz = _u(rng, -25, 25), _u(rng, -25, 25), _u(rng, -4, 4)
        total += np.cos(kx * x + ky * y + kz * z + _u(rng, 0, 2 * np.pi))
    return 0.5 + (0.2 / np.sqrt(count / 2)) * total  # each cosine has variance 1/2


@dataclass
class _Head:
    """The anatomy of one patient's slices, each array S x H x W (or S x 1 x 1 per slice)."""

    brain: np.ndarray  # bool
    cortex: np.ndarray  # bool, the grey-matter rim of the brain
    skull: np.ndarray  # bool
    ventricles: np.ndarray  # bool
    tissue: np.ndarray  # float32 texture, mean 0.5, SD 0.2
    semi_axes: np.ndarray  # (S, 2) brain semi-axes per slice, in image units
    centre: np.ndarray  # (S, 2) brain centre per slice


def _head(rng, n: int, x, y) -> _Head:
    """A tilted ellipsoidal head cut in n axial slices: smaller towards the top and bottom."""
    z = np.linspace(-0.85, 0.75, n, dtype=np.float32)[:, None, None]
    a, b = _u(rng, 0.30, 0.36), _u(rng, 0.36, 0.42)
    profile = np.sqrt(np.clip(1 - z**2, 0.09, None))
    drift = rng.normal(0, 0.003, size=(2, n, 1, 1)).astype(np.float32)
    cx = 0.5 + float(rng.normal(0, 0.02)) + drift[0]
    cy = 0.5 + float(rng.normal(0, 0.02)) + drift[1]
    tilt = float(rng.normal(0, 0.1))
    cos, sin = np.cos(tilt), np.sin(tilt)
    u = (x - cx) * cos + (y - cy) * sin
    v = (y - cy) * cos - (x - cx) * sin
    ra, rb = a * profile, b * profile
    d_head = np.sqrt((u / ra) ** 2 + (v / rb) ** 2)
    brain = d_head < 1.0
    tissue = _plane_waves(rng, x, y, z)
    cortex = brain & (d_head + 0.12 * tissue > 0.92)  # a wavy grey-matter rim
    # Two CSF ventricles, largest a little above the middle slice.
    vent = np.exp(-(((z - 0.1) / 0.3) ** 2)) * ra + 1e-6
    ventricles = (np.abs(u) < 0.004) & (v < 0.6 * rb)  # the interhemispheric fissure
    for side in (-1, 1):
        ventricles |= ((u - side * 0.28 * ra) / (0.16 * vent)) ** 2 + (
            (v + 0.05 * rb) / (0.4 * vent)
        ) ** 2 < 1.0
    return _Head(
        brain=brain,
        cortex=cortex,
        skull=(d_head >= 1.0) & (d_head < 1.09),
        ventricles=ventricles & brain,
        tissue=tissue,
        semi_axes=np.stack([ra.ravel(), rb.ravel()], axis=1),
        centre=np.stack([cx.ravel(), cy.ravel()], axis=1),
    )


def _tumour(rng, patient: _Patient, head: _Head, size: int, x, y):
    """(soft field in [0, 1], mask, slice indices): one lobulated blob over a run of slices."""
    n = patient.n_slices
    run = min(max(1, round(patient.tumour_fraction * n)), n)
    idx = np.arange(run) + int(rng.integers(0, n - run + 1))
    # Centre within half the smallest brain cross-section of the run; radius relative to it.
    a_min, b_min = head.semi_axes[idx].min(axis=0)
    rho, phi = 0.5 * np.sqrt(_u(rng, 0, 1)), _u(rng, 0, 2 * np.pi)
    tx = head.centre[idx, 0, None, None] + float(rho * a_min * np.cos(phi))
    ty = head.centre[idx, 1, None, None] + float(rho * b_min * np.sin(phi))
    r0 = _u(rng, 0.12, 0.45) * float(min(a_min, b_min)) * size
    t = ((np.arange(run, dtype=np.float32) + 0.5) / run * 2 - 1)[:, None, None]
    radius = np.maximum(r0 * (0.4 + 0.6 * np.sqrt(1 - t**2)), 1.5)  # pixels, never vanishing
    dx, dy = (x - tx) * size, (y - ty) * size
    theta = np.arctan2(dy, dx)
    lobes = np.ones_like(theta)
    for k in (2, 3, 4):
        lobes += _u(rng, 0, 0.1) * np.cos(k * theta + _u(rng, 0, 2 * np.pi))
    edge = radius * lobes - np.hypot(dx, dy)  # > 0 inside, in pixels
    field = 1 / (1 + np.exp(-np.clip(edge / _u(rng, 0.5, 2.5), -30, 30)))
    inside = (edge > 0) & head.brain[idx]
    return field * head.brain[idx], inside, idx


# Tissue intensities per channel (pre-contrast T1, FLAIR, post-contrast T1), by label.
_BACKGROUND, _BRAIN, _CSF, _SKULL, _CORTEX = 0, 1, 2, 3, 4
_LEVELS = np.array(
    [
        [0.0, 0.0, 0.0],  # background
        [0.44, 0.34, 0.46],  # white matter
        [0.12, 0.06, 0.14],  # CSF
        [0.72, 0.30, 0.76],  # skull and scalp
        [0.34, 0.42, 0.36],  # grey matter: darker on T1, brighter on FLAIR
    ],
    np.float32,
)


def _render_patient(patient: _Patient, index: int, size: int, seed: int):
    """(images S x H x W x 3 uint8, masks S x H x W uint8 0/255) for one patient."""
    rng = np.random.default_rng([seed, index])
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = grid[None, None, :], grid[None, :, None]
    head = _head(rng, patient.n_slices, x, y)
    labels = np.where(head.cortex, _CORTEX, head.brain * _BRAIN)
    labels = np.where(head.skull, _SKULL, np.where(head.ventricles, _CSF, labels))
    levels = _LEVELS * rng.uniform(0.85, 1.15, size=(1, 3)).astype(np.float32)  # per-patient gain
    texture = np.where(head.brain, 0.7 + 0.6 * head.tissue, 1)
    bias = 1 + 0.15 * (x - 0.5) * float(rng.normal()) + 0.15 * (y - 0.5) * float(rng.normal())
    image = levels[labels.astype(np.uint8)] * (texture * bias)[..., None]

    field, inside, idx = _tumour(rng, patient, head, size, x, y)
    faint = rng.uniform() < 0.2
    contrast = _u(rng, 0.06, 0.15) if faint else _u(rng, 0.25, 0.55)
    field *= (contrast * rng.uniform(0.8, 1.2, size=(len(idx), 1, 1))).astype(np.float32)
    tumour = image[idx]
    tumour[..., 1] += field * (0.85 + 0.3 * head.tissue[idx])  # FLAIR: bright
    tumour[..., 0] -= 0.35 * field  # pre-contrast T1: slightly dark
    if rng.uniform() < 0.4:  # post-contrast T1: an enhancing rim (peaks where the edge is)
        tumour[..., 2] += 3.2 * field * np.clip(1 - field / contrast, 0, 1)
    image[idx] = tumour
    masks = np.zeros((patient.n_slices, size, size), dtype=np.uint8)
    masks[idx] = np.where(inside, 255, 0)

    noise = rng.standard_normal(size=image.shape, dtype=np.float32)
    image += (0.015 * noise) * (labels > 0)[..., None]
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8), masks


# --------------------------------------------------------------------------- writing


def _validate(patients: int, size: int, seed: int, slices_per_patient: int | None) -> None:
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if not 1 <= patients <= MAX_PATIENTS:
        raise ValueError(f"patients must be between 1 and {MAX_PATIENTS}, got {patients}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    if slices_per_patient is not None and slices_per_patient < 1:
        raise ValueError(f"slices_per_patient must be at least 1, got {slices_per_patient}")


def _prepare_target(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} is not empty; choose another folder or pass --force")


class _TiffTemplate:
    """Writes the same bytes as `tifffile.imwrite(path, array)` for one fixed shape, ~10x faster.

    An uncompressed single-strip TIFF of a given shape differs from another only in its pixel
    bytes, so tifffile writes the tags once (into memory) and every file is header + pixels +
    trailer. Thousands of small files are written per dataset, and tifffile's per-file tag
    handling would otherwise dominate the generation time.
    """

    def __init__(self, shape: tuple[int, ...], photometric: str):
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, np.zeros(shape, np.uint8), photometric=photometric)
        raw = buffer.getvalue()
        with tifffile.TiffFile(io.BytesIO(raw)) as tif:
            (offset,), (count,) = tif.pages[0].dataoffsets, tif.pages[0].databytecounts
        self.shape, self.head, self.tail = shape, raw[:offset], raw[offset + count :]

    def write(self, path: Path, array: np.ndarray) -> None:
        if array.shape != self.shape or array.dtype != np.uint8:
            raise ValueError(f"expected uint8 {self.shape}, got {array.dtype} {array.shape}")
        with open(path, "wb") as f:
            f.write(self.head)
            f.write(np.ascontiguousarray(array).data)
            f.write(self.tail)


def _write_all(tmp: Path, plan: list[_Patient], size: int, seed: int) -> tuple[int, int]:
    slices = positive = 0
    rows = []
    image_tiff = _TiffTemplate((size, size, 3), "rgb")
    mask_tiff = _TiffTemplate((size, size), "minisblack")
    for i, patient in enumerate(plan):
        images, masks = _render_patient(patient, i, size, seed)
        folder = tmp / patient.folder
        folder.mkdir()
        for n, (image, mask) in enumerate(zip(images, masks, strict=True), start=1):
            image_tiff.write(folder / f"{patient.folder}_{n}.tif", image)
            mask_tiff.write(folder / f"{patient.folder}_{n}_mask.tif", mask)
        tumour = int(masks.any(axis=(1, 2)).sum())
        slices, positive = slices + len(images), positive + tumour
        rows.append(
            {
                "Patient": patient.folder.rsplit("_", 1)[0],
                "slices": len(images),
                "tumour_slices": tumour,
                "synthetic": 1,
            }
        )
    with open(tmp / "data.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return slices, positive


def _move_into_place(tmp: Path, out: Path) -> None:
    """Replace `out` by `tmp`; whatever happens, `out` is never a partial dataset."""
    trash = None
    if out.exists():
        trash = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out, trash)
    os.rename(tmp, out)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def write_synthetic(
    out: Path | str,
    *,
    patients: int = 20,
    size: int = 256,
    seed: int = 0,
    slices_per_patient: int | None = None,
    force: bool = False,
) -> SynthSummary:
    """Write a synthetic LGG-like dataset in the kaggle_3m layout to `out`.

    `slices_per_patient=None` draws 24-48 slices per patient (LGG averages ~36). Refuses a
    non-empty `out` unless `force`, which replaces it.
    """
    _validate(patients, size, seed, slices_per_patient)
    out = Path(out)
    _prepare_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        plan = _patients(patients, seed, slices_per_patient)
        slices, positive = _write_all(tmp, plan, size, seed)
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return SynthSummary(out, patients, slices, positive)
