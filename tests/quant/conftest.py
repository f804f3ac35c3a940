"""Fixtures of the quant tests: TE 2.20's 4over6 / row-scaled golden vectors, a short training
run."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from tests.conftest import SHARED, load_golden

GOLDEN_4OVER6 = SHARED / "golden" / "nvfp4_4over6_golden.npz"


@pytest.fixture(scope="session")
def golden_4over6():
    """TE 2.20.2's reference outputs for 4over6 and row-scaled NVFP4 (golden/README_4over6.md)."""
    return load_golden(GOLDEN_4OVER6)


def _train_losses(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    loss_fn: Callable,
    *,
    lr: float,
    steps: int,
) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(model(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.fixture
def train_losses():
    """train_losses(model, x, target, loss_fn, lr=, steps=): the loss of each of `steps` Adam
    steps on one batch, for tests that a (quantized) model learns."""
    return _train_losses
