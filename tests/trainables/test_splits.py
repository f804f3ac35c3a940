"""Patient-level split invariants on LGG-sized metadata (110 patients), and on tiny datasets."""

from __future__ import annotations

import numpy as np
import pytest

from trainables import splits

N_PATIENTS = 110


@pytest.fixture(scope="module")
def lgg_like() -> tuple[list[str], list[float]]:
    """110 TCGA-like ids with tumour-slice fractions spread like LGG's (mean ~0.35)."""
    rng = np.random.default_rng(7)
    patients = [f"TCGA_{i:03d}" for i in rng.permutation(N_PATIENTS)]
    return patients, list(rng.beta(2.0, 3.7, size=N_PATIENTS))


def strata_of(patients, fractions) -> dict[str, int]:
    return dict(zip(patients, splits.tertiles(fractions, patients), strict=True))


def test_tertiles_are_equal_sized_and_ordered_by_fraction(lgg_like):
    patients, fractions = lgg_like
    strata = splits.tertiles(fractions, patients)
    assert np.bincount(strata).tolist() == [37, 37, 36]
    for low, high in ((0, 1), (1, 2)):
        assert max(np.array(fractions)[strata == low]) <= min(np.array(fractions)[strata == high])


def test_tertiles_of_tied_fractions_stay_balanced():
    patients = [f"p{i}" for i in range(9)]
    assert np.bincount(splits.tertiles([0.5] * 9, patients)).tolist() == [3, 3, 3]


def test_holdout_is_88_11_11_disjoint_and_complete(lgg_like):
    patients, fractions = lgg_like
    split = splits.holdout_split(patients, fractions, seed=2026)
    assert (len(split.train), len(split.val), len(split.test)) == (88, 11, 11)
    assert set(split.train) | set(split.val) | set(split.test) == set(patients)
    assert not set(split.train) & set(split.val) | set(split.train) & set(split.test)
    assert not set(split.val) & set(split.test)


def test_holdout_is_stratified_by_tertile(lgg_like):
    patients, fractions = lgg_like
    strata = strata_of(patients, fractions)
    split = splits.holdout_split(patients, fractions, seed=2026)
    for part, size in ((split.train, 88), (split.val, 11), (split.test, 11)):
        counts = np.bincount([strata[p] for p in part], minlength=3)
        # Each stratum is a third of the patients, so a third of every split, up to rounding.
        assert np.all(np.abs(counts - size / 3) <= 1), (part, counts)


def test_splits_are_deterministic_and_ignore_input_order(lgg_like):
    patients, fractions = lgg_like
    a = splits.holdout_split(patients, fractions, seed=2026)
    order = np.random.default_rng(0).permutation(N_PATIENTS)
    b = splits.holdout_split([patients[i] for i in order], [fractions[i] for i in order], seed=2026)
    assert a == b
    assert splits.holdout_split(patients, fractions, seed=2027) != a


def test_kfold_tests_every_patient_exactly_once(lgg_like):
    patients, fractions = lgg_like
    folds = [splits.kfold_split(patients, fractions, fold=k, seed=2026) for k in range(5)]
    held = [set(f.val) | set(f.test) for f in folds]
    tested = [p for f in folds for p in f.test]
    assert sorted(tested) == sorted(set(tested))  # nobody tested twice
    assert set().union(*held) == set(patients)  # everyone held out once ...
    assert sum(len(h) for h in held) == N_PATIENTS  # ... and only once
    for f in folds:
        assert (len(f.train), len(f.val), len(f.test)) == (88, 11, 11)
        assert not set(f.train) & (set(f.val) | set(f.test))


def test_kfold_is_stratified(lgg_like):
    patients, fractions = lgg_like
    strata = strata_of(patients, fractions)
    for k in range(5):
        fold = splits.kfold_split(patients, fractions, fold=k, seed=2026)
        counts = np.bincount([strata[p] for p in fold.val + fold.test], minlength=3)
        assert counts.max() - counts.min() <= 1, counts


def test_kfold_halves_each_fold_with_seed_plus_fold(lgg_like, monkeypatch):
    patients, fractions = lgg_like
    seeds = []
    real = splits._halve
    monkeypatch.setattr(splits, "_halve", lambda h, s, seed: seeds.append(seed) or real(h, s, seed))
    for k in range(5):
        splits.kfold_split(patients, fractions, fold=k, seed=2026)
    assert seeds == [2026, 2027, 2028, 2029, 2030]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"split": "kfold", "fold": 5}, "0..4"),
        ({"split": "kfold", "fold": -1}, "0..4"),
        ({"split": "kfold", "fold": None}, "needs fold"),
        ({"split": "kfold", "fold": "f2"}, "integer"),
        ({"split": "kfold", "fold": 3, "n_folds": 3}, "0..2"),
        ({"split": "holdout", "fold": 0}, "takes no fold"),
        ({"split": "random"}, "holdout, kfold"),
        ({"split": "kfold", "fold": 0, "n_folds": 1}, "at least 2"),
    ],
)
def test_bad_split_arguments_are_rejected_clearly(lgg_like, kwargs, fragment):
    patients, fractions = lgg_like
    with pytest.raises(ValueError, match="split|fold") as exc:
        splits.split_patients(patients, fractions, **kwargs)
    assert fragment in str(exc.value)


@pytest.mark.parametrize("n", [3, 4, 7, 12])
def test_tiny_holdout_falls_back_but_fills_every_split(n):
    patients = [f"p{i:02d}" for i in range(n)]
    split = splits.holdout_split(patients, np.linspace(0, 1, n), seed=1)
    assert min(len(split.train), len(split.val), len(split.test)) >= 1
    assert sorted(split.train + split.val + split.test) == patients


def test_too_few_patients_for_the_folds_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 10 patients"):
        splits.kfold_split([f"p{i}" for i in range(9)], [0.1] * 9, fold=0)


def test_patients_and_fractions_must_match():
    with pytest.raises(ValueError, match="2 patients but 3"):
        splits.holdout_split(["a", "b"], [0.1, 0.2, 0.3])
