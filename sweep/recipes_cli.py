"""`sweep list recipes [--json]`: the QAT recipe registry, one row per recipe.

JSON rows: `{"name", "paper_id", "display_name", "description", "fprop", "dgrad", "wgrad",
"operands"}` where fprop/dgrad/wgrad are the NVFP4.md section 5 notation (e.g. "Q(dY)+SR, Q2(W)")
and `operands` holds the raw per-slot settings (`quant.recipes.Recipe.to_dict`), so the output is
enough to rebuild every recipe.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from quant.recipes import GEMMS, get_recipe, list_recipes


def recipe_rows() -> list[dict[str, Any]]:
    """One row per registered recipe, in paper-id order."""
    rows = []
    for name in list_recipes():
        recipe = get_recipe(name)
        data = recipe.to_dict()
        row: dict[str, Any] = {
            "name": recipe.name,
            "paper_id": recipe.paper_id,
            "display_name": recipe.display_name,
            "description": recipe.description,
        }
        row.update({gemm: recipe.gemm_summary(gemm) for gemm in GEMMS})
        row["operands"] = {key: value for key, value in data.items() if isinstance(value, dict)}
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of id, name, display name and the three GEMMs."""
    columns = [("id", "paper_id"), ("name", "name"), ("display name", "display_name")]
    columns += [(gemm.upper(), gemm) for gemm in GEMMS]
    cells = [[("-" if row[key] is None else str(row[key])) for _, key in columns] for row in rows]
    widths = [
        max([len(title)] + [len(c[i]) for c in cells]) for i, (title, _) in enumerate(columns)
    ]
    lines = ["  ".join(title.ljust(w) for (title, _), w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def main(args: argparse.Namespace) -> int:
    rows = recipe_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
    return 0
