"""What a trial asks for: `build_datasets(root, split=..., fold=..., seed=...)` -> train/val/test.

    data = build_datasets("/data/kaggle_3m", image_size=256, split="kfold", fold=2, seed=2026)
    for epoch in range(epochs):
        data.train.set_epoch(epoch)          # before creating the epoch's DataLoader iterator
        for image, mask in DataLoader(data.train, batch_size=32, shuffle=True, num_workers=2): ...

Items are (image 3 x S x S float32, ImageNet-normalized, channels in stored order; mask
1 x S x S float32 in {0, 1}). Each dataset knows its `.patients`.

The pieces: `cache.open_cache` decodes the folder once (or `TiffSource` reads the TIFFs on every
access, `cache=False`, for benchmarks and one-off checks); `splits` chooses the patients of
(split, fold) from each patient's tumour-slice fraction; `augment` transforms each training
sample from its own (seed, epoch, index) stream. The epoch lives in a one-element shared-memory
tensor, so `set_epoch` reaches DataLoader workers even when they persist across epochs.
"""

from __future__ import annotations

import numbers
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from trainables import lgg
from trainables.augment import EvalTransform, SeededAugment
from trainables.cache import open_cache
from trainables.lgg import DatasetError, DatasetReport, SliceInfo, check_dataset
from trainables.splits import PatientSplit, check_split, split_patients
from trainables.synth import write_synthetic

__all__ = [
    "DatasetError",
    "DatasetReport",
    "LGGSlices",
    "SplitDatasets",
    "TiffSource",
    "build_datasets",
    "check_dataset",
    "patient_fractions",
    "write_synthetic",
]


class SliceSource(Protocol):
    """Where slices come from: the decoded cache, or the TIFF files themselves."""

    slices: list[SliceInfo]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


class TiffSource:
    """Reads (and checks) the TIFFs of one slice on every `load`: the path without the cache."""

    def __init__(self, root: Path | str):
        scan = lgg.scan(root)
        if scan.problems:
            raise DatasetError(root, scan.problems)
        self.pairs = scan.pairs
        # The splits need every slice's tumour flag up front: one pass over the masks.
        self.slices = [
            SliceInfo(p.patient, p.number, bool(lgg.read_mask(p.mask).any())) for p in self.pairs
        ]

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return lgg.read_pair(self.pairs[index])


class LGGSlices(Dataset):
    """The slices of some patients, transformed; `set_epoch` selects the augmentation stream."""

    def __init__(self, source: SliceSource, indices: Sequence[int], transform, patients):
        self.source = source
        self.indices = list(indices)
        self.transform = transform
        self.patients = sorted(patients)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        if not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.source.load(self.indices[index])
        # Seeded by the position in this dataset, never by worker or draw order (augment.py).
        return self.transform(image, mask, epoch=self.epoch, index=index)


class SplitDatasets(NamedTuple):
    train: LGGSlices
    val: LGGSlices
    test: LGGSlices


def patient_fractions(slices: Sequence[SliceInfo]) -> dict[str, float]:
    """Each patient's fraction of slices that show tumour (the stratification variable)."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for s in slices:
        counts[s.patient][0] += s.positive
        counts[s.patient][1] += 1
    return {p: positive / total for p, (positive, total) in sorted(counts.items())}


def _datasets(source: SliceSource, split: PatientSplit, train_tf, eval_tf) -> SplitDatasets:
    rows: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(source.slices):
        rows[s.patient].append(i)

    def subset(patients, transform) -> LGGSlices:
        indices = [i for p in sorted(patients) for i in rows[p]]
        return LGGSlices(source, indices, transform, patients)

    return SplitDatasets(
        subset(split.train, train_tf), subset(split.val, eval_tf), subset(split.test, eval_tf)
    )


def build_datasets(
    root: Path | str,
    *,
    image_size: int = 256,
    split: str = "holdout",
    fold: int | None = None,
    n_folds: int = 5,
    split_seed: int = 2026,
    seed: int,
    cache_dir: Path | str | None = None,
    augment: bool = True,
    cache: bool = True,
) -> SplitDatasets:
    """Train/val/test datasets of the LGG folder at `root` for one (split, fold) and seed.

    `split_seed` fixes which patients go where; `seed` (the training seed) fixes augmentation.
    `cache_dir=None` uses the `data/` folder of the cache root (trainables.cache); `cache=False`
    reads the TIFFs on every access instead. `augment=False` gives the training split the evaluation
    transform. Raises DatasetError naming every bad file.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    check_split(split, fold, n_folds)  # before decoding anything
    source = open_cache(root, image_size, cache_dir) if cache else TiffSource(root)
    fractions = patient_fractions(source.slices)
    patients = split_patients(
        list(fractions),
        list(fractions.values()),
        split=split,
        fold=fold,
        n_folds=n_folds,
        seed=split_seed,
    )
    eval_tf = EvalTransform(image_size)
    train_tf = SeededAugment(image_size, seed) if augment else eval_tf
    return _datasets(source, patients, train_tf, eval_tf)
