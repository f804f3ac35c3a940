"""The output layer runs outside autocast: float32 logits on every device.

Under bf16 autocast (how CUDA trials train and evaluate) every other layer computes in bf16, but
the logits the metrics rank must be float32 (models.layers.full_precision_head). Checked on CPU
with bf16 autocast, for every arch at its tiny scale.
"""

import pytest
import torch

from models.layers import gemm_layers
from models.registry import build_model, list_archs


@pytest.mark.parametrize("arch", list_archs())
def test_logits_are_float32_under_bf16_autocast(arch):
    torch.manual_seed(0)
    model = build_model(arch, "tiny").eval()
    head = list(gemm_layers(model).values())[-1]  # the output layer is the last one built
    seen = {}
    handle = head.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    handle.remove()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_head = head(seen["x"])  # what autocast alone would have produced
    assert logits.shape == (2, 1, 64, 64)
    assert logits.dtype == torch.float32 and seen["x"].dtype == torch.float32
    # The trunk did run in bf16: the head's input is bf16 values, cast up.
    assert torch.equal(seen["x"], seen["x"].bfloat16().float())
    with torch.no_grad():
        assert torch.equal(logits, head(seen["x"]))  # the head computed in float32
    assert bf16_head.dtype == torch.bfloat16
    assert not torch.equal(bf16_head.float(), logits)


@pytest.mark.parametrize("arch", ["cnn", "swin"])
def test_no_autocast_is_the_plain_forward(arch):
    torch.manual_seed(0)
    model = build_model(arch, "tiny").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert model(x).dtype == torch.float32
        assert model.double()(x.double()).dtype == torch.float64  # no cast without autocast
