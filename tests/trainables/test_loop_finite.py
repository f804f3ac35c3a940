"""The loop's once-per-step check: a NaN/inf NVFP4 operand fails the run through the device-side
flag (quant.nvfp4.FiniteCheck) read with the loss, before any optimizer step."""

from __future__ import annotations

import pytest
import torch

from tests.support.trials import tiny_config
from trainables.checkpoint import STATE_FILE
from trainables.loop import NonFiniteOperandError, TrainingRun


def test_a_non_finite_gradient_operand_fails_the_step(tmp_path):
    config = tiny_config(tmp_path / "cache", recipe="nvfp4")
    run = TrainingRun(config, checkpoint_dir=tmp_path / "ckpt")
    before = {k: v.detach().clone() for k, v in run.model.named_parameters()}
    last = [m for m in run.model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    # dY of a quantized layer turns inf in the backward: the loss is finite, the gradient is not.
    last.register_full_backward_pre_hook(lambda module, grad: (grad[0] * float("inf"),))
    with pytest.raises(NonFiniteOperandError, match=r"NaN or inf at epoch 1, step 0"):
        run.fit()
    assert not (tmp_path / "ckpt" / STATE_FILE).exists()
    after = dict(run.model.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in before)  # no optimizer step taken
    assert run.step_model is run.model  # compile: auto on the CPU is off
