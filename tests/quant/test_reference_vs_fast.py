"""The fast path (quant.nvfp4) equals the slow explicit-loop reference (quant.reference).

The reference is first pinned to Transformer Engine's golden outputs, then the fast path is
compared with it on random tensors of many shapes, distributions and dtypes, for 1x16, 16x16,
RHT and stochastic rounding (same uniform draws).
"""

from __future__ import annotations

import itertools
import struct
import zlib

import pytest
import torch

from quant import nvfp4, reference

BLOCKS = {"1d": (1, 16), "2d": (16, 16)}
SHAPES = [(16, 16), (16, 64), (32, 48), (48, 32), (64, 64)]
DTYPES = [torch.float32, torch.bfloat16]


def _sample(kind: str, shape, gen: torch.Generator) -> torch.Tensor:
    """Distributions that reach every branch: normal, heavy tails, E4M3-subnormal block scales,
    exact grid values and ties, a single huge outlier, many exact zeros."""
    if kind == "randn":
        return torch.randn(shape, generator=gen)
    if kind == "heavy":
        return torch.randn(shape, generator=gen) * torch.exp(3 * torch.randn(shape, generator=gen))
    if kind == "scales":  # rows spanning 2^0 .. 2^-24: normal, subnormal, zero block scales
        rows = torch.arange(shape[0], dtype=torch.float32)[:, None]
        return torch.randn(shape, generator=gen) * torch.exp2(-0.75 * rows)
    if kind == "grid":  # grid points and ties times a power of two
        pts = torch.tensor([0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6])
        idx = torch.randint(0, len(pts), shape, generator=gen)
        sign = torch.randint(0, 2, shape, generator=gen) * 2 - 1
        return pts[idx] * sign * 2.0 ** torch.randint(-3, 4, (shape[0], 1), generator=gen)
    if kind == "outlier":
        x = 0.01 * torch.randn(shape, generator=gen)
        x[shape[0] // 2, 3] = 1e4
        return x
    if kind == "sparse":
        x = torch.randn(shape, generator=gen)
        return x * (torch.rand(shape, generator=gen) < 0.2)
    raise ValueError(kind)


KINDS = ["randn", "heavy", "scales", "grid", "outlier", "sparse"]


def _assert_same(q: nvfp4.NVFP4Tensor, ref: reference.ReferenceResult) -> None:
    assert torch.equal(q.codes, ref.codes)
    assert torch.equal(q.scales, ref.scales)
    assert torch.equal(q.scale_bits, ref.scale_codes)
    assert torch.equal(q.amax, ref.amax)
    assert torch.equal(q.dequantize(), ref.dequant)
    assert torch.equal(q.decode_blocks(), ref.blocks)


# --------------------------------------------------------------------------- the reference itself


@pytest.mark.parametrize("case", ["randn_32x64", "outlier_32x64", "e4m3sub_32x64", "ties_32x64"])
def test_reference_matches_golden(golden, case):
    x = torch.from_numpy(golden[f"{case}__input"])
    for tag, block in BLOCKS.items():
        ref = reference.quantize_reference(x, block)
        assert torch.equal(ref.codes, torch.from_numpy(golden[f"{case}__te{tag}_codes"]))
        assert torch.equal(ref.dequant, torch.from_numpy(golden[f"{case}__te{tag}_dequant"]))
    assert torch.equal(ref.amax.view(1), torch.from_numpy(golden[f"{case}__te_global_amax"]))


def test_reference_rht_matches_golden(golden):
    x = torch.from_numpy(golden["randn_32x64__bf16_input"])
    rotated = reference.rht_reference(x.t())
    assert torch.equal(rotated, torch.from_numpy(golden["randn_32x64__rht_xt_bf16"]))
    ref = reference.quantize_reference(x.t(), rht=True)
    assert torch.equal(ref.codes, torch.from_numpy(golden["randn_32x64__rht_col_codes"]))
    assert torch.equal(torch.tensor(reference.rht_matrix_reference()), nvfp4.rht_matrix())


def test_reference_e4m3_table_equals_torch_float8_cast():
    """The table-driven E4M3 rounding and torch's cast agree on every value and every tie."""
    table = reference.E4M3_VALUES
    mids = [(a + b) / 2 for a, b in itertools.pairwise(table)]
    probes = table + mids + [m * (1 + 2**-20) for m in mids] + [m * (1 - 2**-20) for m in mids]
    probes += [2.0**-10, 2.0**-10 * 1.0001, 2.0**-11, 1e-30, 0.0, 447.9, 448.0]
    x = torch.tensor(probes, dtype=torch.float32)
    theirs = x.to(torch.float8_e4m3fn)
    ours = [reference.e4m3_round(v) for v in x.tolist()]
    assert [v for v, _ in ours] == theirs.float().tolist()
    assert [c for _, c in ours] == theirs.view(torch.uint8).tolist()


def test_fl_rounds_doubles_to_fp32():
    assert reference.fl(1 / 3) == torch.tensor(1 / 3, dtype=torch.float32).item()
    assert reference.fl(3.5e38) == float("inf") and reference.fl(-3.5e38) == float("-inf")
    assert reference.fl(1e-46) == 0.0 and reference.fl(1e-45) == 2.0**-149
    assert struct.pack("<f", reference.bf16_round(1.00390625)) == struct.pack("<f", 1.0)  # tie


# --------------------------------------------------------------------------- fast == reference


def test_e2m1_fast_rounding_equals_threshold_table():
    # every multiple of 1/256 in [-7, 7] plus the neighbours of every tie
    dense = torch.arange(-7 * 256, 7 * 256 + 1, dtype=torch.float32) / 256
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0])
    up = torch.nextafter(ties, torch.full_like(ties, 10))
    down = torch.nextafter(ties, torch.zeros_like(ties))
    v = torch.cat([dense, ties, up, down, -ties, -up, -down, torch.tensor([-0.0, 1e-40, -1e-40])])
    expected = torch.tensor([reference.e2m1_code(f) for f in v.tolist()], dtype=torch.uint8)
    assert torch.equal(nvfp4.encode_e2m1(v), expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tag", ["1d", "2d"])
@pytest.mark.parametrize("kind", KINDS)
def test_fast_equals_reference_on_random_shapes(kind, tag, dtype):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{kind}-{tag}-{dtype}".encode()))
    for shape in SHAPES:
        x = _sample(kind, shape, gen).to(dtype)
        q = nvfp4.quantize(x, block=BLOCKS[tag])
        _assert_same(q, reference.quantize_reference(x, BLOCKS[tag]))
        blocks, amax = nvfp4.fake_quantize(x, block=BLOCKS[tag])
        assert torch.equal(blocks, q.decode_blocks()) and torch.equal(amax, q.amax)


@pytest.mark.parametrize("kind", ["randn", "heavy", "outlier"])
def test_fast_rht_equals_reference(kind):
    gen = torch.Generator().manual_seed(21)
    for shape in [(16, 32), (48, 64)]:
        x = _sample(kind, shape, gen).to(torch.bfloat16)
        assert torch.equal(nvfp4.rht(x).float(), reference.rht_reference(x))
        _assert_same(nvfp4.quantize(x, rht=True), reference.quantize_reference(x, rht=True))


@pytest.mark.parametrize("tag", ["1d", "2d"])
def test_fast_stochastic_rounding_equals_reference_with_the_same_draws(tag):
    gen = torch.Generator().manual_seed(31)
    for kind, shape in itertools.product(["randn", "grid", "scales"], [(16, 32), (32, 48)]):
        x = _sample(kind, shape, gen)
        seed = int(torch.randint(0, 2**31, (), generator=gen))
        q = nvfp4.quantize(
            x, BLOCKS[tag], "stochastic", generator=torch.Generator().manual_seed(seed)
        )
        bits = nvfp4.stochastic_bits(shape, torch.Generator().manual_seed(seed))
        draws = nvfp4.stochastic_thresholds(bits, x)
        _assert_same(q, reference.quantize_reference(x, BLOCKS[tag], uniforms=draws))


def test_fast_rht_with_stochastic_rounding_equals_reference():
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(41)).to(torch.bfloat16)
    q = nvfp4.quantize(
        x, rounding="stochastic", generator=torch.Generator().manual_seed(5), rht=True
    )
    bits = nvfp4.stochastic_bits(x.shape, torch.Generator().manual_seed(5))
    draws = nvfp4.stochastic_thresholds(bits, nvfp4.rht(x))
    _assert_same(q, reference.quantize_reference(x, uniforms=draws, rht=True))


@pytest.mark.gpu
@pytest.mark.parametrize("tag", ["1d", "2d"])
def test_cuda_equals_reference(tag):
    gen = torch.Generator().manual_seed(51)
    for kind in KINDS:
        x = _sample(kind, (64, 64), gen)
        q = nvfp4.quantize(x.cuda(), block=BLOCKS[tag])
        ref = reference.quantize_reference(x, BLOCKS[tag])
        assert torch.equal(q.codes.cpu(), ref.codes)
        assert torch.equal(q.dequantize().cpu(), ref.dequant)
        blocks, _ = nvfp4.fake_quantize(x.cuda(), block=BLOCKS[tag])
        assert torch.equal(blocks.cpu(), ref.blocks)
