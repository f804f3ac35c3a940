"""Optional Transformer Engine backend: real NVFP4 GEMMs on Blackwell GPUs.

TE (>= 2.14) describes NVFP4 training with one recipe object, `NVFP4BlockScaling`, and three
switches (read from TE's `transformer_engine/common/recipe/__init__.py`):

    disable_rht                  RHT on the WGRAD operands (dY^T and X^T, along M)
    disable_stochastic_rounding  SR on the gradient dY (in DGRAD and in WGRAD)
    disable_2d_quantization      16x16 weight tiles (else 1x16, re-quantized along N for DGRAD)

Everything else is fixed: every operand of every GEMM is quantized, inputs and gradients with
1x16 blocks, and the backward re-quantizes the high-precision tensors. So TE can express exactly
the eight operand tables that these switches generate (`te_operand_table`), which are four of the
paper's recipes: `nvfp4` (all three disabled), `sr_only` (RHT and 2D disabled), `2d_rht` (SR
disabled) and `2d_rht_sr` (TE's default). `baseline` needs no TE at all. `fwd_only`,
`chain_rule` and `fwd_rht` (high-precision or forward-reused backward operands, a rotated
forward) and any convolution are beyond TE, and say so.

The mapping is derived from the recipe's *data*, not its name, so an added recipe that matches a
TE configuration maps too. `transformer_engine` is imported lazily, only by the functions that
need it; the mapping itself imports nothing.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from quant.modules import Skip, skip_rule
from quant.recipes import Q2, Q_SR, QH, QH_SR, SLOTS, Operand, Q, Recipe, get_recipe

TE_FLAGS: tuple[str, ...] = (
    "disable_rht",
    "disable_stochastic_rounding",
    "disable_2d_quantization",
)


def te_operand_table(
    disable_rht: bool, disable_stochastic_rounding: bool, disable_2d_quantization: bool
) -> dict[tuple[str, str], Operand]:
    """What TE's NVFP4BlockScaling does to each (gemm, role) slot for one setting of its flags."""
    rht, sr, two_d = not disable_rht, not disable_stochastic_rounding, not disable_2d_quantization
    weight = Q2 if two_d else Q
    return {
        ("fprop", "input"): Q,
        ("fprop", "weight"): weight,
        ("dgrad", "grad_output"): Q_SR if sr else Q,
        ("dgrad", "weight"): weight,
        ("wgrad", "grad_output"): (QH_SR if sr else QH) if rht else (Q_SR if sr else Q),
        ("wgrad", "input"): QH if rht else Q,
    }


def te_recipe_kwargs(recipe: Recipe | str) -> dict[str, bool] | None:
    """NVFP4BlockScaling keyword arguments reproducing `recipe`; None for an unquantized recipe.

    Raises NotImplementedError when no setting of TE's three flags gives the recipe's operand
    table, naming the first slot TE cannot match.
    """
    recipe = get_recipe(recipe)
    if not recipe.quantized:
        return None
    table = {slot: recipe.operand(*slot) for slot in SLOTS}
    for values in itertools.product((False, True), repeat=len(TE_FLAGS)):
        if te_operand_table(*values) == table:
            return dict(zip(TE_FLAGS, values, strict=True))
    raise NotImplementedError(
        f"recipe {recipe.name!r} cannot run on Transformer Engine: {_te_mismatch(table)}; "
        "use the emulated backend (quant.prepare)"
    )


def _te_mismatch(table: dict[tuple[str, str], Operand]) -> str:
    """Why an operand table is none of TE's: the first slot TE never produces, or the mix."""
    symbols = {"input": "X", "weight": "W", "grad_output": "dY"}
    tables = [te_operand_table(*v) for v in itertools.product((False, True), repeat=len(TE_FLAGS))]
    for gemm, role in SLOTS:
        possible = {t[(gemm, role)] for t in tables}
        if table[(gemm, role)] not in possible:
            choices = ", ".join(sorted(op.notation(symbols[role]) for op in possible))
            return (
                f"its {gemm.upper()} operand is {table[(gemm, role)].notation(symbols[role])}, "
                f"TE only does {choices} there"
            )
    return "TE's three flags switch RHT, SR and 2D for all GEMMs together, not one by one"


def te_recipe(recipe: Recipe | str) -> Any:
    """The `transformer_engine.common.recipe.NVFP4BlockScaling` object for `recipe` (or None)."""
    kwargs = te_recipe_kwargs(recipe)
    if kwargs is None:
        return None
    import_te()
    from transformer_engine.common.recipe import NVFP4BlockScaling

    return NVFP4BlockScaling(**kwargs)


@contextlib.contextmanager
def te_autocast(recipe: Recipe | str) -> Iterator[None]:
    """Run TE modules under the recipe (TE's `autocast`, or `fp8_autocast` on older releases)."""
    te_rec = te_recipe(recipe)
    if te_rec is None:
        yield
        return
    te = import_te()
    if hasattr(te, "autocast"):
        context = te.autocast(enabled=True, recipe=te_rec)
    else:
        context = te.fp8_autocast(enabled=True, fp8_recipe=te_rec)
    with context:
        yield


def te_prepare(model: nn.Module, recipe: Recipe | str, *, skip: Skip = None) -> nn.Module:
    """Swap every nn.Linear (not skipped) for `te.pytorch.Linear` sharing its Parameters.

    Run the model inside `te_autocast(recipe)`. A convolution that would be quantized raises
    NotImplementedError (TE has no NVFP4 convolution); mark it full precision or skip it.
    """
    recipe = get_recipe(recipe)
    te_recipe_kwargs(recipe)  # fail early on recipes TE cannot express
    is_skipped = skip_rule(model, skip)
    targets = []
    for name, module in model.named_modules():
        if is_skipped(name, module):
            continue
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            raise NotImplementedError(
                f"layer {name!r} ({type(module).__name__}): Transformer Engine has no NVFP4 "
                "convolution; keep it full precision (skip=...) or use quant.prepare"
            )
        if type(module) is nn.Linear:
            targets.append(name)
    if not recipe.quantized or not targets:
        return model
    te = import_te()
    for name in targets:
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        owner.register_module(leaf, _te_linear(te, getattr(owner, leaf)))
    return model


def _te_linear(te: Any, linear: nn.Linear) -> nn.Module:
    swapped = te.Linear(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        params_dtype=linear.weight.dtype,
        device=linear.weight.device,
    )
    # Share the very Parameter objects: optimizer state and state_dict keys stay valid.
    swapped.weight = linear.weight
    if linear.bias is not None:
        swapped.bias = linear.bias
    return swapped


def import_te() -> Any:
    """`transformer_engine.pytorch`, or an ImportError that says how to get it."""
    try:
        import transformer_engine.pytorch as te
    except ImportError as exc:
        raise ImportError(
            "the Transformer Engine backend needs transformer_engine (a CUDA build, Blackwell "
            "GPU for NVFP4): pip install '.[te]' on such a machine, or use quant.prepare "
            f"(the emulator) instead ({exc})"
        ) from exc
    return te


def te_available() -> bool:
    """True when transformer_engine.pytorch imports and a CUDA device is present."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # TE raises assorted errors when its CUDA libraries are missing
        return False
    return True
