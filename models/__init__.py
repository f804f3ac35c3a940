"""Segmentation models of the study: CNN, ViT and Swin at the paper's three matched scales.

``build_model(arch, scale, **overrides)`` builds one; every model maps (B, 3, H, W) images to
(B, 1, H, W) logits, declares ``full_precision_layers()`` (the GEMM layers ``quant.prepare``
leaves alone), ``input_multiple`` and ``check_input_size(h, w)``.
"""

from models.layers import count_parameters, count_quantized_parameters
from models.registry import PRESETS, build_model, get_config, list_archs, list_scales

__all__ = [
    "PRESETS",
    "build_model",
    "count_parameters",
    "count_quantized_parameters",
    "get_config",
    "list_archs",
    "list_scales",
]
