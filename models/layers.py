"""Building blocks shared by the three segmentation models.

Everything here is plain PyTorch. The only thing the quantization side needs from a model is the
answer to one question, "which GEMM layers stay in full precision?", and the pieces that answer
it live here too:

- A *GEMM layer* is an ``nn.Linear``, ``nn.Conv2d`` or ``nn.ConvTranspose2d``: the modules whose
  weight multiplies activations in a matrix product and that ``quant.prepare`` may swap for an
  NVFP4 version. Norms, activations, attention score matmuls and softmax never are.
- ``SegmentationModel.full_precision_layers()`` names the GEMM layers that must stay in full
  precision; every other GEMM layer is quantized when a recipe is applied.
- ``count_quantized_parameters`` counts the weights those quantized layers hold.

NVFP4 scales blocks of 16 consecutive values along a GEMM's contraction dimension (1x16 blocks, or
16x16 tiles for 2-D weight scaling), so every quantized layer's input and output features must be
multiples of 16; model configs check that when they are built.

The transformer pieces (DropPath, Mlp, PatchEmbed, the convolutional upsampling decoder, the
init rule, and the trunk that assembles them, ``TransformerSegmentationModel``) are the ones the
paper's ViT and Swin share: a pre-norm encoder on a 16x16 token grid
followed by four 2x transposed-convolution upsamplings back to pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from quant.nvfp4 import BLOCK

GEMM_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
PATCH = 16  # ViT/Swin patch side in pixels (the paper's 256 px -> 16x16 tokens)

# The GEMM layers of a transformer block that the paper quantizes; everything else stays in
# full precision (patch embedding, norms, attention matmuls, decoder).
TRANSFORMER_QUANTIZED_LEAVES: tuple[str, ...] = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


# --------------------------------------------------------------------------- GEMM-layer bookkeeping


def gemm_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Qualified name -> module for every Linear / Conv2d / ConvTranspose2d in `model`."""
    return {name: m for name, m in model.named_modules() if isinstance(m, GEMM_LAYERS)}


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The GEMM layers a recipe quantizes: all of them except ``model.full_precision_layers()``.

    Read off the model's declaration, prepared or not; ``quant.modules.converted_layers`` lists
    the layers ``quant.prepare`` did convert (which ``skip=`` can make fewer).
    """
    keep = model.full_precision_layers() if hasattr(model, "full_precision_layers") else set()
    return {name: m for name, m in gemm_layers(model).items() if name not in keep}


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (each shared Parameter counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_quantized_parameters(model: nn.Module) -> int:
    """Number of weight values that an NVFP4 recipe stores and multiplies in NVFP4.

    Precisely: the sum of ``weight.numel()`` over the GEMM layers (Linear, Conv2d,
    ConvTranspose2d) whose qualified names are not in ``model.full_precision_layers()``. Biases
    are excluded (they are added after the GEMM in high precision), and so are norms, embeddings,
    position tables and every layer the model declares full precision.
    """
    return sum(m.weight.numel() for m in quantized_layers(model).values())


# --------------------------------------------------------------------------- model base class


class SegmentationModel(nn.Module):
    """Common face of the CNN, ViT and Swin: (B, 3, H, W) images -> (B, 1, H, W) logits.

    Subclasses set ``input_multiple`` (H and W must be divisible by it), ``input_rule`` (why, in
    words, for the error message) and implement ``full_precision_layers``.
    """

    arch: str = ""
    input_multiple: int = 1
    input_rule: str = ""

    def full_precision_layers(self) -> set[str]:
        raise NotImplementedError

    def check_input_size(self, h: int, w: int) -> None:
        """Raise ValueError naming the constraint if an H x W input cannot go through the model."""
        m = self.input_multiple
        if h <= 0 or w <= 0 or h % m or w % m:
            raise ValueError(
                f"{self.arch}: input size {h}x{w} is not supported; H and W must be positive "
                f"multiples of {m} ({self.input_rule})"
            )

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"{self.arch}: expected images shaped (B, 3, H, W), got {tuple(x.shape)}"
            )
        self.check_input_size(x.shape[-2], x.shape[-1])


class TransformerSegmentationModel(SegmentationModel):
    """ViT and Swin: 16-px patch tokens plus a learned position table, pre-norm blocks, a final
    LayerNorm and the upsampling decoder; only the blocks' qkv, proj, fc1 and fc2 are quantized.

    A subclass builds its trunk with ``build_trunk`` and writes its own ``forward``.
    """

    def build_trunk(
        self, cfg, attention: Callable[[int], nn.Module], *, cls_token: bool = False
    ) -> None:
        """Patch embedding, [CLS], position table (+ dropout), ``cfg.depth`` blocks whose block
        ``i`` attends with ``attention(i)``, final norm and decoder, then the init rule.

        Creation order is the models' parameter order and their draw order from the RNG."""
        d = cfg.dim
        self.config = cfg
        self.grid = (cfg.img_size // PATCH, cfg.img_size // PATCH)
        self.patch_embed = PatchEmbed(d)
        if cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        tokens = int(cls_token) + self.grid[0] * self.grid[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, d))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        self.blocks = nn.ModuleList(
            TransformerBlock(d, attention(i), cfg.hidden, cfg.drop_rate, rate)
            for i, rate in enumerate(drop_path_rates(cfg.drop_path_rate, cfg.depth))
        )
        self.norm = nn.LayerNorm(d)
        self.decoder = UpsampleDecoder(d)
        trunc_normal_(self.pos_embed, std=0.02)
        if cls_token:
            trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_transformer_weights)

    def full_precision_layers(self) -> set[str]:
        """Every GEMM layer except the blocks' qkv, proj, fc1 and fc2."""
        quantized = {
            name
            for name in gemm_layers(self)
            if name.startswith("blocks.") and name.endswith(TRANSFORMER_QUANTIZED_LEAVES)
        }
        return set(gemm_layers(self)) - quantized


