"""Patient-level splits, stratified by how much tumour each patient has.

Slices of one patient are strongly correlated, so every split is over patients: no patient ever
has slices in two of train/val/test. Patients also differ a lot in how many of their slices show
tumour, so the splits are stratified by that fraction, cut into tertiles (low/mid/high).

- holdout (docs/study.md): 80% of the patients train; the other 20% are halved, stratified again,
  into validation and test. On LGG's 110 patients that is exactly 88/11/11.
- kfold: 5 stratified folds over patients (`StratifiedKFold(shuffle=True)`); fold k holds out the
  k-th fold and halves it into validation and test with seed `split_seed + k`, so across the k
  folds every patient is tested exactly once or validated exactly once.

Everything is a pure function of (patients, fractions, seed): patients are sorted first, so the
order in which a folder listing returns them does not matter.

Two details that keep the numbers exact:
- counts are rounded here (`round(0.2 * n)`, at least 2) and passed to scikit-learn as integers,
  not as fractions, which sklearn would round up: on LGG's 110 patients both give 88/22, but on
  112 patients `test_size=0.2` would hold out `ceil(22.4) = 23` where the protocol's 20% is 22.
- tertiles are cut by rank (ties broken by patient id), so the three strata have equal sizes even
  when many patients share a fraction; a quantile cut on values could leave a stratum nearly empty.

Tiny datasets (synthetic quickstarts with a dozen patients) cannot always be stratified: a
stratum needs at least two members, and each side of a split at least one per stratum. Then the
split falls back to a seeded shuffle rather than failing; LGG-sized data is always stratified.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

SPLITS = ("holdout", "kfold")
HOLDOUT_FRACTION = 0.2  # held out of training, then halved into validation and test
N_STRATA = 3


@dataclass(frozen=True)
class PatientSplit:
    """Patient ids of each split, each tuple sorted."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def __post_init__(self) -> None:
        overlap = (
            (set(self.train) & set(self.val))
            | (set(self.train) & set(self.test))
            | (set(self.val) & set(self.test))
        )
        if overlap:
            raise AssertionError(f"patients in two splits: {sorted(overlap)}")


def tertiles(fractions: Sequence[float], patients: Sequence[str]) -> np.ndarray:
    """Stratum 0/1/2 of each patient: its tumour fraction's tertile, cut by rank."""
    order = sorted(range(len(patients)), key=lambda i: (fractions[i], patients[i]))
    strata = np.empty(len(patients), dtype=np.int64)
    strata[order] = np.arange(len(patients)) * N_STRATA // max(len(patients), 1)
    return strata


def _stratifiable(strata: np.ndarray, n_test: int) -> bool:
    counts = np.bincount(strata)
    counts = counts[counts > 0]
    n_train = len(strata) - n_test
    return counts.min() >= 2 and min(n_test, n_train) >= len(counts)


def _split(
    patients: np.ndarray, strata: np.ndarray, n_test: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(rest, test) with exactly n_test patients in test, stratified when possible."""
    stratify = strata if _stratifiable(strata, n_test) else None
    idx = np.arange(len(patients))
    rest, test = train_test_split(idx, test_size=n_test, random_state=seed, stratify=stratify)
    return rest, test


def _validated(
    patients: Sequence[str], fractions: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    if len(patients) != len(fractions):
        raise ValueError(f"{len(patients)} patients but {len(fractions)} tumour fractions")
    if len(set(patients)) != len(patients):
        raise ValueError("patient ids must be unique")
    order = np.argsort(np.asarray(patients, dtype=object), kind="stable")
    return np.asarray(patients, dtype=object)[order], np.asarray(fractions, dtype=float)[order]


def _halve(held: np.ndarray, strata: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split held-out patients into (val, test); test gets the extra one when odd."""
    val, test = _split(held, strata, n_test=math.ceil(len(held) / 2), seed=seed)
    return held[val], held[test]


def _as_split(train, val, test) -> PatientSplit:
    return PatientSplit(*(tuple(sorted(str(p) for p in part)) for part in (train, val, test)))


def holdout_split(
    patients: Sequence[str], fractions: Sequence[float], *, seed: int = 2026
) -> PatientSplit:
    """80/10/10 patients, stratified by tumour-fraction tertile (88/11/11 on LGG's 110)."""
    ids, fracs = _validated(patients, fractions)
    if len(ids) < 3:
        raise ValueError(f"a holdout split needs at least 3 patients, found {len(ids)}")
    strata = tertiles(fracs, ids)
    n_held = max(2, round(HOLDOUT_FRACTION * len(ids)))
    train, held = _split(ids, strata, n_test=n_held, seed=seed)
    val, test = _halve(ids[held], strata[held], seed)
    return _as_split(ids[train], val, test)


def kfold_split(
    patients: Sequence[str],
    fractions: Sequence[float],
    *,
    fold: int,
    n_folds: int = 5,
    seed: int = 2026,
) -> PatientSplit:
    """Fold `fold` of `n_folds` stratified folds: train on the rest, halve the fold (val, test)."""
    ids, fracs = _validated(patients, fractions)
    check_split("kfold", fold, n_folds)
    if len(ids) < 2 * n_folds:
        raise ValueError(
            f"{n_folds}-fold splits need at least {2 * n_folds} patients "
            f"(each held-out fold is halved), found {len(ids)}"
        )
    strata = tertiles(fracs, ids)
    stratified = np.bincount(strata).min() >= n_folds
    folds = (
        StratifiedKFold(n_folds, shuffle=True, random_state=seed)
        if stratified
        else (KFold(n_folds, shuffle=True, random_state=seed))
    )
    train, held = list(folds.split(ids, strata))[fold]
    val, test = _halve(ids[held], strata[held], seed + fold)
    return _as_split(ids[train], val, test)


def check_split(split: str, fold: int | None, n_folds: int = 5) -> None:
    """Raise ValueError when (split, fold, n_folds) does not name a split; cheap, no data."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split == "holdout" and fold is not None:
        raise ValueError(f"split='holdout' takes no fold (got fold={fold!r}); use split='kfold'")
    if split == "kfold":
        if not isinstance(n_folds, int | np.integer) or n_folds < 2:
            raise ValueError(f"n_folds must be an integer of at least 2, got {n_folds!r}")
        valid = isinstance(fold, int | np.integer) and not isinstance(fold, bool)
        if not valid or not 0 <= fold < n_folds:
            raise ValueError(
                f"split='kfold' needs fold, an integer in 0..{n_folds - 1} for {n_folds} folds; "
                f"got {fold!r}"
            )


def split_patients(
    patients: Sequence[str],
    fractions: Sequence[float],
    *,
    split: str = "holdout",
    fold: int | None = None,
    n_folds: int = 5,
    seed: int = 2026,
) -> PatientSplit:
    """The patients of (split, fold): `holdout` takes no fold, `kfold` needs one."""
    check_split(split, fold, n_folds)
    if split == "holdout":
        return holdout_split(patients, fractions, seed=seed)
    return kfold_split(patients, fractions, fold=fold, n_folds=n_folds, seed=seed)
