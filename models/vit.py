"""The paper's ViT: a pre-norm transformer on a 16x16 token grid with a convolutional decoder.

Encoder::

    patches  Conv2d(3 -> D, 16x16, stride 16) + LayerNorm       256 tokens at 256 px
    tokens   [CLS; patches] + learned position table (257 x D), Dropout(0.1)
    blocks   depth x  x + DropPath(MHSA(LN x)),  x + DropPath(MLP(LN x))
             MHSA: qkv Linear(D, 3D), softmax(q k^T / sqrt(D/heads)) v with attention
             dropout 0.1, proj Linear(D, D), dropout 0.1; MLP: fc1 Linear(D, r*D), GELU,
             dropout 0.1, fc2 Linear(r*D, D), dropout 0.1; DropPath linspace(0, 0.1, depth)
    output   LayerNorm, drop CLS, reshape to D x 16 x 16

The dropout placement inside MHSA and MLP follows timm's Attention/Mlp (docs/study.md names the
rate, not every site). Init as the paper gives it for Swin, which shares these layers: Linear
trunc-normal(0.02) with zero bias, LayerNorm 1/0, CLS and position table trunc-normal(0.02).

Decoder: 4 x [ConvTranspose2d 2x2 stride 2, GroupNorm, GELU] with channels D -> D/2 -> D/4 ->
D/8 -> D/16 (each at least 8), then a 1x1 conv to one logit channel.

Parameter count: patch embed 768D + D, its LayerNorm 2D, CLS D, positions 257D; per block
4*D*D + 4D (qkv, proj) + 2*r*D*D + r*D + D (fc1, fc2) + 4D (two LayerNorms); final LayerNorm 2D;
plus the decoder. That gives 494,473 (D=64, depth 10, r=3), 3,634,921 (192, 9, 3) and 13,880,777
(448, 8, 2) as in the paper.

Quantized: only the blocks' qkv, proj, fc1 and fc2 (``layers.TRANSFORMER_QUANTIZED_LEAVES``).
The patch embedding, norms, attention score/value matmuls, softmax and the decoder stay in full
precision.

Input sizes: any H, W that are multiples of 16. The position table is learned for the configured
``img_size`` (default 256); other sizes resample it bicubically to their token grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import (
    PATCH,
    TransformerConfig,
    TransformerSegmentationModel,
    resample_pos_embed,
    tokens_to_map,
)


@dataclass(frozen=True)
class ViTConfig(TransformerConfig):
    """The ViT's hyperparameters: exactly the shared transformer fields."""


class Attention(nn.Module):
    """Global multi-head self-attention over all tokens."""

    def __init__(self, dim: int, heads: int, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        # `grid` is unused: global attention does not care how the tokens are laid out.
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        p = self.attn_drop if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class ViT(TransformerSegmentationModel):
    """Vision transformer for segmentation (see the module docstring)."""

    arch = "vit"
    input_multiple = PATCH
    input_rule = "16-px patches"

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.build_trunk(
            cfg,
            lambda i: Attention(cfg.dim, cfg.heads, cfg.attn_drop_rate, cfg.drop_rate),
            cls_token=True,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        tokens, grid = self.patch_embed(x)
        pos = torch.cat(
            [self.pos_embed[:, :1], resample_pos_embed(self.pos_embed[:, 1:], self.grid, grid)],
            dim=1,
        )
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1) + pos
        x = self.pos_drop(x)
        for block in self.blocks:
            x = block(x, grid)
        x = self.norm(x)[:, 1:]  # drop CLS
        return self.decoder(tokens_to_map(x, grid))
