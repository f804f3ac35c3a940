"""NVFP4 quantization-aware training, emulated in plain PyTorch (bit-exact with Transformer Engine).

    import quant
    quant.prepare(model, quant.get_recipe("2d_rht_sr"), generator=torch.Generator().manual_seed(0))

- `quant.nvfp4`: the format (E2M1 elements, E4M3 block scales, FP32 tensor scale, RHT, SR, and
  TE 2.20's 4over6 and row-scaled options).
- `quant.recipes`: QAT recipes as data (`get_recipe`, `list_recipes`): the paper's eight
  (`PAPER_RECIPES`), two 4over6 built-ins, and recipes declared as data (`declare_recipe`).
- `quant.functional`: linear / conv2d / conv_transpose2d running three NVFP4 GEMMs per recipe.
- `quant.prepare(model, recipe, skip=...)`: convert a model's layers in place (`is_quantized`,
  `unprepare`); `skip(name, module)` is True to leave a layer alone, the opposite of torchao's
  `filter_fn(module, fqn)` (docs/design.md s3).
- `quant.gemm`, `quant.conv`: the emulated GEMM and how Linear and convolutions map onto it.
- `quant.telemetry`: per-layer quantization error (SQNR, zero-scale blocks).
- `quant.te`: the optional Transformer Engine backend (imports TE lazily).
- `quant.compile`: torch.compile of a quantized model with bit-exact compiler settings.

Only torch is imported here; see docs/nvfp4.md for the numerics this package implements.
"""

from quant import functional, nvfp4, recipes, telemetry
from quant.modules import is_quantized, prepare, unprepare
from quant.recipes import Operand, Recipe, get_recipe, list_recipes, register_recipe

__all__ = [
    "Operand",
    "Recipe",
    "functional",
    "get_recipe",
    "is_quantized",
    "list_recipes",
    "nvfp4",
    "prepare",
    "recipes",
    "register_recipe",
    "telemetry",
    "unprepare",
]
