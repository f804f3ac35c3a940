"""Pixel metrics from the fp16 histogram vs scikit-learn and numpy on the same fp16 scores.

"Exactly" means ==: the histogram route must give the very float scikit-learn gives when it is
called on the probabilities rounded to float16 (trainables.metrics module docstring).
"""

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from trainables.metrics import (
    PR_CURVE_POINTS,
    PixelHistogram,
    auprc,
    pr_curve_points,
    prediction_histogram,
    spikiness,
    summary,
)


def _hist(probs: np.ndarray, target: np.ndarray, batches: int = 1) -> PixelHistogram:
    hist = PixelHistogram()
    for p, t in zip(np.array_split(probs, batches), np.array_split(target, batches), strict=True):
        hist.update(torch.from_numpy(p), torch.from_numpy(t))
    return hist


def _cases():
    rng = np.random.default_rng(2026)
    n = 50_000
    y = (rng.random(n) < 0.2).astype(np.float32)
    yield "random", rng.random(n).astype(np.float32), y
    yield "informative", np.clip(0.4 * y + 0.6 * rng.random(n), 0, 1).astype(np.float32), y
    yield "heavy_ties", (rng.integers(0, 6, n) / 5).astype(np.float32), y
    yield "saturated", torch.sigmoid(torch.from_numpy(rng.normal(0, 12, n))).float().numpy(), y
    yield "tiny_values", (rng.random(n) * 1e-4).astype(np.float32), y  # fp16 subnormals
    yield "all_equal", np.full(n, 0.3, np.float32), y
    yield "two_pixels", np.array([0.2, 0.7], np.float32), np.array([0, 1], np.float32)


@pytest.mark.parametrize("probs, target", [pytest.param(p, t, id=name) for name, p, t in _cases()])
def test_auprc_and_roc_auc_equal_sklearn_exactly(probs, target):
    p16 = probs.astype(np.float16)
    metrics = _hist(probs, target, batches=3 if probs.size > 10 else 1).compute()
    assert metrics["auprc"] == average_precision_score(target, p16)
    assert metrics["roc_auc"] == roc_auc_score(target, p16)
    assert metrics["distinct_pred_values"] == np.unique(p16).size


def test_streaming_equals_one_shot():
    rng = np.random.default_rng(0)
    probs, target = (
        rng.random(30_000).astype(np.float32),
        (rng.random(30_000) < 0.3).astype(np.float32),
    )
    one = _hist(probs, target).negatives_positives()
    many = _hist(probs, target, batches=7).negatives_positives()
    assert all(np.array_equal(a, b) for a, b in zip(one, many, strict=True))


def test_merge_adds_counts():
    rng = np.random.default_rng(1)
    probs, target = rng.random(1000).astype(np.float32), (rng.random(1000) < 0.3).astype(np.float32)
    a, b = _hist(probs[:400], target[:400]), _hist(probs[400:], target[400:])
    a.merge(b)
    whole = _hist(probs, target)
    assert torch.equal(a.counts, whole.counts)


def test_no_positives_gives_nan_with_a_warning():
    probs = np.random.default_rng(3).random(1000).astype(np.float32)
    hist = _hist(probs, np.zeros(1000, np.float32))
    with pytest.warns(UserWarning, match="no positive pixels"):
        metrics = hist.compute()
    assert math.isnan(metrics["auprc"])
    assert math.isnan(metrics["roc_auc"])  # a single class
    assert math.isnan(metrics["recall"])  # 0 / 0
    assert metrics["dice"] == 0.0  # false positives only


def test_all_positives_matches_sklearn_ap_and_roc_is_nan():
    probs = np.random.default_rng(4).random(1000).astype(np.float32)
    target = np.ones(1000, np.float32)
    metrics = _hist(probs, target).compute()
    assert metrics["auprc"] == average_precision_score(target, probs.astype(np.float16))
    assert math.isnan(metrics["roc_auc"])


