"""Swin's window geometry against hand-worked tables (the way torchao pins golden numerics).

Conventions (models/swin.py): tokens of a window are numbered row-major; the relative-position
index of a (query i, key j) pair is (dy + w-1) * (2w-1) + (dx + w-1) with (dy, dx) = pos_i - pos_j;
shifted blocks roll the grid by -s and mask pairs from different regions with -100.
"""

import pytest
import torch

from models import build_model
from models.swin import (
    MASK_VALUE,
    relative_position_index,
    shift_attention_mask,
    shift_region_labels,
    window_partition,
    window_reverse,
    window_shift,
)

X = MASK_VALUE

# w = 2: tokens (0,0) (0,1) (1,0) (1,1). Row i=0 (0,0): key (0,0) -> offset (0,0) -> 1*3+1 = 4;
# key (0,1) -> (0,-1) -> 3; key (1,0) -> (-1,0) -> 1; key (1,1) -> (-1,-1) -> 0. And so on.
INDEX_W2 = [
    [4, 3, 1, 0],
    [5, 4, 2, 1],
    [7, 6, 4, 3],
    [8, 7, 5, 4],
]

# 4x4 grid, window 2, shift 1: per axis the regions are [0, 2) -> 0, [2, 3) -> 1, [3, 4) -> 2,
# and a position's label is 3 * row_region + col_region.
LABELS_4x4_W2_S1 = [
    [0, 0, 1, 2],
    [0, 0, 1, 2],
    [3, 3, 4, 5],
    [6, 6, 7, 8],
]
# The four windows (row-major) hold labels [0,0,0,0], [1,2,1,2], [3,3,6,6], [4,5,7,8].
MASK_4x4_W2_S1 = [
    [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
    [[0, X, 0, X], [X, 0, X, 0], [0, X, 0, X], [X, 0, X, 0]],
    [[0, 0, X, X], [0, 0, X, X], [X, X, 0, 0], [X, X, 0, 0]],
    [[0, X, X, X], [X, 0, X, X], [X, X, 0, X], [X, X, X, 0]],
]

# The 15m situation in miniature: a 4x4 grid, window 4 covering it, shift 2. The first region
# slice [0, n-w) is empty, so the rolled grid splits into its four 2x2 quadrants.
LABELS_4x4_W4_S2 = [
    [4, 4, 5, 5],
    [4, 4, 5, 5],
    [7, 7, 8, 8],
    [7, 7, 8, 8],
]


def test_relative_position_index_window_2():
    assert relative_position_index(2).tolist() == INDEX_W2


def test_relative_position_index_window_1_is_the_single_entry():
    assert relative_position_index(1).tolist() == [[0]]


@pytest.mark.parametrize("w", [3, 4, 16])
def test_relative_position_index_properties(w):
    idx = relative_position_index(w)
    n, rows = w * w, (2 * w - 1) ** 2
    center = (w - 1) * (2 * w - 1) + (w - 1)  # offset (0, 0)
    assert idx.shape == (n, n) and idx.dtype == torch.long
    assert (idx.diagonal() == center).all()
    assert idx.min() == 0 and idx.max() == rows - 1
    assert len(idx.unique()) == rows  # every table row is used
    assert (idx + idx.T == 2 * center).all()  # opposite offsets sit mirrored about the center


def test_window_partition_order_and_round_trip():
    grid = torch.arange(16.0).view(1, 4, 4, 1)
    windows = window_partition(grid, 2).squeeze(-1)
    assert windows.tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    assert torch.equal(window_reverse(window_partition(grid, 2), 2, 4, 4), grid)


def test_shift_regions_and_mask_on_a_4x4_grid():
    assert shift_region_labels((4, 4), 2, (1, 1)).tolist() == LABELS_4x4_W2_S1
    assert shift_attention_mask((4, 4), 2, (1, 1)).tolist() == MASK_4x4_W2_S1


def test_shift_regions_when_the_window_covers_the_grid_are_quadrants():
    assert shift_region_labels((4, 4), 4, (2, 2)).tolist() == LABELS_4x4_W4_S2
    mask = shift_attention_mask((4, 4), 4, (2, 2))
    assert mask.shape == (1, 16, 16)
    same = torch.tensor(LABELS_4x4_W4_S2).flatten()
    expected = torch.where(same[:, None] == same[None, :], 0.0, X)
    assert torch.equal(mask[0], expected)


def test_no_shift_means_one_region():
    assert (shift_region_labels((4, 8), 2, (0, 0)) == 0).all()
    assert (shift_attention_mask((4, 8), 2, (0, 0)) == 0).all()


def test_shift_on_one_axis_only():
    labels = shift_region_labels((2, 4), 2, (0, 1))
    assert labels.tolist() == [[0, 0, 1, 2], [0, 0, 1, 2]]


@pytest.mark.parametrize(
    ("grid", "window", "shifted", "paper", "expected"),
    [
        ((16, 16), 4, False, True, (0, 0)),  # even blocks never shift
        ((16, 16), 4, True, True, (2, 2)),
        ((16, 16), 4, True, False, (2, 2)),  # window smaller than the grid: both variants shift
        ((16, 16), 16, True, True, (8, 8)),  # 15m, the paper's code
        ((16, 16), 16, True, False, (0, 0)),  # 15m, standard Swin
        ((32, 16), 16, True, False, (8, 0)),  # per axis
    ],
)
def test_window_shift(grid, window, shifted, paper, expected):
    assert window_shift(grid, window, shifted, paper) == expected


def _influence(shift_when_window_covers_grid: bool, block: int) -> torch.Tensor:
    """(4, 4) bool: which output tokens of `block`'s attention change when token (0, 0) does."""
    torch.manual_seed(0)
    model = build_model(
        "swin",
        "tiny",
        window=4,
        shift_when_window_covers_grid=shift_when_window_covers_grid,
    ).eval()
    attn = model.blocks[block].attn
    x = torch.randn(1, 16, model.config.dim)
    y = x.clone()
    y[0, 0] += 1.0
    with torch.no_grad():
        delta = (attn(x, (4, 4)) - attn(y, (4, 4))).abs().sum(-1)
    return (delta > 1e-6).view(4, 4)


def test_window_covering_grid_paper_behaviour_confines_shifted_blocks_to_quadrants():
    quadrant = torch.zeros(4, 4, dtype=torch.bool)
    quadrant[:2, :2] = True
    assert torch.equal(_influence(True, block=1), quadrant)  # odd block: shifted, masked
    assert _influence(True, block=0).all()  # even block: one window, global


def test_window_covering_grid_standard_behaviour_is_global_attention():
    assert _influence(False, block=1).all()
    assert _influence(False, block=0).all()
