"""The scale chain on the device: no host synchronization, non-finite operands recorded in a
device-side flag (quant.nvfp4.FiniteCheck) and never turned into finite values."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from quant import nvfp4

SYNC_OPS = ("aten::_local_scalar_dense", "aten::item")
KINDS = [
    {},
    {"block": (16, 16)},
    {"rht": True},
    {"rounding": "stochastic"},
]
IDS = ["1d", "2d", "rht", "sr"]


def host_syncs(fn) -> int:
    """How many device-to-host scalar reads `fn()` makes (the ops a GPU would stall on)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key in SYNC_OPS)


def _kw(kw: dict) -> dict:
    if kw.get("rounding") == "stochastic":
        return {**kw, "generator": torch.Generator().manual_seed(0)}
    return kw


@pytest.mark.parametrize("kw", KINDS, ids=IDS)
def test_quantizing_under_a_deferred_check_never_syncs(kw):
    x = torch.randn(64, 48, generator=torch.Generator().manual_seed(1))
    check = nvfp4.FiniteCheck()
    with nvfp4.deferred(check):
        assert host_syncs(lambda: nvfp4.fake_quantize(x, **_kw(kw))) == 0
        assert host_syncs(lambda: nvfp4.quantize(x, **_kw(kw))) == 0
        amax = x.abs().amax()
        assert host_syncs(lambda: nvfp4.fake_quantize(x[16:32], amax=amax, **_kw(kw))) == 0
    assert not check.flag


@pytest.mark.parametrize("kw", KINDS, ids=IDS)
def test_a_non_finite_operand_is_recorded_and_comes_out_nan(kw):
    x = torch.randn(32, 32)
    x[3, 5] = float("inf")
    check = nvfp4.FiniteCheck()
    with nvfp4.deferred(check):
        blocks, amax = nvfp4.fake_quantize(x, **_kw(kw))
    assert check.flag.item() and not torch.isfinite(amax)
    assert torch.isnan(blocks).all()  # never finite garbage
    check.reset()
    assert not check.flag
    with nvfp4.deferred(check):
        nvfp4.fake_quantize(torch.ones(16, 16), amax=torch.tensor(float("nan")))
    assert check.flag
    # outside `deferred` the direct call still raises at once
    with pytest.raises(ValueError, match="1 non-finite"):
        nvfp4.fake_quantize(x, **_kw(kw))


def test_deferred_checks_nest_and_restore():
    outer, inner = nvfp4.FiniteCheck(), nvfp4.FiniteCheck()
    bad = torch.full((16, 16), float("nan"))
    with nvfp4.deferred(outer):
        with nvfp4.deferred(inner):
            nvfp4.fake_quantize(bad)
        nvfp4.fake_quantize(torch.ones(16, 16))
    assert inner.flag and not outer.flag
    with pytest.raises(ValueError, match="non-finite"):
        nvfp4.fake_quantize(bad)


def test_scale_functions_broadcast_over_per_row_amaxes():
    """A per-row amax vector goes through the same chain: row r equals quantizing row r alone."""
    x = (
        torch.randn(8, 64, generator=torch.Generator().manual_seed(2))
        * torch.logspace(0, 6, 8)[:, None]
    )
    row_amax = x.abs().amax(dim=1, keepdim=True)
    block_amax = x.abs().view(8, 4, 16).amax(dim=2)
    s_enc, s_dec = nvfp4.tensor_scales(row_amax)
    scales = nvfp4.block_scales(block_amax, s_enc)
    factors = nvfp4.encode_factors(scales, s_dec)
    for r in range(8):
        q = nvfp4.quantize(x[r : r + 1])
        assert torch.equal(scales[r : r + 1], q.scales)
        s_enc_r, s_dec_r = nvfp4.tensor_scales(q.amax)
        assert torch.equal(factors[r], nvfp4.encode_factors(q.scales[0], s_dec_r))


@pytest.mark.parametrize("arch", ["cnn", "swin"])
def test_quant_adds_no_host_sync_to_a_training_step(arch):
    """torch.profiler over one optimizer step per recipe: the device-to-host reads of a quantized
    step must equal the baseline step's (the step of models themselves may have some)."""
    import copy

    import models
    import quant

    torch.manual_seed(0)
    base = models.build_model(arch, "tiny", **({"img_size": 32} if arch == "swin" else {}))
    x = torch.randn(2, 3, 32, 32)
    y = (torch.rand(2, 1, 32, 32) > 0.7).float()
    counts = {}
    for recipe in quant.list_recipes():
        gen = torch.Generator().manual_seed(0)
        model = quant.prepare(copy.deepcopy(base), recipe, generator=gen)
        optimizer = torch.optim.AdamW(model.parameters())
        check = nvfp4.FiniteCheck()
        step = functools.partial(_train_step, model, optimizer, check, x, y)
        step()  # warm-up: lazy initialization is not part of a step
        counts[recipe] = host_syncs(step)
        assert not check.flag
    assert all(n == counts["baseline"] for n in counts.values()), counts


def _train_step(model, optimizer, check, x, y) -> None:
    optimizer.zero_grad(set_to_none=True)
    with nvfp4.deferred(check):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
    optimizer.step()
