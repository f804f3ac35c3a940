"""torch.compile(fullgraph=True) of the quantizer and the quantized layers, bitwise against eager.

Compile time is what this file costs, so every test compiles ONE function that runs many cases
(a graph per case would cost a compiler run each):

- the golden vectors through the Inductor-compiled quantizer with quant.compile's bit-exact
  settings (one graph: every 1x16, 16x16 and RHT case), and compiled == eager on inputs that
  reach every rounding path (one graph);
- every recipe on a net with a Linear, a Conv2d and a ConvTranspose2d, forward and backward,
  captured whole (fullgraph) through AOTAutograd (`aot_eager`: the same joint graph Inductor
  gets, run by the eager kernels) and compared with eager: outputs and weight gradients
  bitwise (the SR recipes prove the random bytes come in eager order), bias gradients and the
  loss up to fp32 summation order; the same through Inductor (2d_rht_sr, CPU and CUDA);
- non-finite operands through Inductor (the quantizer graph above, and a quantized Linear):
  the deferred flag is set and every decoded value is NaN, never finite garbage.

Measured on the 2-core box with a cold compile cache: ~140 s for this file (~100 s warm; the
Inductor layer test ~22 s warm). CUDA variants run where a GPU is.
"""

from __future__ import annotations

import functools

import pytest
import torch

import quant
from quant import nvfp4
from quant.compile import compile_function, compile_model
from tests.quant.test_nvfp4 import CASES, RHT_CASES  # the golden file's cases

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _t(array, device) -> torch.Tensor:
    return torch.from_numpy(array).to(device)


def _quantize_1d(x):
    return nvfp4.quantize(x)


def _quantize_2d(x):
    return nvfp4.quantize(x, block=(16, 16))


def _quantize_rht(x):
    return nvfp4.quantize(x, rht=True)


@pytest.mark.parametrize("device", DEVICES)
def test_golden_vectors_through_the_compiled_quantizer(golden, device):
    """One small graph per mode and shape (2 shapes): the cases of one shape share it."""
    q1, q2, qr = (compile_function(f) for f in (_quantize_1d, _quantize_2d, _quantize_rht))
    for case in CASES:
        x = _t(golden[f"{case}__input"], device)
        for tag, q in (("1d", q1(x)), ("2d", q2(x))):
            assert torch.equal(q.codes, _t(golden[f"{case}__te{tag}_codes"], device)), (case, tag)
            assert q.amax.item() == golden[f"{case}__te_global_amax"][0]
            assert torch.equal(q.dequantize(), _t(golden[f"{case}__te{tag}_dequant"], device))
        assert torch.equal(q1(x).scales, _t(golden[f"{case}__te1d_scales"], device))
        assert torch.equal(q2(x).scales, _t(golden[f"{case}__te2d_scales_blocks"], device))
    for case in RHT_CASES:
        xt = _t(golden[f"{case}__bf16_input"], device).to(torch.bfloat16).t()
        q = qr(xt)
        assert torch.equal(q.codes, _t(golden[f"{case}__rht_col_codes"], device)), case
        assert torch.equal(q.scales, _t(golden[f"{case}__rht_col_scales"], device))
        assert q.amax.item() == golden[f"{case}__rht_col_global_amax"][0]


def _hard_input(device) -> torch.Tensor:
    """Rows spanning 40 binades, exact E2M1 ties, a zero block, E4M3-subnormal blocks."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(96, 64, generator=gen) * torch.logspace(-20, 20, 96).unsqueeze(1)
    x[0] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] * 8)
    x[1, :16] = 0.0
    x[2] = torch.randn(64, generator=gen) * 1e-3
    x[2, 0] = 448.0
    return x.to(device)


def _variants(x: torch.Tensor, generator: torch.Generator, amax: torch.Tensor):
    """Every path of the quantizer once: codes (1x16, SR), the fake-quantized operand in every
    block mode and layout, a bf16 input, a given amax, TE 2.20's 4over6 and row-scaled amax."""
    sr = {"rounding": "stochastic", "generator": generator}
    xt = x.t().contiguous().t()  # the transposed-layout path of DGRAD/WGRAD operands
    return [
        nvfp4.quantize(x),
        nvfp4.quantize(x, **sr),
        nvfp4.fake_quantize(x, block=(16, 16)),
        nvfp4.fake_quantize(x.to(torch.bfloat16), rht=True),
        nvfp4.fake_quantize(xt, **sr),
        nvfp4.fake_quantize(x[16:48], amax=amax),
        nvfp4.fake_quantize(xt, four_over_six="mse", e4m3_max=256),
        nvfp4.fake_quantize(x, row_scaled=True),
    ]


