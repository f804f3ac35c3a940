"""torch.compile for the quantized model, with the compiler settings that keep NVFP4 bit-exact.

    step_model = quant.compile.compile_model(model)     # fullgraph, bit-exact settings

The quantizer (quant.nvfp4) and the quantized layers (quant.modules) trace into one graph per
model with no graph break: the scale chain stays on the device, SR bytes come from the trial's
generator through a custom op, and the conv geometry is plain Python. What the compiler may not
do is change a rounding, and three of its defaults would:

- Triton lowers an fp32 `x / y` to the approximate `div.full.f32`; docs/nvfp4.md s2 needs correctly
  rounded divisions (S_enc = 2688 / a, the encode factor 1 / (s * S_dec)).
  `eager_numerics.division_rounding` makes it `div_rn`, as eager CUDA divides.
- Triton contracts a multiply and an add into one fused multiply-add (one rounding instead of
  two). `emulate_precision_casts` turns that off (`enable_fp_fusion=False`) and also keeps
  down-then-up casts (the RHT's fp32 -> bf16 -> fp32), which Inductor otherwise drops. The
  quantizer does not rely on the latter: compiled, it rounds to bf16 with integer ops.
- TF32 (or bf16 oneDNN) fp32 matmuls would truncate the RHT's operands; eager code switches
  the precision around the rotation, compiled code cannot, so `compile_model` requires the
  default "highest" fp32 matmul precision.

Inductor's C++ backend (CPU) already compiles with -ffp-contract=off and without unsafe math,
and divides exactly. tests/quant/test_compile.py pins the compiled quantizer to the golden
vectors and compiled layers to eager ones; CUDA variants of those tests run where a GPU is.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

#: Inductor options that keep every rounding of the quantizer as eager code does it.
BIT_EXACT_OPTIONS: dict[str, Any] = {
    "emulate_precision_casts": True,
    "eager_numerics.division_rounding": True,
}


#: Inductor options for CPU graphs, for speed only (no arithmetic changes): store every
#: intermediate that more than one kernel reads instead of recomputing it in each. Inductor's
#: default recomputes a cheap-looking producer inside every consumer, and the quantizer reads
#: each operand twice (block amax, then encode): a dropout mask's random numbers were drawn
#: three times per step in the compiled Swin (33 random-number loops where the baseline has
#: 11). Measured side by side in one process on the 2-core CPU, 4m models (BENCHMARKS.md,
#: issue 18): Swin nvfp4 step 355 -> 301 ms (x1.24 -> x1.07 its baseline, which is unchanged),
#: CNN no change (x1.11 both). GPUs keep Inductor's default (not measured there).
CPU_FUSION_OPTIONS: dict[str, Any] = {"realize_reads_threshold": 1}


def check_matmul_precision() -> None:
    """Compiled RHTs need exact fp32 products: refuse TF32/bf16 fp32 matmuls."""
    precision = torch.get_float32_matmul_precision()
    if precision != "highest":
        raise RuntimeError(
            f"torch.get_float32_matmul_precision() is {precision!r}: compiled NVFP4 code needs "
            "'highest' (TF32/bf16 fp32 matmuls would truncate the RHT operands); call "
            "torch.set_float32_matmul_precision('highest') before compiling"
        )


def compile_model(model: torch.nn.Module, *, dynamic: bool | None = None, **kwargs: Any):
    """`torch.compile(model, fullgraph=True)` with `BIT_EXACT_OPTIONS` and the options of the
    device `model` is on (`_with_options`); returns the compiled module (it shares `model`'s
    parameters). `dynamic=None` is torch's automatic dynamic
    shapes: the first batch size gets a static graph, a second one (an epoch's last batch)
    one graph with a symbolic batch dimension that serves every later size."""
    check_matmul_precision()
    device = next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0)).device
    options = _with_options(kwargs, device)
    return torch.compile(model, fullgraph=True, dynamic=dynamic, **options)


def compile_function(fn, *, dynamic: bool | None = False, **kwargs: Any):
    """The same for a function (e.g. quant.nvfp4.fake_quantize)."""
    check_matmul_precision()
    return torch.compile(fn, fullgraph=True, dynamic=dynamic, **_with_options(kwargs))


def _with_options(kwargs: dict[str, Any], device: torch.device | None = None) -> dict[str, Any]:
    """Inductor gets BIT_EXACT_OPTIONS; the debugging backends (eager, aot_eager) take none.

    On CUDA also `layout_optimization=False`: with it, torch 2.11's Inductor failed its own
    stride check (`assert_size_stride` on a `convolution_backward` output: channels-last
    expected, contiguous returned) in the compiled step of the CNN, baseline included, on an
    H200. Without it the step compiled and ran (BENCHMARKS.md, issue 18). On the CPU also
    CPU_FUSION_OPTIONS. A function (no device known) gets BIT_EXACT_OPTIONS alone.
    """
    if kwargs.get("backend", "inductor") != "inductor":
        return kwargs
    options = dict(BIT_EXACT_OPTIONS)
    kind = None if device is None else device.type
    if kind == "cuda":
        options["layout_optimization"] = False
    elif kind == "cpu":
        options.update(CPU_FUSION_OPTIONS)
    return {**kwargs, "options": {**options, **kwargs.get("options", {})}}
