"""The training loss: BCE + Tversky, weights 1:1 (docs/study.md "Training").

For logits z (B x 1 x H x W) and a mask y in {0, 1}:

    BCE     = mean over all pixels of  -[y log s(c) + (1 - y) log(1 - s(c))],  c = clamp(z, -20, 20)
    p       = sigmoid(z)                                   (Tversky sees the unclamped logits)
    TP_b    = sum_pixels p y,  FP_b = sum p (1 - y),  FN_b = sum (1 - p) y      per image b
    TI_b    = (TP_b + eps) / (TP_b + alpha FP_b + beta FN_b + eps),   eps = 1e-5
    Tversky = 1 - mean_b TI_b
    loss    = w_bce BCE + w_tversky Tversky

alpha = 0.3 weighs false positives and beta = 0.7 false negatives, so missing tumour costs more
than over-segmenting it (a recall-focused Dice; alpha = beta = 0.5 is exactly soft Dice). The eps
makes an image with an empty mask and an all-zero prediction score TI = 1, not 0/0. The clamp only
keeps BCE finite on saturated logits; `binary_cross_entropy_with_logits` is already the stable
log-sum-exp form. Both terms are computed in fp32 even under bf16 autocast: a bf16 sum over
65,536 pixels would lose the small per-pixel terms.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class LossTerms(NamedTuple):
    total: torch.Tensor
    bce: torch.Tensor
    tversky: torch.Tensor


def clamped_bce(logits: torch.Tensor, target: torch.Tensor, clamp: float = 20.0) -> torch.Tensor:
    """Mean pixel BCE on logits clamped to [-clamp, clamp]."""
    return F.binary_cross_entropy_with_logits(logits.float().clamp(-clamp, clamp), target.float())


def tversky_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 0.3,
    beta: float = 0.7,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """1 - mean over images of the Tversky index of sigmoid(logits) against target."""
    p = torch.sigmoid(logits.float()).flatten(1)
    y = target.float().flatten(1)
    tp = (p * y).sum(1)
    fp = p.sum(1) - tp  # sum p (1 - y)
    fn = y.sum(1) - tp  # sum (1 - p) y
    index = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    return 1.0 - index.mean()


def bce_tversky(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    bce_weight: float = 1.0,
    tversky_weight: float = 1.0,
    alpha: float = 0.3,
    beta: float = 0.7,
    smooth: float = 1e-5,
    clamp: float = 20.0,
) -> LossTerms:
    """The paper's loss and its two terms (the terms are for logging)."""
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    bce = clamped_bce(logits, target, clamp)
    tversky = tversky_loss(logits, target, alpha=alpha, beta=beta, smooth=smooth)
    return LossTerms(bce_weight * bce + tversky_weight * tversky, bce, tversky)


class SegmentationLoss(torch.nn.Module):
    """`bce_tversky` with the weights and parameters of a TrialConfig."""

    def __init__(self, config) -> None:
        super().__init__()
        self.kwargs = dict(
            bce_weight=config.bce_weight,
            tversky_weight=config.tversky_weight,
            alpha=config.tversky_alpha,
            beta=config.tversky_beta,
            smooth=config.tversky_smooth,
            clamp=config.logit_clamp,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> LossTerms:
        return bce_tversky(logits, target, **self.kwargs)
