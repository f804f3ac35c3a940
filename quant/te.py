"""Optional Transformer Engine backend: real NVFP4 GEMMs on Blackwell GPUs.

TE (2.20) describes NVFP4 training with one recipe object, `NVFP4BlockScaling`, whose fields
(read from TE's `transformer_engine/common/recipe/__init__.py`) switch, for all layers at once:

    disable_rht                  RHT on the WGRAD operands (dY^T and X^T, along M)
    disable_stochastic_rounding  SR on the gradient dY (in DGRAD and in WGRAD)
    disable_2d_quantization      16x16 weight tiles (else 1x16, re-quantized along N for DGRAD)
    row_scaled_activation        one tensor scale per row of the forward input X (FPROP), and
                                 per column of X for its WGRAD copy
    nvfp4_4over6                 4over6 on 'none' | 'weights' | 'activations' | 'all' forward
                                 tensors, both copies (a weight's FPROP and DGRAD copies, an
                                 input's FPROP and WGRAD copies); gradients never
    nvfp4_4over6_e4m3_use_256    which 4over6 tensors use E = 256 (same scopes; else 448)
    nvfp4_4over6_err_mode        'MAE' | 'MSE', one for every 4over6 tensor

and TE refuses a 4over6 or row-scaled tensor whose quantizer has the RHT or SR (the forward
input's has the RHT unless disable_rht), and a row-scaled 4over6 WGRAD copy. The fast 4over6
error path is not a recipe field but an environment variable read at every quantize call,
`NVTE_NVFP4_4OVER6_ERR_USE_FAST_MATH`; `te_environment` gives it (and pins
`NVTE_USE_FAST_MATH=0`, whose approximate reciprocal would break bit-exactness).

Every other choice is fixed: every operand of every GEMM is quantized, inputs and gradients with
1x16 blocks, and the backward re-quantizes the high-precision tensors. So TE can express exactly
the operand tables that these fields generate (`te_operand_table`, `_te_configurations`):
`nvfp4`, `sr_only`, `2d_rht`, `2d_rht_sr` (TE's default), the two 4over6 built-ins, and any
declared recipe equal to one of them. `baseline` needs no TE at all. `fwd_only`, `chain_rule`
and `fwd_rht` (high-precision or forward-reused backward operands, a rotated forward), 4over6 on
a gradient, settings that differ between the two copies of one tensor (that would take TE's
experimental per-direction CustomRecipe/HybridQuantizer, not mapped here), and any convolution
are beyond it: `te_recipe_kwargs` and `check_te_trial` say why, at plan time.

The mapping is derived from the recipe's *data*, not its name, so an added recipe that matches a
TE configuration maps too. Every field is passed explicitly (TE's dataclass defaults read NVTE_*
environment variables at import). `transformer_engine` is imported lazily, only by the
functions that need it; the mapping itself imports nothing.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

from torch import nn

from quant.modules import Skip, skip_rule
from quant.recipes import Q2, Q_SR, QH, QH_SR, SLOTS, Operand, Q, Recipe, get_recipe

__all__ = [
    "TERefused",
    "check_te_trial",
    "te_autocast",
    "te_environment",
    "te_model",
    "te_operand_table",
    "te_prepare",
    "te_recipe",
    "te_recipe_kwargs",
]

_TE_FLAGS: tuple[str, ...] = (
    "disable_rht",
    "disable_stochastic_rounding",
    "disable_2d_quantization",
)
_SCOPES: tuple[str, ...] = ("none", "weights", "activations", "all")
_FAST_MATH_ENV = "NVTE_NVFP4_4OVER6_ERR_USE_FAST_MATH"
_SYMBOLS = {"input": "X", "weight": "W", "grad_output": "dY"}


class TERefused(ValueError):
    """A configuration TE itself refuses (a 4over6/row-scaled quantizer with RHT or SR)."""


def te_operand_table(
    disable_rht: bool,
    disable_stochastic_rounding: bool,
    disable_2d_quantization: bool,
    row_scaled_activation: bool = False,
    nvfp4_4over6: str = "none",
    nvfp4_4over6_e4m3_use_256: str = "all",
    nvfp4_4over6_err_mode: str = "MAE",
    fast_math: bool = False,
) -> dict[tuple[str, str], Operand]:
    """What NVFP4BlockScaling(...) does to each (gemm, role) slot; raises TERefused where TE does.

    `fast_math` is the NVTE_NVFP4_4OVER6_ERR_USE_FAST_MATH switch (not a recipe field).
    """
    rht, sr, two_d = not disable_rht, not disable_stochastic_rounding, not disable_2d_quantization
    weight = Q2 if two_d else Q
    table = {
        ("fprop", "input"): Q,
        ("fprop", "weight"): weight,
        ("dgrad", "grad_output"): Q_SR if sr else Q,
        ("dgrad", "weight"): weight,
        ("wgrad", "grad_output"): (QH_SR if sr else QH) if rht else (Q_SR if sr else Q),
        ("wgrad", "input"): QH if rht else Q,
    }
    scope_of = {"weight": "weights", "input": "activations"}
    for role in ("weight", "input"):
        scopes = ("all", scope_of[role])
        four_over_six = nvfp4_4over6 in scopes
        row_scaled = row_scaled_activation and role == "input"
        if role == "input" and rht and (four_over_six or row_scaled):
            raise TERefused("a 4over6 or row-scaled input quantizer with the RHT")
        if row_scaled and four_over_six:
            raise TERefused("a row-scaled 4over6 columnwise (WGRAD) copy of the input")
        options: dict[str, Any] = {"row_scaled": row_scaled}
        if four_over_six:
            options.update(
                four_over_six=nvfp4_4over6_err_mode.lower(),
                four_over_six_fast=fast_math,
                e4m3_max=256 if nvfp4_4over6_e4m3_use_256 in scopes else 448,
            )
        for gemm in ("fprop", "dgrad" if role == "weight" else "wgrad"):
            table[(gemm, role)] = replace(table[(gemm, role)], **options)
    return table


@functools.cache
def _te_configurations() -> tuple[tuple[dict[str, Any], dict[tuple[str, str], Operand]], ...]:
    """Every configuration TE accepts, with its operand table; TE's defaults come first."""
    out = []
    for values in itertools.product(
        (False, True),
        (False, True),
        (False, True),
        (False, True),
        _SCOPES,
        ("all", "none", "weights", "activations"),
        ("MAE", "MSE"),
        (False, True),
    ):
        config = dict(
            zip(
                (
                    *_TE_FLAGS,
                    "row_scaled_activation",
                    "nvfp4_4over6",
                    "nvfp4_4over6_e4m3_use_256",
                    "nvfp4_4over6_err_mode",
                    "fast_math",
                ),
                values,
                strict=True,
            )
        )
        try:
            out.append((config, te_operand_table(**config)))
        except TERefused:
            continue
    return tuple(out)


