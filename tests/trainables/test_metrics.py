"""Pixel metrics against scikit-learn and numpy on the same float32 probabilities.

"Exactly" means ==: the sorted-key route must give the very float scikit-learn gives when it is
called on the float32 probabilities themselves (trainables.metrics module docstring), on inputs
built to break shortcuts: ties, values that differ only below fp16 resolution, saturated 1.0,
float32 subnormals, one positive among 10^6 pixels, all positives, images of a few pixels.
Every case runs through both sort paths: numpy's (CPU) and torch's (what CUDA runs).
"""

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from trainables.histogram import histogram_spikiness
from trainables.metrics import (
    PR_CURVE_POINTS,
    PixelScores,
    SplitCounts,
    auprc,
    average_precision,
    count_sorted,
    pr_curve_points,
    prediction_histogram,
    roc_auc,
    split_metrics,
    summary,
)


def _scores(probs: np.ndarray, target: np.ndarray, batches: int = 1) -> PixelScores:
    scores = PixelScores()
    for p, t in zip(np.array_split(probs, batches), np.array_split(target, batches), strict=True):
        scores.update(torch.from_numpy(p), torch.from_numpy(t))
    return scores


def _counts(probs, target, *, numpy_sort: bool, batches: int = 1) -> SplitCounts:
    scores = _scores(probs, target, batches)
    return count_sorted(torch.cat(scores._keys), numpy_sort=numpy_sort)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return torch.sigmoid(torch.from_numpy(x).float()).numpy()


def _cases():
    rng = np.random.default_rng(2026)
    n = 40_000
    y = (rng.random(n) < 0.2).astype(np.float32)
    yield "random", rng.random(n).astype(np.float32), y
    yield "informative", np.clip(0.4 * y + 0.6 * rng.random(n), 0, 1).astype(np.float32), y
    yield "heavy_ties", (rng.integers(0, 6, n) / 5).astype(np.float32), y
    # 0.5 + k 2^-20: distinct in float32, all one value in float16 (spacing 2^-11 there).
    yield "below_fp16", (0.5 + rng.integers(0, 64, n) * 2.0**-20).astype(np.float32), y
    # Wide logits: most probabilities saturate to exactly 1.0 (or 0.0) in float32 too.
    wide = rng.normal(0, 40, n) + np.where(y > 0, 10.0, -10.0)
    yield "saturated", _sigmoid(wide), y
    yield "subnormals", (rng.random(n) * 1e-39).astype(np.float32), y  # float32 subnormals
    yield "all_equal", np.full(n, 0.3, np.float32), y
    yield "zero_signs", rng.choice(np.array([-0.0, 0.0, 0.5, 1.0], np.float32), n), y
    yield "two_pixels", np.array([0.2, 0.7], np.float32), np.array([0, 1], np.float32)
    yield "one_pixel", np.array([0.25], np.float32), np.array([1], np.float32)
    yield "all_positive", rng.random(1000).astype(np.float32), np.ones(1000, np.float32)
    yield (
        "tiny_image",
        rng.random((1, 1, 2, 3)).astype(np.float32),
        np.array([[[[0, 1, 0], [1, 0, 0]]]], np.float32),
    )


CASES = [pytest.param(p, t, id=name) for name, p, t in _cases()]
SORTS = [pytest.param(True, id="numpy_sort"), pytest.param(False, id="torch_sort")]


@pytest.mark.parametrize("numpy_sort", SORTS)
@pytest.mark.parametrize("probs, target", CASES)
def test_ranking_metrics_equal_sklearn(probs, target, numpy_sort):
    p, y = probs.ravel(), target.ravel()
    c = _counts(probs, target, numpy_sort=numpy_sort, batches=3 if p.size > 10 else 1)
    assert average_precision(c) == average_precision_score(y, p)  # bit for bit
    if 0 < y.sum() < y.size:
        assert roc_auc(c) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    else:
        assert math.isnan(roc_auc(c))
    assert c.distinct == np.unique(np.abs(p)).size
    # The PR curve at every recall step is scikit-learn's point there.
    precision, recall, _ = precision_recall_curve(y, p)
    steps = np.r_[np.flatnonzero(np.diff(recall) < 0), recall.size - 1]
    curve = pr_curve_points(c, max_points=10**9)
    assert curve["precision"] == precision[steps].tolist()
    assert curve["recall"] == recall[steps].tolist()


