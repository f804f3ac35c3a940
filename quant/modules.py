"""`prepare(model, recipe)`: turn a model's Linear / Conv2d / ConvTranspose2d into NVFP4 layers.

Like torchao's `quantize_(model, config, filter_fn)`, one call walks the model and converts the
layers in place. The conversion changes each layer's *class* (nn.Linear -> QLinear, nn.Conv2d ->
QConv2d, nn.ConvTranspose2d -> QConvTranspose2d) and adds three attributes; the module object,
its Parameters, buffers, hooks and state_dict keys stay exactly what they were, so an optimizer
built before `prepare` keeps working, a checkpoint loads either way, and nothing is copied.

- Left alone: every layer named in `model.full_precision_layers()` (a model's own declaration,
  e.g. the CNN's first conv) and every layer matched by `skip` (names, or a callable
  `skip(name, module) -> bool`, True to leave the layer alone: the opposite polarity and
  argument order of torchao's `filter_fn(module, fqn)`, see `prepare`). Only the exact classes
  nn.Linear / nn.Conv2d / nn.ConvTranspose2d are converted: subclasses such as
  nn.MultiheadAttention's out_proj are used through F.* calls that never reach a module's
  forward, so converting them would be a silent no-op.
- A layer that cannot be quantized (a channel or feature count that is not a multiple of 16,
  grouped convolutions, non-zero padding modes) raises, naming the layer: declare it full
  precision or skip it. Decisions never depend on the recipe, so the same layers are converted
  under every recipe, baseline included (which then runs the plain torch ops, bit for bit).
- Idempotent: preparing a prepared model again (same or another recipe) only updates the
  recipe and generator of the converted layers.
- Stochastic rounding draws from one `torch.Generator` shared by every layer of the model. The
  trial owns it: it seeds it, and saves `generator.get_state()` in checkpoints and restores it
  with `set_state` so a resumed run continues the same random stream. A recipe with SR and no
  generator is an error.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from quant import functional as qf
from quant import nvfp4
from quant.gemm import Observer
from quant.recipes import Recipe, get_recipe

__all__ = [
    "QConv2d",
    "QConvTranspose2d",
    "QLinear",
    "Skip",
    "converted_layers",
    "is_quantized",
    "prepare",
    "skip_rule",
    "unprepare",
]

#: Layers `prepare` leaves alone: qualified names, or `skip(name, module) -> bool` (True: leave it).
Skip = Iterable[str] | Callable[[str, nn.Module], bool] | None


class _QuantizedLayer:
    """Mixin of the converted layers: the recipe, the shared SR generator and the layer's name."""

    recipe: Recipe
    generator: torch.Generator | None
    layer_name: str
    #: Set by quant.telemetry.collect while it measures: (layer) -> the observer of one forward.
    start_observing: Callable[[nn.Module], Observer] | None = None

    def _gemm_options(self) -> dict[str, Any]:
        """The quant.functional keywords every forward passes: recipe, generator, observer, name."""
        start = self.start_observing
        return {
            "recipe": self.recipe,
            "generator": self.generator,
            "observe": None if start is None else start(self),
            "name": self.layer_name,
        }

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, recipe={self.recipe.name}"


class QLinear(_QuantizedLayer, nn.Linear):
    """nn.Linear whose three GEMMs follow `self.recipe` (quant.functional.linear)."""

    def forward(self, x: Tensor) -> Tensor:
        return qf.linear(x, self.weight, self.bias, **self._gemm_options())


class QConv2d(_QuantizedLayer, nn.Conv2d):
    """nn.Conv2d whose implicit GEMMs follow `self.recipe` (quant.functional.conv2d)."""

    def forward(self, x: Tensor) -> Tensor:
        geometry = (self.stride, self.padding, self.dilation, self.groups)
        return qf.conv2d(x, self.weight, self.bias, *geometry, **self._gemm_options())


class QConvTranspose2d(_QuantizedLayer, nn.ConvTranspose2d):
    """nn.ConvTranspose2d whose GEMMs follow `self.recipe` (quant.functional.conv_transpose2d)."""

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        output_padding = self._output_padding(
            x, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation
        )
        geometry = (self.stride, self.padding, output_padding, self.groups, self.dilation)
        return qf.conv_transpose2d(x, self.weight, self.bias, *geometry, **self._gemm_options())


#: exact class -> its quantized class (subclasses are deliberately not matched).
_QUANTIZED_CLASS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: QLinear,
    nn.Conv2d: QConv2d,
    nn.ConvTranspose2d: QConvTranspose2d,
}
_ORIGINAL_CLASS = {q: base for base, q in _QUANTIZED_CLASS.items()}


def is_quantized(module: nn.Module) -> bool:
    """True for a layer converted by `prepare` (whatever its current recipe)."""
    return isinstance(module, _QuantizedLayer)


