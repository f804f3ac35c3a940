"""The quantizer options Transformer Engine 2.20 added, and the combinations TE refuses.

TE 2.20's `NVFP4BlockScaling` gained two options that change the numbers (the arithmetic is in
quant/nvfp4.py's docstring, "4over6 and row-scaled amax", and docs/nvfp4.md s7):

- 4over6 (`four_over_six="mae" | "mse"`): every 1x16 block (or 16x16 tile) is quantized with two
  candidate decode scales, map-to-6 and map-to-4 (the scale times 1.5), and keeps the one whose
  error (mean absolute or squared, TE's exact path or its fast path `four_over_six_fast`) is
  lower; ties go to map-to-6. The tensor scale is then computed from E = `e4m3_max` (256 or 448)
  instead of 448: S_enc = 6E / amax.
- Row-scaled amax (`row_scaled=True`): one tensor scale per row instead of one per tensor (the
  amax becomes a vector), 1x16 blocks only.

What TE refuses (its recipe and its C++ quantizer both raise; its pure-PyTorch reference does
not always check, and an emulator must not be more permissive than the hardware path):

- 4over6 with the RHT or with stochastic rounding ("pre-training paths that combine 4over6 with
  RHT are not yet implemented"; the 4over6 kernel has no SR);
- row-scaled with 16x16 tiles, the RHT or stochastic rounding;
- E = 256 without 4over6 (TE quantizes every non-4over6 tensor with E = 448).

`check_options` is shared by the fast quantizer and the slow reference, so both refuse the same
combinations with the same words.
"""

from __future__ import annotations

__all__ = [
    "check_options",
]

_FOUR_OVER_SIX_MODES: tuple[str, ...] = ("mae", "mse")
_E4M3_MAXES: tuple[int, ...] = (448, 256)


def check_options(
    *,
    block: tuple[int, int],
    stochastic: bool,
    rht: bool,
    four_over_six: str | None,
    four_over_six_fast: bool,
    e4m3_max: int,
    row_scaled: bool,
    amax_given: bool,
    what: str,
) -> None:
    """Raise ValueError naming the option and the rule when TE would refuse the combination.

    `what` prefixes the message (the function or slot); empty for none.
    """
    where = f"{what}: " if what else ""
    if four_over_six is not None and four_over_six not in _FOUR_OVER_SIX_MODES:
        raise ValueError(
            f"{where}four_over_six must be None, 'mae' or 'mse', got {four_over_six!r}"
        )
    if not isinstance(four_over_six_fast, bool):
        raise TypeError(f"{where}four_over_six_fast must be a bool, got {four_over_six_fast!r}")
    if not isinstance(row_scaled, bool):
        raise TypeError(f"{where}row_scaled must be a bool, got {row_scaled!r}")
    if e4m3_max not in _E4M3_MAXES or isinstance(e4m3_max, bool):
        raise ValueError(f"{where}e4m3_max must be 448 or 256, got {e4m3_max!r}")
    if four_over_six is None:
        if four_over_six_fast:
            raise ValueError(
                f"{where}four_over_six_fast=True selects 4over6's fast error path; it needs "
                "four_over_six='mae' or 'mse'"
            )
        if e4m3_max != 448:
            raise ValueError(
                f"{where}e4m3_max={e4m3_max} applies to 4over6 tensors only; Transformer "
                "Engine quantizes every other tensor with E = 448"
            )
    else:
        if rht:
            raise ValueError(
                f"{where}four_over_six with rht=True is refused, as Transformer Engine refuses "
                "it (4over6 with the RHT is not implemented there)"
            )
        if stochastic:
            raise ValueError(
                f"{where}four_over_six with stochastic rounding is refused, as Transformer "
                "Engine refuses it (the 4over6 kernel rounds to nearest)"
            )
    if row_scaled:
        if tuple(block) != (1, 16):
            raise ValueError(f"{where}row_scaled=True needs block=(1, 16), got {tuple(block)}")
        if rht:
            raise ValueError(f"{where}row_scaled=True with rht=True is refused (as in TE)")
        if stochastic:
            raise ValueError(
                f"{where}row_scaled=True with stochastic rounding is refused (as in TE)"
            )
        if amax_given:
            raise ValueError(
                f"{where}amax= is one tensor scale, but row_scaled=True takes one per row"
            )