def _te_configuration(recipe: Recipe | str) -> dict[str, Any] | None:
    """The first TE configuration reproducing `recipe`; None for an unquantized recipe."""
    recipe = get_recipe(recipe)
    if not recipe.quantized:
        return None
    table = {slot: recipe.operand(*slot) for slot in SLOTS}
    for config, candidate in _te_configurations():
        if candidate == table:
            return config
    raise NotImplementedError(
        f"recipe {recipe.name!r} cannot run on Transformer Engine: {_te_mismatch(table)}; "
        "use the emulated backend (quant.prepare)"
    )


def te_recipe_kwargs(recipe: Recipe | str) -> dict[str, Any] | None:
    """NVFP4BlockScaling keyword arguments reproducing `recipe`; None for an unquantized recipe.

    Raises NotImplementedError when no TE configuration gives the recipe's operand table,
    saying why.
    """
    config = _te_configuration(recipe)
    if config is None:
        return None
    return {k: v for k, v in config.items() if k != "fast_math"}


def te_environment(recipe: Recipe | str) -> dict[str, str]:
    """The environment TE must run `recipe` under: the 4over6 fast error path on or off, and
    TE's approximate-reciprocal fast math off (set both: an inherited value would change bits)."""
    config = _te_configuration(recipe)
    fast = bool(config and config["fast_math"])
    return {_FAST_MATH_ENV: "1" if fast else "0", "NVTE_USE_FAST_MATH": "0"}