def prepare(
    model: nn.Module,
    recipe: Recipe | str,
    *,
    generator: torch.Generator | None = None,
    skip: Skip = None,
) -> nn.Module:
    """Convert `model`'s Linear/Conv2d/ConvTranspose2d layers in place to run `recipe`.

    Returns `model` (the same object). See the module docstring for what is converted.

    `skip`: layers to leave in full precision, beyond `model.full_precision_layers()`: an
    iterable of qualified names (from `model.named_modules()`), or a callable called as
    `skip(name, module)` that returns True for a layer to LEAVE ALONE. That is the opposite of
    torchao's `quantize_(model, config, filter_fn)`, whose `filter_fn(module, fqn)` takes the
    module first and returns True for a layer to QUANTIZE; reuse one as
    `skip=lambda name, module: not filter_fn(module, name)`. A callable whose parameters are
    spelled like torchao's (one named `fqn`, or `module` first) is refused with that advice.
    """
    recipe = get_recipe(recipe)
    if recipe.stochastic and generator is None:
        raise ValueError(
            f"recipe {recipe.name!r} uses stochastic rounding: pass generator=torch.Generator() "
            "seeded by the trial (its state is checkpointed with the trial)"
        )
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator is not None:
        nvfp4.register_generator(generator)  # compiled layers draw SR bytes from it by key
    is_skipped = skip_rule(model, skip)
    for name, module in model.named_modules():
        if is_skipped(name, module):
            if is_quantized(module):  # skipped now, converted earlier: give it back
                module.__class__ = _ORIGINAL_CLASS[type(module)]
            continue
        if is_quantized(module):
            module.recipe, module.generator = recipe, generator
        elif type(module) in _QUANTIZED_CLASS:
            _check_quantizable(name, module)
            module.__class__ = _QUANTIZED_CLASS[type(module)]
            module.recipe, module.generator, module.layer_name = recipe, generator, name or "model"
    return model


def unprepare(model: nn.Module) -> nn.Module:
    """Undo `prepare`: every converted layer gets its original class back (parameters shared)."""
    for module in model.modules():
        if is_quantized(module):
            module.__class__ = _ORIGINAL_CLASS[type(module)]
    return model


def converted_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Qualified name -> layer that `prepare` converted (`is_quantized`), in module order.

    What *was* converted; models.layers.quantized_layers is what a recipe *would* quantize, read
    off a model's declaration (`full_precision_layers()`) without preparing it.
    """
    return {name: m for name, m in model.named_modules() if is_quantized(m)}


def skip_rule(model: nn.Module, skip: Skip) -> Callable[[str, nn.Module], bool]:
    """(name, module) -> True for the layers `prepare` leaves alone (declared or skipped)."""
    declared = model.full_precision_layers() if hasattr(model, "full_precision_layers") else ()
    names = set(declared)
    if callable(skip):
        _check_skip_signature(skip)
    if skip is not None and not callable(skip):
        if isinstance(skip, str):
            raise TypeError("skip must be an iterable of layer names or a callable, not a str")
        names |= set(skip)
    known = {name for name, _ in model.named_modules()}
    unknown = sorted(names - known)
    if unknown:
        raise ValueError(
            f"full-precision/skip layer name(s) {unknown} are not modules of "
            f"{type(model).__name__}; use qualified names from model.named_modules()"
        )
    if callable(skip):
        return lambda name, module: name in names or bool(skip(name, module))
    return lambda name, module: name in names


def _check_skip_signature(skip: Callable) -> None:
    """Refuse a torchao-style filter_fn(module, fqn) passed as `skip` (opposite polarity)."""
    try:
        params = list(inspect.signature(skip).parameters)
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return
    if "fqn" in params or params[:1] in (["module"], ["mod"]):
        raise TypeError(
            f"skip{tuple(params)} looks like torchao's filter_fn(module, fqn), which returns "
            "True to quantize; prepare calls skip(name, module) and leaves the layer alone when "
            "it returns True: pass skip=lambda name, module: not filter_fn(module, name)"
        )


def _check_quantizable(name: str, module: nn.Module) -> None:
    label = f"layer {name or 'model'!r} ({type(module).__name__})"
    if isinstance(module, nn.Linear):
        dims = {"in_features": module.in_features, "out_features": module.out_features}
    else:
        if module.groups != 1:
            raise ValueError(f"{label}: groups={module.groups}; only groups=1 can be quantized")
        if module.padding_mode != "zeros":
            raise ValueError(f"{label}: padding_mode={module.padding_mode!r}; only 'zeros'")
        dims = {"in_channels": module.in_channels, "out_channels": module.out_channels}
    qf.check_block_dims(dims, label)