def _flat(results) -> list[torch.Tensor]:
    out = []
    for r in results:
        if isinstance(r, nvfp4.NVFP4Tensor):
            out += [r.codes, r.scales, r.amax]
        elif isinstance(r, tuple):
            out += list(r)
        else:
            out.append(r)
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_quantizer_equals_eager_bitwise(device):
    x = _hard_input(device)
    gen = torch.Generator(device=device)
    nvfp4.register_generator(gen)
    amax = x.abs().amax() * 2
    gen.manual_seed(3)
    eager = _flat(_variants(x, gen, amax))
    compiled_fn = compile_function(_variants)
    for _ in range(2):  # the second call runs the cached graph: the stream moves on alike
        gen.manual_seed(3)
        compiled = _flat(compiled_fn(x, gen, amax))
        assert len(compiled) == len(eager)
        for i, (c, e) in enumerate(zip(compiled, eager, strict=True)):
            assert c.dtype == e.dtype and torch.equal(c, e), f"result {i} differs"

    # the same graph on operands with an inf (its amax is inf: the scale chain alone would
    # give finite scales) or a NaN: every scale and every decoded value is NaN, never finite
    # garbage. Eager code raises here; compiled code cannot, and Inductor once folded the
    # poisoning `amax * 0` away, decoding inf operands as finite values.
    for bad_value in (float("inf"), -float("inf"), float("nan")):
        bad = x.clone()
        bad[20, 7] = bad_value
        for i, r in enumerate(compiled_fn(bad, gen, amax)):
            values = r.scales if isinstance(r, nvfp4.NVFP4Tensor) else r[0]
            assert torch.isnan(values).all(), f"result {i}: finite values from {bad_value}"


def test_round_to_bf16_by_bits_equals_the_cast():
    bits = torch.randint(-(2**31), 2**31, (1 << 16,), generator=torch.Generator().manual_seed(0))
    x = bits.to(torch.int32).view(torch.float32)
    special = [0.0, -0.0, 1e-45, -1e-45, 3.4028235e38, -3.4028235e38, float("inf"), -float("inf")]
    ties = [1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8), 2**-130 * 3]
    # NaNs whose payload sits in the low 16 bits only: rounding them must not reach inf
    nans = torch.tensor([0x7F800001, 0x7F807FFF, 0x7F808000, -0x7FFFFF], dtype=torch.int32)
    x = torch.cat([x, torch.tensor(special + ties), nans.view(torch.float32)])
    ours, cast = nvfp4._round_to_bf16(x.clone()), x.to(torch.bfloat16).float()
    finite = torch.isfinite(x)
    assert torch.equal(ours[finite], cast[finite])
    assert torch.equal(torch.isnan(ours), torch.isnan(cast))  # NaN stays NaN, never finite


def test_float_block_amax_of_compiled_code_equals_the_int32_one_of_eager_code():
    """Compiled code reduces the block amax as floats, eager code as int32 patterns
    (`_chunk_amax`): the same maxima on random patterns of every binade and the edges; a NaN
    block is NaN both ways (bench/exhaustive_compiled.py checks the order exhaustively)."""
    gen = torch.Generator().manual_seed(4)
    bits = torch.randint(-(2**31), 2**31, (64, 1, 8, 16), generator=gen, dtype=torch.int64)
    x = bits.to(torch.int32).view(torch.float32)
    x = torch.where(torch.isnan(x), 1.0, x)
    edges = [0.0, -0.0, 1e-45, -1e-45, 2**-126, 3.4028235e38, -float("inf"), 6.0]
    x[0, 0, :, :8] = torch.tensor(edges)
    x[1, 0, 0] = -0.0
    x[2, 0, 1, 3] = float("nan")
    work = nvfp4._Work(x, [slice(0, 64)])
    as_int = nvfp4._chunk_amax(x, work, torch.empty(64, 8, dtype=torch.int32))
    as_float = nvfp4._chunk_amax(x, work, torch.empty(64, 8))
    assert torch.isnan(as_float[2, 1]) and torch.isnan(as_int.view(torch.float32)[2, 1])
    as_float[2, 1] = as_int.view(torch.float32)[2, 1] = 0.0
    assert torch.equal(as_float.view(torch.int32), as_int)


# --------------------------------------------------------------------------- layers