def _te_mismatch(table: dict[tuple[str, str], Operand]) -> str:
    """Why an operand table is none of TE's, as specific as can be said."""
    tables = [t for _, t in _te_configurations()]
    for gemm, role in SLOTS:
        op = table[(gemm, role)]
        if role == "grad_output" and (op.four_over_six or op.row_scaled):
            return (
                f"its {gemm.upper()} operand is {op.notation('dY')}; TE never applies 4over6 "
                "or row scaling to gradients"
            )
        possible = {t[(gemm, role)] for t in tables}
        if op not in possible:
            choices = ", ".join(sorted({p.notation(_SYMBOLS[role]) for p in possible}))
            return (
                f"its {gemm.upper()} operand is {op.notation(_SYMBOLS[role])}, "
                f"TE only does {choices} there"
            )
    for role, backward in (("weight", "dgrad"), ("input", "wgrad")):
        a, b = table[("fprop", role)], table[(backward, role)]
        if a.quantizer_options() != b.quantizer_options():
            return (
                f"its FPROP and {backward.upper()} copies of {_SYMBOLS[role]} differ in 4over6 or "
                "row-scaled settings, and TE's recipe gives both copies of a tensor the same "
                "(this would take TE's experimental per-direction HybridQuantizer, not mapped)"
            )
    four_over_six = [op for op in table.values() if op.four_over_six]
    if len({op.four_over_six for op in four_over_six}) > 1:
        return "TE has one nvfp4_4over6_err_mode for every 4over6 tensor, not one per operand"
    if len({op.four_over_six_fast for op in four_over_six}) > 1:
        return "TE's 4over6 fast error path is one process-wide switch, not one per operand"
    if table[("fprop", "input")].row_scaled and table[("wgrad", "input")].rht:
        return "TE refuses a row-scaled input with the RHT"
    if any(op.row_scaled for op in table.values()) and not table[("fprop", "input")].row_scaled:
        return "TE's row_scaled_activation row-scales the forward input X only"
    return (
        "TE's recipe fields switch RHT, SR, 2D, 4over6 and row scaling for all GEMMs together "
        "(and refuse 4over6 or row scaling on an input with the RHT), not one by one"
    )


def check_te_trial(recipe: Recipe | str, layer_kinds: Iterable[str], *, what: str) -> None:
    """Refuse, with the reason, a trial the TE backend cannot run exactly (plan time).

    layer_kinds: the kinds of layer the recipe quantizes in the model ({"linear", "conv"}).
    """
    recipe = get_recipe(recipe)
    if not recipe.quantized:
        return
    if "conv" in set(layer_kinds):
        raise ValueError(
            f"backend 'te': {what} quantizes convolutions and Transformer Engine has no NVFP4 "
            "convolution; use backend: emulated"
        )
    try:
        te_recipe_kwargs(recipe)
    except NotImplementedError as err:
        raise ValueError(f"backend 'te': {err}") from None


def te_recipe(recipe: Recipe | str) -> Any:
    """The `transformer_engine.common.recipe.NVFP4BlockScaling` object for `recipe` (or None)."""
    kwargs = te_recipe_kwargs(recipe)
    if kwargs is None:
        return None
    _import_te()
    from transformer_engine.common.recipe import NVFP4BlockScaling

    return NVFP4BlockScaling(**kwargs)


@contextlib.contextmanager
def te_autocast(recipe: Recipe | str) -> Iterator[None]:
    """Run TE modules under the recipe (TE's `autocast`, or `fp8_autocast` on older releases)."""
    te_rec = te_recipe(recipe)
    if te_rec is None:
        yield
        return
    te = _import_te()
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
    te = _import_te()
    os.environ.update(te_environment(recipe))  # read by TE at every quantize call
    for name in targets:
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        owner.register_module(leaf, _te_linear(te, getattr(owner, leaf)))
    return model


def te_model(model: nn.Module, recipe: Recipe | str, *, skip: Skip = None) -> nn.Module:
    """`te_prepare`, and the model's forward then always runs inside `te_autocast(recipe)`.

    The forward is wrapped on the instance (no wrapper module), so parameter names stay those
    of the emulated model (te.Linear adds its own `_extra_state` entry to the state_dict).
    """
    recipe = get_recipe(recipe)
    te_prepare(model, recipe, skip=skip)
    if recipe.quantized:
        forward = model.forward

        @functools.wraps(forward)
        def forward_under_te(*args, **kwargs):
            with te_autocast(recipe):
                return forward(*args, **kwargs)

        model.forward = forward_under_te
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


def _import_te() -> Any:
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
