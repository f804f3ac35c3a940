"""Emulator vs Transformer Engine on a Blackwell GPU: bitwise parity of the quantized operands.

    .venv/bin/python -m bench.te_parity [--recipe nvfp4_4o6] [--arch vit_adamw] [--epochs 1]

Needs a CUDA device of compute capability >= 10.0 (Blackwell) and transformer_engine (pip install
'.[te]'); without them it says what is missing and exits with code 77 (the "skipped" convention),
so a CI step can tell a skip from a failure (exit 1).

1. Operands, bitwise. One batch of synthetic LGG-like data runs through the model (the first
   `sweep plan` trial of the recipe on the given arch); for every quantized Linear, its input X
   and weight W are quantized by TE's own forward quantizers for the recipe (the recipe state's
   [input, weight] quantizers, what te.Linear uses in FPROP) and by quant.nvfp4 with the
   recipe's FPROP operand settings, and the two are dequantized (TE's dequantize kernel,
   `NVFP4Tensor.dequantize` here: the same formula). Round-to-nearest operands must be equal bit
   for bit; a mismatch is printed per layer and fails the run. (Stochastic rounding is TE's
   8-bit draw against ours in distribution only, so SR operands are not compared.)
2. One trial each way. The same trial config trains for `--epochs` with backend "emulated" and
   backend "te" (quant.te), and the final metrics are printed side by side: they agree up to the
   GEMMs' fp32 summation order, not bitwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

SKIPPED = 77


def _skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device"
    major, minor = torch.cuda.get_device_capability()
    if major < 10:
        name = torch.cuda.get_device_name()
        return f"{name} is compute capability {major}.{minor}; NVFP4 GEMMs need Blackwell (10.0+)"
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception as err:  # TE raises assorted errors when its CUDA libraries are missing
        return f"transformer_engine does not import ({err}); pip install '.[te]'"
    return None


def _recipe_state(te_recipe, mode: str, count: int):
    try:
        from transformer_engine.pytorch.quantization import RecipeState
    except ImportError:  # releases before the module was renamed
        from transformer_engine.pytorch.fp8 import RecipeState
    return RecipeState.create(te_recipe, mode=mode, num_quantizers=count).make_quantizers()


def _config(recipe: str, arch: str, epochs: int, backend: str):
    from trainables.config import TrialConfig

    return TrialConfig(
        arch=arch,
        scale="tiny",
        recipe=recipe,
        seed=2026,
        synthetic={"patients": 8, "size": 64, "slices_per_patient": 8},
        image_size=64,
        epochs=epochs,
        batch_size=8,
        backend=backend,
    )


def _linear_inputs(model: torch.nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input of every quantized Linear on one forward (2-D, tokens x features)."""
    from quant.modules import converted_layers

    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        layer.register_forward_pre_hook(
            lambda m, args, name=name: inputs.setdefault(name, args[0].detach().flatten(0, -2))
        )
        for name, layer in converted_layers(model).items()
        if isinstance(layer, torch.nn.Linear)
    ]
    with torch.no_grad():
        model(batch)
    for hook in hooks:
        hook.remove()
    return inputs


def compare_operands(recipe_name: str, arch: str) -> int:
    """Part 1; returns the number of operands that differ."""
    from quant import nvfp4
    from quant.te import te_environment, te_recipe
    from trainables.factories import build_model_for

    config = _config(recipe_name, arch, 1, "emulated")
    recipe = config.recipe_object()
    os.environ.update(te_environment(recipe))
    model = build_model_for(config, torch.Generator().manual_seed(0)).cuda()
    batch = torch.randn(8, 3, 64, 64, device="cuda")
    input_q, weight_q, _ = _recipe_state(te_recipe(recipe), "forward", 3)
    mismatches = 0
    for name, x in _linear_inputs(model, batch).items():
        w = model.get_submodule(name).weight.detach()
        for role, tensor, quantizer, op in [
            ("X", x, input_q, recipe.fprop_input),
            ("W", w, weight_q, recipe.fprop_weight),
        ]:
            if op.mode != "quantize" or op.stochastic:
                continue
            ours = nvfp4.quantize(tensor, op.block, **op.quantizer_options()).dequantize()
            theirs = quantizer(tensor.contiguous()).dequantize(dtype=torch.float32)
            same = torch.equal(ours, theirs)
            differ = int((ours != theirs).sum())
            print(f"  {name:<28} {role}  {'equal' if same else f'{differ} elements differ'}")
            mismatches += not same
    return mismatches


def compare_trials(recipe_name: str, arch: str, epochs: int) -> None:
    """Part 2: one trial per backend, final metrics side by side."""
    from trainables.loop import train

    results = {}
    for backend in ("emulated", "te"):
        with tempfile.TemporaryDirectory() as tmp:
            config = _config(recipe_name, arch, epochs, backend)
            results[backend] = train(config, checkpoint_dir=Path(tmp), device="cuda")
    print(f"\n  {'metric':<20}{'emulated':>14}{'te':>14}")
    for key in sorted(results["emulated"].final_metrics):
        a = results["emulated"].final_metrics[key]
        b = results["te"].final_metrics.get(key, float("nan"))
        print(f"  {key:<20}{a:>14.6g}{b:>14.6g}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="nvfp4_4o6")
    parser.add_argument("--arch", default="vit_adamw", choices=["vit_adamw", "vit_adamax", "swin"])
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    reason = _skip_reason()
    if reason is not None:
        print(f"te_parity: skipped: {reason}")
        return SKIPPED
    print(f"te_parity: {args.recipe} on {args.arch}, FPROP operands, TE vs emulator")
    mismatches = compare_operands(args.recipe, args.arch)
    compare_trials(args.recipe, args.arch, args.epochs)
    if mismatches:
        print(f"\nFAIL: {mismatches} quantized operand(s) differ from Transformer Engine's")
        return 1
    print("\nOK: every round-to-nearest operand is bitwise equal to Transformer Engine's")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
