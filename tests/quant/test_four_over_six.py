"""TE 2.20's 4over6 and row-scaled NVFP4, bit for bit: golden vectors, reference, refusals.

Golden vectors: ../shared/golden/nvfp4_4over6_golden.npz (README_4over6.md): 9 cases x every mode,
rowwise on x and columnwise on x.t().contiguous(). Every comparison is exact: codes, E4M3 scale
bytes and values, amax (a vector when row-scaled).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quant import nvfp4, reference
from tests.quant.test_reference_vs_fast import _sample

CASES = [
    "randn_64x128",
    "outlier_64x128",
    "ties256_64x128",
    "ties448_64x128",
    "e4m3sub_64x128",
    "bf16randn_64x128",
    "neartie256_64x128",
    "neartie448_64x128",
]
ROW_SCALED_CASES = ["randn_64x128", "outlier_64x128", "bf16randn_64x128"]


def mode_options(mode: str) -> tuple[tuple[int, int], dict]:
    """A golden mode name -> (block, quantizer keywords): e.g. 'rs_4o6_1d_mse_g256_fast'."""
    parts = mode.split("_")
    options: dict = {}
    if parts[0] == "rs":
        options["row_scaled"] = True
        parts = parts[1:]
    if parts[0] == "4o6":
        _, dims, err, e, path = parts
        options.update(four_over_six=err, e4m3_max=int(e[1:]), four_over_six_fast=path == "fast")
    else:
        dims = parts[1] if len(parts) > 1 else "1d"
    return ((16, 16) if dims == "2d" else (1, 16)), options


def golden_modes(golden: dict, case: str) -> list[str]:
    return sorted(
        {
            k.split("__")[1]
            for k in golden
            if k.startswith(f"{case}__") and "__" in k[len(case) + 2 :]
        }
    )


def golden_directions(golden: dict, case: str, mode: str):
    """(suffix, tensor) for the rowwise (x) and, when stored, the columnwise (x^T) outputs."""
    x = torch.from_numpy(golden[f"{case}__input"])
    if "bf16" in case:
        x = x.to(torch.bfloat16)
    yield "", x
    if f"{case}__{mode}__codes_t" in golden:
        yield "_t", x.t().contiguous()


def assert_golden(golden, case, mode, suffix, codes, scales, scale_bits, amax, block) -> None:
    key = f"{case}__{mode}__"
    where = f"{case} {mode} {'columnwise' if suffix else 'rowwise'}"
    assert np.array_equal(codes.numpy(), golden[f"{key}codes{suffix}"]), where
    assert np.array_equal(scales.numpy(), golden[f"{key}scales{suffix}"][:: block[0]]), where
    bits = golden[f"{key}scales{suffix}_e4m3bits"][:: block[0]]
    assert np.array_equal(scale_bits.numpy(), bits), where
    assert np.array_equal(amax.reshape(-1).numpy(), golden[f"{key}amax{suffix}"]), where


def test_the_golden_file_holds_the_promised_cases_and_modes(golden_4over6):
    modes = golden_modes(golden_4over6, "randn_64x128")
    assert len(modes) == 16 + 2 + 1 + 8
    for case in CASES:
        expected = 27 if case in ROW_SCALED_CASES else 18
        assert len(golden_modes(golden_4over6, case)) == expected, case


# --------------------------------------------------------------------------- the reference


@pytest.mark.parametrize("case", CASES)
def test_reference_reproduces_every_golden_array(golden_4over6, case):
    for mode in golden_modes(golden_4over6, case):
        block, options = mode_options(mode)
        for suffix, x in golden_directions(golden_4over6, case, mode):
            ref = reference.quantize_reference(x, block, **options)
            assert_golden(
                golden_4over6,
                case,
                mode,
                suffix,
                ref.codes,
                ref.scales,
                ref.scale_codes,
                ref.amax,
                block,
            )


# --------------------------------------------------------------------------- the fast path


@pytest.mark.parametrize("case", CASES)
def test_quantize_and_fake_quantize_reproduce_every_golden_array(golden_4over6, case):
    """quantize in every mode, both directions; fake_quantize on the same inputs, including
    the columnwise one as a transposed view (the layout DGRAD/WGRAD hand over, no copy)."""
    for mode in golden_modes(golden_4over6, case):
        block, options = mode_options(mode)
        for suffix, x in golden_directions(golden_4over6, case, mode):
            q = nvfp4.quantize(x, block, **options)
            assert_golden(
                golden_4over6, case, mode, suffix, q.codes, q.scales, q.scale_bits, q.amax, block
            )
            expected_amax_shape = x.shape[:-1] if options.get("row_scaled") else ()
            assert q.amax.shape == expected_amax_shape
            inputs = [x]
            if suffix and x.dtype == torch.float32:
                inputs.append(x.t().contiguous().t())  # x^T as a view: the transposed layout
            for inp in inputs:
                blocks, amax = nvfp4.fake_quantize(inp, block, **options)
                assert torch.equal(blocks, q.decode_blocks()), (case, mode, suffix)
                assert torch.equal(amax, q.amax)


# --------------------------------------------------------------------------- fast == reference

MODES = [
    {"four_over_six": "mae", "e4m3_max": 256},
    {"four_over_six": "mse", "e4m3_max": 448},
    {"four_over_six": "mae", "e4m3_max": 448, "four_over_six_fast": True},
    {"four_over_six": "mse", "e4m3_max": 256, "four_over_six_fast": True},
]
ROW_SCALED = [
    {"row_scaled": True},
    {"row_scaled": True, "four_over_six": "mse", "e4m3_max": 256},
    {"row_scaled": True, "four_over_six": "mae", "e4m3_max": 448, "four_over_six_fast": True},
]


def _ties(shape, gen: torch.Generator) -> torch.Tensor:
    """Tie-rich blocks: E2M1 grid points and midpoints times a power of two per row, each
    16-element block led by +-6 or +-4 times it, so that map-to-4 and map-to-6 are often both
    exact (equal errors) or equally wrong, and one row carries the tensor's 6 * 2^k amax."""
    points = torch.tensor([0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6])
    idx = torch.randint(0, len(points), shape, generator=gen)
    sign = torch.randint(0, 2, shape, generator=gen) * 2 - 1
    x = points[idx] * sign
    x[:, ::16] = torch.where(torch.rand(shape[0], shape[1] // 16, generator=gen) < 0.5, 6.0, 4.0)
    scale = 2.0 ** torch.randint(-4, 3, (shape[0], 1), generator=gen).float()
    x = x * scale
    x[0, 0] = 6.0 * 2.0**3
    return x


def _inputs(seed: int):
    gen = torch.Generator().manual_seed(seed)
    for shape in [(16, 32), (32, 48), (48, 32)]:
        for kind in ["randn", "heavy", "scales", "grid", "outlier", "sparse"]:
            yield kind, _sample(kind, shape, gen)
        yield "ties", _ties(shape, gen)


def _assert_fast_equals_reference(x, block, options) -> None:
    q = nvfp4.quantize(x, block, **options)
    ref = reference.quantize_reference(x, block, **options)
    where = (tuple(x.shape), block, options)
    assert torch.equal(q.codes, ref.codes), where
    assert torch.equal(q.scales, ref.scales), where
    assert torch.equal(q.amax, ref.amax), where
    assert torch.equal(q.dequantize(), ref.dequant), where
    assert torch.equal(q.decode_blocks(), ref.blocks), where


@pytest.mark.parametrize("block", [(1, 16), (16, 16)], ids=["1d", "2d"])
@pytest.mark.parametrize("options", MODES, ids=lambda o: "-".join(map(str, o.values())))
def test_fast_four_over_six_equals_reference(block, options):
    for _, x in _inputs(seed=11):
        _assert_fast_equals_reference(x, block, options)
        _assert_fast_equals_reference(x.t().contiguous(), block, options)


@pytest.mark.parametrize("options", ROW_SCALED, ids=lambda o: "-".join(map(str, o.values())))
def test_fast_row_scaled_equals_reference(options):
    for kind, x in _inputs(seed=12):
        _assert_fast_equals_reference(x, (1, 16), options)
        if kind == "randn":
            _assert_fast_equals_reference(x.to(torch.bfloat16), (1, 16), options)


def test_ties_pick_map_to_6_and_strictly_lower_errors_pick_map_to_4():
    """E = 256 and amax 6, so S_enc = 1. Row 0 ({6, 3, 1.5, -6, 0}) is exact under map-to-6
    (scale 256) and map-to-4 (scale 384): equal errors, so map-to-6. Row 1 ({4 x 15, 3}):
    map-to-6 (scale 176) rounds 4 to 4.125, map-to-4 (scale 256) is exact: map-to-4."""
    x = torch.tensor([[6.0, 3.0, 1.5, -6.0] + [0.0] * 12, [4.0] * 15 + [3.0]])
    for mode in ("mae", "mse"):
        q = nvfp4.quantize(x, four_over_six=mode, e4m3_max=256)
        assert q.scales.flatten().tolist() == [256.0, 256.0]
        assert torch.equal(q.dequantize(), x)
        assert torch.equal(
            q.codes, reference.quantize_reference(x, four_over_six=mode, e4m3_max=256).codes
        )


# --------------------------------------------------------------------------- refusals

REFUSED = [
    ({"four_over_six": "mae", "rht": True}, "four_over_six with rht=True is refused"),
    ({"four_over_six": "mse", "rounding": "stochastic"}, "four_over_six with stochastic"),
    ({"row_scaled": True, "block": (16, 16)}, r"row_scaled=True needs block=\(1, 16\)"),
    ({"row_scaled": True, "rht": True}, "row_scaled=True with rht=True is refused"),
    ({"row_scaled": True, "rounding": "stochastic"}, "row_scaled=True with stochastic"),
    ({"e4m3_max": 256}, "e4m3_max=256 applies to 4over6 tensors only"),
    ({"four_over_six_fast": True}, "four_over_six_fast=True selects 4over6's fast error path"),
    ({"four_over_six": "l1"}, "four_over_six must be None, 'mae' or 'mse', got 'l1'"),
    ({"four_over_six": "mae", "e4m3_max": 512}, "e4m3_max must be 448 or 256, got 512"),
    ({"row_scaled": True, "amax": 3.0}, "amax= is one tensor scale"),
]


@pytest.mark.parametrize(("kwargs", "message"), REFUSED, ids=[m for _, m in REFUSED])
def test_combinations_te_refuses_raise_clear_errors(kwargs, message):
    x = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    options = dict(kwargs)
    block, rounding = options.pop("block", (1, 16)), options.pop("rounding", "nearest")
    rht = options.pop("rht", False)
    gen = torch.Generator().manual_seed(1) if rounding == "stochastic" else None
    for fn in (nvfp4.quantize, nvfp4.fake_quantize):
        with pytest.raises(ValueError, match=message):
            fn(x, block, rounding, gen, rht, **options)
    if "amax" not in options:
        uniforms = torch.rand(32, 32) if rounding == "stochastic" else None
        with pytest.raises(ValueError, match=message):
            reference.quantize_reference(x, block, uniforms, rht, **options)


def test_dequantize_uses_e_and_the_rows_amax(golden_4over6):
    x = torch.from_numpy(golden_4over6["randn_64x128__input"])
    for options in [{"row_scaled": True}, {"four_over_six": "mae", "e4m3_max": 256}]:
        q = nvfp4.quantize(x, **options)
        ref = reference.quantize_reference(x, **options)
        assert torch.equal(q.dequantize(), ref.dequant)
        assert q.e4m3_max == options.get("e4m3_max", 448)
    assert "64 rows" in repr(nvfp4.quantize(x, row_scaled=True))


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES)
def test_cuda_reproduces_every_golden_array(golden_4over6, case):
    """Same arithmetic on the GPU: true divisions, no FMA contraction of the error chain."""
    for mode in golden_modes(golden_4over6, case):
        block, options = mode_options(mode)
        for suffix, x in golden_directions(golden_4over6, case, mode):
            q = nvfp4.quantize(x.cuda(), block, **options)
            assert_golden(
                golden_4over6,
                case,
                mode,
                suffix,
                q.codes.cpu(),
                q.scales.cpu(),
                q.scale_bits.cpu(),
                q.amax.cpu(),
                block,
            )
            blocks, _ = nvfp4.fake_quantize(x.cuda(), block, **options)
            assert torch.equal(blocks.cpu(), q.decode_blocks().cpu())


@pytest.mark.parametrize(
    "options",
    [{"block": (16, 16), "four_over_six": "mse"}, {"row_scaled": True}],
    ids=["4over6-2d", "row-scaled"],
)
def test_new_options_trace_in_one_graph(options):
    """No host sync, no Python branch on a tensor value: torch.compile(fullgraph=True) traces
    the quantizer with the new options (Dynamo only here; quant's compile settings decide the
    code generation) and gives eager's bits."""
    x = torch.randn(64, 128, generator=torch.Generator().manual_seed(9))
    compiled = torch.compile(
        lambda t: nvfp4.fake_quantize(t, **options), fullgraph=True, backend="eager"
    )
    for got, want in zip(compiled(x), nvfp4.fake_quantize(x, **options), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize(
    ("block", "options"),
    [
        ((1, 16), {"four_over_six": "mae"}),
        ((16, 16), {"four_over_six": "mse", "four_over_six_fast": True}),
        ((1, 16), {"four_over_six": "mse", "row_scaled": True}),
    ],
    ids=["1d", "2d-fast", "row-scaled"],
)
def test_chunked_four_over_six_equals_one_chunk(monkeypatch, block, options):
    """The candidates are scored chunk by chunk of rows on CPU; results must not depend on it,
    in the natural layout and the transposed one (x^T as a view)."""
    x = _ties((96, 64), torch.Generator().manual_seed(10))
    whole = nvfp4.quantize(x, block, **options)
    monkeypatch.setattr(nvfp4, "_CHUNK_ELEMENTS", 300)  # 1 or 16 rows of blocks per chunk
    assert len(nvfp4._row_chunks(torch.empty(96, 64))) > 4
    chunked = nvfp4.quantize(x, block, **options)
    assert torch.equal(chunked.codes, whole.codes) and torch.equal(chunked.amax, whole.amax)
    if block == (1, 16):  # xt quantized through its transposed layout, chunked, vs whole
        xt = x.t().contiguous()
        view = xt.t().contiguous().t()  # xt's values in the transposed memory layout
        blocks, amax = nvfp4.fake_quantize(view, block, **options)
        monkeypatch.setattr(nvfp4, "_CHUNK_ELEMENTS", 1 << 17)
        expected = nvfp4.quantize(xt, block, **options)
        assert torch.equal(blocks, expected.decode_blocks()) and torch.equal(amax, expected.amax)


def _te220_variants(x: torch.Tensor):
    return [nvfp4.quantize(x, (16, 16), four_over_six="mae", e4m3_max=256)]


@pytest.mark.slow
def test_inductor_compiled_options_reproduce_the_golden_arrays(golden_4over6):
    """Through Inductor with quant.compile's bit-exact settings, on the near-tie case where
    any reassociated sum or approximate division would flip a candidate (16x16 tiles: the
    element sums and the tile tree; one mode, as compiling costs ~10 s of CPU)."""
    from quant.compile import compile_function

    x = torch.from_numpy(golden_4over6["neartie256_64x128__input"])
    eager, compiled = _te220_variants(x), compile_function(_te220_variants)(x)
    for e, c in zip(eager, compiled, strict=True):
        assert torch.equal(c.codes, e.codes) and torch.equal(c.scales, e.scales)
        assert torch.equal(c.amax, e.amax)
    expected = golden_4over6["neartie256_64x128__4o6_2d_mae_g256_exact__codes"]
    assert np.array_equal(compiled[0].codes.numpy(), expected)