@pytest.mark.parametrize("numpy_sort", SORTS)
@pytest.mark.parametrize("probs, target", CASES)
def test_overlaps_and_histogram_equal_numpy(probs, target, numpy_sort):
    p, y = probs.ravel().astype(np.float64), target.ravel().astype(np.float64)
    c = _counts(probs, target, numpy_sort=numpy_sort)
    metrics = summary(c)
    pred = p >= 0.5
    tp, fp, fn = np.sum(pred & (y == 1)), np.sum(pred & (y == 0)), np.sum(~pred & (y == 1))
    assert metrics["dice"] == 2 * tp / (2 * tp + fp + fn)
    assert metrics["recall"] == tp / (tp + fn)
    if tp + fp:
        assert metrics["precision"] == tp / (tp + fp)
    stp, sfp, sfn = np.sum(p * y), np.sum(p * (1 - y)), np.sum((1 - p) * y)
    if stp > 0:
        assert metrics["soft_dice"] == pytest.approx(2 * stp / (2 * stp + sfp + sfn), rel=1e-12)
        assert metrics["soft_iou"] == pytest.approx(stp / (stp + sfp + sfn), rel=1e-12)
    edges, counts = prediction_histogram(c)
    expected, expected_edges = np.histogram(p, 100, (0, 1))
    assert np.array_equal(edges, expected_edges) and np.array_equal(counts, expected)
    assert metrics["positive_fraction"] == y.mean() and metrics["pixels"] == p.size


def test_one_positive_in_a_million():
    rng = np.random.default_rng(11)
    probs = _sigmoid(rng.normal(-3, 2, 1_000_000))
    target = np.zeros(probs.size, np.float32)
    target[123_456] = 1
    value = auprc(torch.from_numpy(probs), torch.from_numpy(target))
    assert value == average_precision_score(target, probs)
    assert 0 < value < 1


def test_float16_rounding_is_gone():
    # The example: wide logits N(+-6, 5), 1% positives. Rounding to float16 moved AP by
    # -0.074 here; the metric now equals sklearn on the float32 scores, not on rounded ones.
    rng = np.random.default_rng(3)
    y = (rng.random(200_000) < 0.01).astype(np.float32)
    probs = _sigmoid(rng.normal(np.where(y > 0, 6.0, -6.0), 5.0))
    value = auprc(torch.from_numpy(probs), torch.from_numpy(y))
    assert value == average_precision_score(y, probs)
    assert abs(value - average_precision_score(y, probs.astype(np.float16))) > 0.01


def test_streaming_and_merge_equal_one_shot():
    rng = np.random.default_rng(0)
    probs = rng.random(30_000).astype(np.float32)
    target = (rng.random(30_000) < 0.3).astype(np.float32)
    one = _scores(probs, target).compute()
    assert _scores(probs, target, batches=7).compute() == one
    a, b = _scores(probs[:4000], target[:4000]), _scores(probs[4000:], target[4000:])
    a.merge(b)
    merged = a.compute()
    assert merged["soft_dice"] == pytest.approx(one.pop("soft_dice"), rel=1e-14)  # sum order
    assert {k: v for k, v in merged.items() if k in one and not k.startswith("soft")} == {
        k: v for k, v in one.items() if not k.startswith("soft")
    }


def test_pr_curve_area_is_ap_when_downsampled():
    rng = np.random.default_rng(7)
    y = (rng.random(200_000) < 0.05).astype(np.float32)
    probs = _sigmoid(rng.normal(np.where(y > 0, 1.5, -1.5), 1.0))
    result = split_metrics(_counts(probs, y, numpy_sort=True))
    curve = result.pr_curve
    recall, precision = np.asarray(curve["recall"]), np.asarray(curve["precision"])
    assert len(recall) == len(precision) <= PR_CURVE_POINTS
    assert recall[0] == 1.0 and recall[-1] == 0.0 and precision[-1] == 1.0
    assert np.all(np.diff(recall) < 0)
    area = np.sum((recall[:-1] - recall[1:]) * precision[:-1])  # the post-step staircase
    assert area == pytest.approx(result.metrics["auprc"], abs=1e-12)
    # Each step held at the lower-recall precision instead (the old Fig 5) is not AP.
    assert abs(np.sum((recall[:-1] - recall[1:]) * precision[1:]) - area) > 1e-3


