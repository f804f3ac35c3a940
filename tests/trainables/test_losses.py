"""BCE + Tversky against values worked out by hand (docs/study.md "Training")."""

import math

import pytest
import torch

from trainables.losses import bce_tversky, clamped_bce, tversky_loss

EPS = 1e-5


def _image(values):
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 2, 2)


def test_bce_of_zero_logits_is_log_two():
    logits = torch.zeros(2, 1, 2, 2)
    target = torch.tensor([1.0, 0, 0, 1, 1, 1, 0, 0]).reshape(2, 1, 2, 2)
    assert clamped_bce(logits, target).item() == pytest.approx(math.log(2), rel=1e-7)


def test_bce_clamps_logits_to_twenty():
    # A confidently wrong logit of 100 costs 20 + log(1 + e^-20), not 100.
    logits, target = torch.full((1, 1, 1, 1), 100.0), torch.zeros(1, 1, 1, 1)
    expected = 20 + math.log1p(math.exp(-20))
    assert clamped_bce(logits, target).item() == pytest.approx(expected, rel=1e-7)
    assert clamped_bce(logits, target, clamp=5.0).item() == pytest.approx(
        5 + math.log1p(math.exp(-5)), rel=1e-7
    )


def test_tversky_by_hand():
    # p = 0.5 everywhere, one positive pixel of four: TP 0.5, FP 1.5, FN 0.5.
    logits, target = torch.zeros(1, 1, 2, 2), _image([1, 0, 0, 0])
    index = (0.5 + EPS) / (0.5 + 0.3 * 1.5 + 0.7 * 0.5 + EPS)
    assert tversky_loss(logits, target).item() == pytest.approx(1 - index, rel=1e-6)


def test_tversky_weighs_false_negatives_more():
    target = _image([1, 1, 0, 0])
    misses = torch.logit(_image([0.0, 0.0, 0.0, 0.0]).clamp(1e-6, 1 - 1e-6))  # 2 FN
    extras = torch.logit(_image([1.0, 1.0, 1.0, 1.0]).clamp(1e-6, 1 - 1e-6))  # 2 FP
    assert tversky_loss(misses, target).item() > tversky_loss(extras, target).item()


def test_tversky_is_a_mean_over_images():
    p = torch.tensor([0.9, 0.2, 0.6, 0.1, 0.3, 0.8, 0.7, 0.4]).reshape(2, 1, 2, 2)
    y = torch.tensor([1.0, 0, 1, 0, 0, 1, 1, 1]).reshape(2, 1, 2, 2)
    indices = []
    for b in range(2):
        pb, yb = p[b].flatten().tolist(), y[b].flatten().tolist()
        tp = sum(a * t for a, t in zip(pb, yb, strict=True))
        fp = sum(a * (1 - t) for a, t in zip(pb, yb, strict=True))
        fn = sum((1 - a) * t for a, t in zip(pb, yb, strict=True))
        indices.append((tp + EPS) / (tp + 0.3 * fp + 0.7 * fn + EPS))
    expected = 1 - sum(indices) / 2
    assert tversky_loss(torch.logit(p), y).item() == pytest.approx(expected, rel=1e-6)


def test_empty_mask_and_empty_prediction_scores_a_perfect_index():
    logits, target = torch.full((1, 1, 2, 2), -60.0), torch.zeros(1, 1, 2, 2)
    assert tversky_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_half_half_is_soft_dice():
    p = torch.tensor([0.9, 0.2, 0.6, 0.1]).reshape(1, 1, 2, 2)
    y = _image([1, 0, 1, 1])
    tp, total_p, total_y = (p * y).sum().item(), p.sum().item(), y.sum().item()
    dice = (2 * tp + 2 * EPS) / (total_p + total_y + 2 * EPS)
    got = tversky_loss(torch.logit(p), y, alpha=0.5, beta=0.5).item()
    assert got == pytest.approx(1 - dice, rel=1e-6)


def test_total_is_the_weighted_sum():
    logits = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    target = (torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.7).float()
    terms = bce_tversky(logits, target)
    assert terms.total.item() == pytest.approx(terms.bce.item() + terms.tversky.item(), rel=1e-7)
    weighted = bce_tversky(logits, target, bce_weight=2.0, tversky_weight=0.5)
    expected = 2.0 * terms.bce.item() + 0.5 * terms.tversky.item()
    assert weighted.total.item() == pytest.approx(expected, rel=1e-6)


def test_loss_is_fp32_for_bf16_logits_and_gradients_are_finite():
    logits = (torch.randn(2, 1, 4, 4) * 50).to(torch.bfloat16).requires_grad_()
    target = (torch.rand(2, 1, 4, 4) > 0.5).float()
    terms = bce_tversky(logits, target)
    assert terms.total.dtype == torch.float32
    terms.total.backward()
    assert torch.isfinite(logits.grad).all()


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ"):
        bce_tversky(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 2))
