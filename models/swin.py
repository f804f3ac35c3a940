"""The paper's Swin: a windowed ViT on one 16x16 token grid (no patch merging).

As the paper's code builds it: the ViT of ``models/vit.py`` without the CLS token (position table
256 x D), with each block's global attention replaced by window attention.

Window attention (window w, so N = w*w tokens per window)
---------------------------------------------------------
The token grid (gh, gw) is cut into non-overlapping w x w windows; attention runs inside each::

    attn = softmax(q k^T / sqrt(d_head) + B[index] + mask)

``B`` is a learned relative-position bias table of (2w-1)^2 rows x heads (trunc-normal 0.02).
Two tokens at (y1, x1), (y2, x2) of one window differ by dy = y1-y2 and dx = x1-x2, each in
[-(w-1), w-1]; the standard Swin index maps that pair to row (dy + w-1) * (2w-1) + (dx + w-1),
see ``relative_position_index``. Same offset, same bias, wherever the window sits.

Shifted windows
---------------
Even blocks use the plain window layout. Odd blocks first roll the grid by -w/2 on both axes so
the new windows straddle the old window borders, then roll back. After the roll a window at the
grid's bottom/right edge holds tokens that were not neighbours (they wrapped around), so the
standard region mask gives -100 (exp(-100) ~ 0 after softmax) to every pair of tokens from
different regions. The regions per axis are the slices [0, n-w), [n-w, n-w/2), [n-w/2, n), see
``shift_region_labels`` and ``shift_attention_mask``.

The 15m preset: window 16 covers the whole 16x16 grid
-----------------------------------------------------
With gh = w the first slice is empty and the other two are the halves of the axis, so a shifted
block attends within the four 8x8 quadrants of the rolled grid instead of over the whole grid.

- ``shift_when_window_covers_grid=True`` (the DEFAULT): shift anyway, as the paper's code does.
  Its odd blocks at 15m are quadrant-local.
- ``shift_when_window_covers_grid=False``: standard Swin (timm, the Swin paper) disables the shift
  on an axis the window already covers; every block of the 15m model then attends globally.

We default to the paper's behaviour because this project exists to reproduce the paper's study:
its published Swin 15m results (and the scale trends built on them) come from the quadrant-local
model, and a reproduction that silently changed the architecture at one scale would confound the
comparison. The standard behaviour is one override away (``build_model("swin", "15m",
shift_when_window_covers_grid=False)``) for anyone studying that variant. The option changes no
parameter: both variants have the same parameter count. The choice is made per axis, and only
where an axis of the token grid equals the window; at larger inputs (grid > window) both variants
shift as usual.

Parameter count: the ViT's minus the CLS token and one position row (2D), plus depth *
(2w-1)^2 * heads bias entries: 496,305 (D=64, w=4, 4 heads), 3,646,687 (192, 8, 6) and
13,987,513 (448, 16, 14) as in the paper.

Quantized: qkv, proj, fc1, fc2 only. Input sizes: H, W multiples of 16*w (16-px patches, and a
token grid the window tiles); the position table is resampled for grids other than the
configured ``img_size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from models.layers import (
    PATCH,
    TransformerConfig,
    TransformerSegmentationModel,
    require_int,
    resample_pos_embed,
    tokens_to_map,
    trunc_normal_,
)

MASK_VALUE = -100.0  # the standard Swin region-mask logit: exp(-100) is 0 in fp32 softmax sums


@dataclass(frozen=True)
class SwinConfig(TransformerConfig):
    """The shared transformer fields (4 heads by default), the window and the shift rule."""

    heads: int = 4
    window: int = 4
    shift_when_window_covers_grid: bool = True  # the paper's code; see the module docstring

    def __post_init__(self) -> None:
        super().__post_init__()
        require_int("SwinConfig", "window", self.window)
        grid = self.img_size // PATCH
        if grid % self.window:
            raise ValueError(
                f"SwinConfig: the {grid}x{grid} token grid of img_size {self.img_size} is not "
                f"divisible by window {self.window}; img_size must be a multiple of "
                f"{PATCH * self.window}"
            )
        if not isinstance(self.shift_when_window_covers_grid, bool):
            raise ValueError(
                "SwinConfig.shift_when_window_covers_grid must be True or False, got "
                f"{self.shift_when_window_covers_grid!r}"
            )


# --------------------------------------------------------------------------- window geometry


def relative_position_index(window: int) -> torch.Tensor:
    """(w*w, w*w) long: row of the bias table for each (query, key) pair of one window."""
    axis = torch.arange(window, device="cpu")  # CPU even under a meta-device build
    coords = torch.stack(torch.meshgrid(axis, axis, indexing="ij")).flatten(1)  # (2, N): (y, x)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def window_shift(
    grid: tuple[int, int], window: int, shifted_block: bool, shift_when_window_covers_grid: bool
) -> tuple[int, int]:
    """Roll (per axis) a block applies: w//2 for odd blocks, 0 where the window covers the axis
    unless `shift_when_window_covers_grid` (the paper's behaviour)."""
    if not shifted_block:
        return (0, 0)
    return tuple(
        0 if n == window and not shift_when_window_covers_grid else window // 2 for n in grid
    )


def _axis_regions(n: int, window: int, shift: int) -> torch.Tensor:
    labels = torch.zeros(n, dtype=torch.long)
    if shift:
        labels[n - window : n - shift] = 1
        labels[n - shift :] = 2
    return labels


def shift_region_labels(grid: tuple[int, int], window: int, shift: tuple[int, int]):
    """(gh, gw) long: region id (0..8) of each position of the rolled grid."""
    rows = _axis_regions(grid[0], window, shift[0])
    cols = _axis_regions(grid[1], window, shift[1])
    return rows[:, None] * 3 + cols[None, :]


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, w*w, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `window_partition`: (B * nW, w*w, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


@lru_cache(maxsize=32)
def shift_attention_mask(
    grid: tuple[int, int], window: int, shift: tuple[int, int]
) -> torch.Tensor:
    """(nW, w*w, w*w) float32 on CPU: 0 within a region, MASK_VALUE across regions.

    Cached and shared: callers must not modify it in place.
    """
    labels = shift_region_labels(grid, window, shift)
    labels = window_partition(labels[None, :, :, None], window).squeeze(-1)  # (nW, N)
    differ = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(differ.shape).masked_fill(differ, MASK_VALUE)


# --------------------------------------------------------------------------- attention


class WindowAttention(nn.Module):
    """(Shifted-)window multi-head self-attention with a relative-position bias."""

    def __init__(self, dim: int, cfg: SwinConfig, *, shifted_block: bool) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.window = cfg.window
        self.scale = (dim // cfg.heads) ** -0.5
        self.shifted_block = shifted_block
        self.shift_when_window_covers_grid = cfg.shift_when_window_covers_grid
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(cfg.attn_drop_rate)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(cfg.drop_rate)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * cfg.window - 1) ** 2, cfg.heads)
        )
        # Built on CPU whatever the default device, then moved with the module (not saved).
        index = relative_position_index(cfg.window).to(self.relative_position_bias_table.device)
        self.register_buffer("relative_position_index", index, persistent=False)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        shift = window_shift(
            grid, self.window, self.shifted_block, self.shift_when_window_covers_grid
        )
        x = x.view(b, *grid, c)
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        mask = shift_attention_mask(grid, self.window, shift) if any(shift) else None
        x = self._attend(window_partition(x, self.window), mask)
        x = window_reverse(x, self.window, *grid)
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2))
        return x.reshape(b, n, c)

    def _attend(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bw, n, c = x.shape  # bw = batch * windows
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (bw, heads, N, N)
        bias = self.relative_position_bias_table[self.relative_position_index]  # (N, N, heads)
        attn = attn + bias.permute(2, 0, 1)
        if mask is not None:
            nw = mask.shape[0]
            mask = mask.to(device=attn.device, dtype=attn.dtype)
            attn = (attn.view(bw // nw, nw, self.heads, n, n) + mask[None, :, None]).view_as(attn)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(x))


class Swin(TransformerSegmentationModel):
    """Windowed ViT on one token grid (see the module docstring)."""

    arch = "swin"

    def __init__(self, cfg: SwinConfig) -> None:
        super().__init__()
        self.input_multiple = PATCH * cfg.window
        self.input_rule = (
            f"16-px patches and a token grid tiled by the {cfg.window}x{cfg.window} window"
        )
        self.build_trunk(cfg, lambda i: WindowAttention(cfg.dim, cfg, shifted_block=i % 2 == 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        tokens, grid = self.patch_embed(x)
        x = self.pos_drop(tokens + resample_pos_embed(self.pos_embed, self.grid, grid))
        for block in self.blocks:
            x = block(x, grid)
        return self.decoder(tokens_to_map(self.norm(x), grid))