def test_no_positives_gives_nan_with_a_warning():
    probs = np.random.default_rng(3).random(1000).astype(np.float32)
    scores = _scores(probs, np.zeros(1000, np.float32))
    with pytest.warns(UserWarning, match="no positive pixels"):
        result = scores.result()
    metrics = result.metrics
    assert math.isnan(metrics["auprc"]) and math.isnan(metrics["roc_auc"])
    assert math.isnan(metrics["recall"])  # 0 / 0
    assert metrics["dice"] == 0.0  # false positives only
    assert result.pr_curve == {"precision": [], "recall": []}


def test_spikiness_is_the_histogram_measure_and_flags_staircases():
    rng = np.random.default_rng(8)
    smooth = rng.random(20_000).astype(np.float32)
    steps = (np.round(smooth * 6) / 6).astype(np.float32)  # a staircase output
    target = (rng.random(20_000) < 0.3).astype(np.float32)
    s, d = _scores(smooth, target).result(), _scores(steps, target).result()
    assert s.metrics["hist_spikiness"] == histogram_spikiness(s.histogram["counts"]) < 0.05
    assert d.metrics["hist_spikiness"] == histogram_spikiness(d.histogram["counts"]) > 0.5
    assert d.metrics["distinct_pred_values"] == 7


def test_inputs_are_left_untouched():
    probs = torch.tensor([0.75, -0.0, 0.25, 0.5])
    target = torch.tensor([0, 1, 1, 0], dtype=torch.bool)
    before = probs.clone()
    scores = PixelScores()
    scores.update(probs, target)
    scores.compute()
    assert torch.equal(probs.view(torch.int32), before.view(torch.int32))


@pytest.mark.parametrize(
    "probs, target, match",
    [
        (torch.tensor([0.5, 1.5]), torch.tensor([0.0, 1.0]), r"\[0, 1\]"),
        (torch.tensor([0.5, -0.1]), torch.tensor([0.0, 1.0]), r"\[0, 1\]"),
        (torch.tensor([0.5, float("nan")]), torch.tensor([0.0, 1.0]), r"\[0, 1\]"),
        (torch.tensor([0.5, 0.5]), torch.tensor([0.0, 0.5]), "mask"),
        (torch.tensor([0.5, 0.5]), torch.tensor([0.0, float("nan")]), "mask"),
        (torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0, 1.0]), "differ"),
        (torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([0.0, 1.0]), "float32"),
        (torch.tensor([]), torch.tensor([]), "empty"),
    ],
)
def test_bad_input_is_refused(probs, target, match):
    with pytest.raises(ValueError, match=match):
        PixelScores().update(probs, target)


def test_nothing_accumulated_is_an_error():
    with pytest.raises(ValueError, match="no pixels"):
        PixelScores().compute()


def test_one_shot_auprc_on_images_warns_nothing():
    g = torch.Generator().manual_seed(9)
    probs = torch.rand(4, 1, 32, 32, generator=g)
    target = (torch.rand(4, 1, 32, 32, generator=g) > 0.8).float()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = auprc(probs, target)
    assert value == average_precision_score(target.flatten().numpy(), probs.flatten().numpy())


@pytest.mark.parametrize("probs, target", CASES)
def test_chunked_cpu_pass_equals_one_chunk(probs, target, monkeypatch):
    # The CPU pass walks the sorted keys in chunks; runs of ties straddle chunk edges here.
    import trainables.metrics

    whole = summary(_counts(probs, target, numpy_sort=True))
    monkeypatch.setattr(trainables.metrics, "_CHUNK", 7)
    chunked = summary(_counts(probs, target, numpy_sort=True))
    exact = [k for k in whole if not k.startswith("soft_")]  # float sums: order may differ
    assert [chunked[k] for k in exact] == pytest.approx([whole[k] for k in exact], nan_ok=True)
    assert [chunked[k] for k in exact if chunked[k] == chunked[k]] == [
        whole[k] for k in exact if whole[k] == whole[k]
    ]
    assert chunked == pytest.approx(whole, nan_ok=True, rel=1e-12)
    p, y = probs.ravel(), target.ravel()
    assert chunked["auprc"] == average_precision_score(y, p)