class ThreeKinds(torch.nn.Module):
    """A Conv2d, a ConvTranspose2d and a Linear: every quantized layer kind in one graph, and
    a Linear without bias (its output is the GEMM's own, scaled in place)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.up = torch.nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.proj = torch.nn.Linear(16, 32)
        self.head = torch.nn.Linear(32, 16, bias=False)

    def forward(self, x):
        y = self.up(self.conv(x))
        return self.head(self.proj(y.permute(0, 2, 3, 1))).square().mean()


def _step(run, model, x, generator):
    """Loss and every gradient of one forward + backward by `run` (model, or model compiled),
    the SR stream reset first."""
    generator.manual_seed(5)
    model.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    check = nvfp4.FiniteCheck(x.device)
    with nvfp4.deferred(check):  # as the training loop runs it: the flag is written in-graph
        loss = run(x)
        loss.backward()
    assert not check.flag.item()
    grads = {name: p.grad for name, p in model.named_parameters()}
    return {"loss": loss.detach(), "input": x.grad, **grads}


def _compare(recipe, compiled, eager):
    for name, e in eager.items():
        c = compiled[name]
        if name.endswith("weight") or name == "input":
            assert torch.equal(c, e), f"{recipe}: {name} differs"
        else:  # reductions (bias gradients, the loss): fp32 summation order may differ
            torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-7, msg=f"{recipe}: {name}")


def _layers_case(recipe: str, device: str, compile_fn, wrap=lambda run: run):
    """wrap(run): how both the compiled and the eager step call the model (e.g. under autocast)."""
    gen = torch.Generator(device=device)
    torch.manual_seed(0)
    model = quant.prepare(ThreeKinds(), recipe, generator=gen).to(device)
    x = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(1)).to(device)
    compiled, eager_run = wrap(compile_fn(model)), wrap(model)
    # cuDNN picks its algorithms per call unless told to be deterministic: bitwise needs one
    cudnn = torch.backends.cudnn
    with cudnn.flags(
        enabled=True, benchmark=False, deterministic=True, allow_tf32=cudnn.allow_tf32
    ):
        first = _step(compiled, model, x, gen)  # compiled first: memo caches of quant still cold
        eager = _step(eager_run, model, x, gen)
        _compare(recipe, first, eager)
        _compare(recipe, _step(compiled, model, x, gen), eager)  # again, from the cached graphs


def _bf16_autocast(device: str, run):
    def under_autocast(x):
        with torch.autocast(device, torch.bfloat16):
            return run(x)

    return under_autocast


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recipe", quant.list_recipes())
def test_every_recipe_and_layer_kind_compiles_whole_and_matches_eager(recipe, device):
    _layers_case(recipe, device, lambda m: compile_model(m, backend="aot_eager"))


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_layers_through_inductor_match_eager(device):
    """Through Inductor with the options compile_model gives the device (on the CPU its
    fusion options too)."""
    _layers_case("2d_rht_sr", device, compile_model)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recipe", ["nvfp4", "2d_rht_sr"])
def test_layers_compiled_under_autocast_match_eager(recipe, device):
    """The backward GEMMs run with autocast off when the step is compiled, too (the traced
    backward runs in the caller's autocast state): once, nvfp4's gradients drifted ~1e-5 and
    the RHT recipes failed to trace (found on an H200, reproduced on the CPU)."""
    compile_fn = lambda m: compile_model(m, backend="aot_eager")  # noqa: E731
    _layers_case(recipe, device, compile_fn, wrap=functools.partial(_bf16_autocast, device))


def test_compiled_layers_record_non_finite_operands_without_raising():
    """Through Inductor (CPU), whose algebraic simplifications once dropped the NaN poisoning."""
    gen = torch.Generator()
    model = quant.prepare(torch.nn.Linear(32, 16), "nvfp4", generator=gen)
    compiled = compile_model(model)
    x = torch.randn(16, 32)
    x[3, 3] = float("inf")
    check = nvfp4.FiniteCheck()
    with nvfp4.deferred(check):
        y = compiled(x)
    assert check.flag.item() and torch.isnan(y).all()
    check.reset()
    with nvfp4.deferred(check):
        compiled(x.nan_to_num(posinf=1.0)).sum().backward()
    assert not check.flag.item()


def test_compile_refuses_tf32_matmuls():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        with pytest.raises(RuntimeError, match="needs 'highest'"):
            compile_model(torch.nn.Linear(16, 16))
    finally:
        torch.set_float32_matmul_precision(before)


def test_compiled_sr_needs_a_registered_generator():
    unregistered = torch.Generator()
    f = compile_function(nvfp4.fake_quantize, backend="eager")
    with pytest.raises(Exception, match="register_generator"):
        f(torch.randn(16, 16), rounding="stochastic", generator=unregistered)