# --------------------------------------------------------------------------- layers


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample with probability `p`.

    Kept samples are scaled by 1/(1-p) so the expected branch output is unchanged, which makes
    evaluation (no dropping) consistent with training.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class Mlp(nn.Module):
    """Transformer MLP: fc1 (D -> hidden), GELU, dropout, fc2 (hidden -> D), dropout."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class PatchEmbed(nn.Module):
    """16x16 patches -> tokens: Conv2d(3 -> D, kernel 16, stride 16), then LayerNorm.

    Returns the tokens (B, gh*gw, D) in row-major grid order and the grid size (gh, gw).
    """

    def __init__(self, dim: int, patch: int = PATCH, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        grid = (x.shape[-2], x.shape[-1])
        return self.norm(x.flatten(2).transpose(1, 2)), grid


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + DropPath(attn(LN x)), then x + DropPath(MLP(LN x)).

    `attn` is any module called as ``attn(tokens, grid)``: the ViT's global attention ignores the
    grid, Swin's windowed attention needs it to lay the tokens out in windows.
    """

    def __init__(self, dim: int, attn: nn.Module, hidden: int, drop: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden, drop)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), grid))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the paper's rule: groups = the largest divisor of `channels` that is <= 8."""
    groups = max(g for g in range(1, 9) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def decoder_channels(dim: int, steps: int = 4, floor: int = 8) -> list[int]:
    """D -> D/2 -> D/4 -> ... for `steps` halvings, never below `floor` channels."""
    return [dim] + [max(dim >> (i + 1), floor) for i in range(steps)]


class UpsampleStage(nn.Module):
    """ConvTranspose2d 2x2 stride 2 (doubles H and W) -> GroupNorm -> GELU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
        self.norm = group_norm(cout)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.up(x)))


class UpsampleDecoder(nn.Module):
    """Token grid -> pixels: 4 x [ConvTranspose2d 2x2 stride 2, GroupNorm, GELU], then a 1x1 conv.

    Four 2x upsamplings undo the 16 px patch; channels halve at each step (at least 8).
    """

    def __init__(self, dim: int, steps: int = 4) -> None:
        super().__init__()
        chans = decoder_channels(dim, steps)
        self.stages = nn.ModuleList(
            UpsampleStage(cin, cout) for cin, cout in zip(chans[:-1], chans[1:], strict=True)
        )
        self.head = nn.Conv2d(chans[-1], 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return full_precision_head(self.head, x)


def full_precision_head(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run a model's output layer outside autocast, on a float32 input.

    The output layer is a full-precision layer of every model, and its logits are what the
    metrics rank: under bf16 autocast (CUDA training) they would carry 8 significant bits, about
    1,700 distinct probabilities for a whole split. Casting the (small) input up and disabling
    autocast for this one layer keeps the logits float32 on every device; without autocast it is
    the plain call."""
    if not torch.is_autocast_enabled(x.device.type):
        return head(x)
    with torch.autocast(x.device.type, enabled=False):
        return head(x.float())


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, gh*gw, D) row-major tokens -> (B, D, gh, gw) feature map."""
    b, _, d = tokens.shape
    return tokens.transpose(1, 2).reshape(b, d, *grid)


def resample_pos_embed(pos: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]):
    """Bicubically resize a (1, gh*gw, D) grid position table from `src` to `dst` grid size.

    The table is learned for the configured image size; other compatible sizes reuse it by
    interpolation (as timm does for dynamic image sizes), so the model is not tied to one size.
    """
    if src == dst:
        return pos
    d = pos.shape[-1]
    grid = pos.reshape(1, *src, d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=dst, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, dst[0] * dst[1], d)


def trunc_normal_(tensor: torch.Tensor, std: float = 0.02) -> None:
    """``nn.init.trunc_normal_`` (cut at +-2, i.e. +-100 std: in effect plain normal), skipped on
    the meta device, where there is nothing to fill and torch's meta kernel for normal_ imports
    the compiler stack (seconds) just to compute no values."""
    if not tensor.is_meta:
        nn.init.trunc_normal_(tensor, std=std)


def init_transformer_weights(module: nn.Module) -> None:
    """Linear: trunc-normal(std 0.02) weights, zero bias; LayerNorm: weight 1, bias 0.

    Convolutions keep PyTorch's default init: docs/study.md gives an init rule for Linear and
    LayerNorm (and the position / bias tables, initialized where they are created) only.
    """
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Stochastic-depth rate per block, rising linearly from 0 to `rate` (linspace)."""
    # device="cpu": the model may be built under a meta-device context, and we need real numbers.
    return torch.linspace(0.0, rate, depth, device="cpu").tolist()