def test_hard_and_soft_overlap_by_hand():
    rng = np.random.default_rng(5)
    probs = rng.random(5000).astype(np.float32)
    target = (rng.random(5000) < 0.4).astype(np.float32)
    p = probs.astype(np.float16).astype(np.float64)
    metrics = _hist(probs, target).compute()
    pred = p >= 0.5
    tp, fp, fn = (
        np.sum(pred & (target == 1)),
        np.sum(pred & (target == 0)),
        np.sum(~pred & (target == 1)),
    )
    assert metrics["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-12)
    assert metrics["iou"] == pytest.approx(tp / (tp + fp + fn), rel=1e-12)
    assert metrics["recall"] == pytest.approx(tp / (tp + fn), rel=1e-12)
    assert metrics["precision"] == pytest.approx(tp / (tp + fp), rel=1e-12)
    stp, sfp, sfn = np.sum(p * target), np.sum(p * (1 - target)), np.sum((1 - p) * target)
    assert metrics["soft_dice"] == pytest.approx(2 * stp / (2 * stp + sfp + sfn), rel=1e-12)
    assert metrics["soft_iou"] == pytest.approx(stp / (stp + sfp + sfn), rel=1e-12)
    assert metrics["positive_fraction"] == target.mean()
    assert metrics["pixels"] == 5000


def test_histogram_equals_numpy_histogram():
    rng = np.random.default_rng(6)
    probs = np.concatenate([rng.random(20_000), np.arange(101) / 100, [0.0, 1.0]]).astype(
        np.float32
    )
    target = (rng.random(probs.size) < 0.5).astype(np.float32)
    edges, counts = prediction_histogram(*_hist(probs, target).negatives_positives())
    expected, expected_edges = np.histogram(
        probs.astype(np.float16).astype(np.float64), 100, (0, 1)
    )
    assert np.array_equal(edges, expected_edges)
    assert np.array_equal(counts, expected)


def test_pr_curve_is_downsampled_and_keeps_its_ends():
    rng = np.random.default_rng(7)
    probs, target = (
        rng.random(100_000).astype(np.float32),
        (rng.random(100_000) < 0.3).astype(np.float32),
    )
    curve = pr_curve_points(*_hist(probs, target).negatives_positives())
    assert len(curve["precision"]) == len(curve["recall"]) <= PR_CURVE_POINTS
    assert curve["recall"][0] == 1.0 and curve["recall"][-1] == 0.0
    assert curve["precision"][-1] == 1.0
    assert np.all(np.diff(curve["recall"]) <= 0)


def test_spikiness_flat_vs_one_spike():
    flat = np.full(100, 10)
    spike = np.zeros(100, np.int64)
    spike[[0, 50, 99]] = [1000, 10, 1000]
    assert spikiness(flat) == pytest.approx(0.0, abs=1e-12)
    assert spikiness(spike) == pytest.approx(1 - 1 / 98)  # all interior mass in one of 98 bins
    assert math.isnan(spikiness(np.r_[5, np.zeros(98), 5]))


def test_discretized_predictions_are_spikier():
    rng = np.random.default_rng(8)
    smooth = rng.random(20_000).astype(np.float32)
    steps = (np.round(smooth * 6) / 6).astype(np.float32)  # a staircase output
    target = (rng.random(20_000) < 0.3).astype(np.float32)
    s, d = _hist(smooth, target).compute(), _hist(steps, target).compute()
    assert d["hist_spikiness"] > s["hist_spikiness"] + 0.5
    assert d["distinct_pred_values"] == 7


def test_negative_zero_counts_as_zero():
    probs = torch.tensor([-0.0, 0.0, 0.5, 1.0])
    target = torch.tensor([0.0, 1.0, 0.0, 1.0])
    metrics = _hist(probs.numpy(), target.numpy()).compute()
    assert metrics["distinct_pred_values"] == 3
    assert metrics["auprc"] == average_precision_score(target.numpy(), np.abs(probs.numpy()))


def test_inputs_are_left_untouched():
    probs = torch.tensor([-0.0, 0.25, 0.5], dtype=torch.float16)
    target = torch.tensor([0, 1, 1], dtype=torch.bool)
    before = probs.clone()
    PixelHistogram().update(probs, target)
    assert torch.equal(probs.view(torch.int16), before.view(torch.int16))


@pytest.mark.parametrize(
    "probs, target, match",
    [
        (torch.tensor([0.5, 1.5]), torch.tensor([0.0, 1.0]), r"\[0, 1\]"),
        (torch.tensor([0.5, -0.1]), torch.tensor([0.0, 1.0]), r"\[0, 1\]"),
        (torch.tensor([0.5, float("nan")]), torch.tensor([0.0, 1.0]), r"\[0, 1\]"),
        (torch.tensor([0.5, 0.5]), torch.tensor([0.0, 0.5]), "mask"),
        (torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0, 1.0]), "differ"),
    ],
)
def test_bad_input_is_refused(probs, target, match):
    with pytest.raises(ValueError, match=match):
        PixelHistogram().update(probs, target)


def test_empty_histogram_is_an_error():
    with pytest.raises(ValueError, match="no pixels"):
        PixelHistogram().compute()
    with pytest.raises(ValueError, match="no pixels"):
        summary(np.zeros(15361, np.int64), np.zeros(15361, np.int64))


def test_one_shot_auprc_on_images():
    g = torch.Generator().manual_seed(9)
    probs, target = (
        torch.rand(4, 1, 32, 32, generator=g),
        (torch.rand(4, 1, 32, 32, generator=g) > 0.8).float(),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = auprc(probs, target)
    assert value == average_precision_score(
        target.flatten().numpy(), probs.flatten().half().numpy()
    )