# --------------------------------------------------------------------------- config validation


def require_int(owner: str, field: str, value: object, *, minimum: int = 1, multiple: int = 1):
    """Raise ValueError unless `value` is an int >= `minimum` and divisible by `multiple`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}.{field} must be an integer >= {minimum}, got {value!r}")
    if value % multiple:
        raise ValueError(f"{owner}.{field} must be a multiple of {multiple}, got {value}")


def require_rate(owner: str, field: str, value: object) -> None:
    """Raise ValueError unless `value` is a probability in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}.{field} must be a number in [0, 1), got {value!r}")


@dataclass(frozen=True)
class TransformerConfig:
    """The hyperparameters ViT and Swin share, validated on construction (dims NVFP4-tileable,
    rates in [0, 1)); errors name the subclass, e.g. ``ViTConfig.dim``."""

    dim: int = 64
    depth: int = 10
    heads: int = 2
    mlp_ratio: float = 3.0
    img_size: int = 256
    drop_rate: float = 0.1  # position dropout, attention output projection and MLP
    attn_drop_rate: float = 0.1  # on the attention probabilities
    drop_path_rate: float = 0.1  # stochastic depth of the last block

    def __post_init__(self) -> None:
        owner = type(self).__name__
        require_int(owner, "dim", self.dim, multiple=BLOCK)
        require_int(owner, "depth", self.depth)
        require_int(owner, "heads", self.heads)
        if self.dim % self.heads:
            raise ValueError(f"{owner}.dim ({self.dim}) must be divisible by heads ({self.heads})")
        if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, int | float):
            raise ValueError(f"{owner}.mlp_ratio must be a number, got {self.mlp_ratio!r}")
        hidden = int(self.dim * self.mlp_ratio)
        if hidden <= 0 or hidden % BLOCK:
            raise ValueError(
                f"{owner}: MLP hidden width dim*mlp_ratio = {self.dim}*{self.mlp_ratio} = "
                f"{hidden} must be a positive multiple of {BLOCK} (NVFP4 block size of fc1/fc2)"
            )
        require_int(owner, "img_size", self.img_size, multiple=PATCH)
        for field in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            require_rate(owner, field, getattr(self, field))

    @property
    def hidden(self) -> int:
        """The MLP's hidden width, dim * mlp_ratio."""
        return int(self.dim * self.mlp_ratio)
