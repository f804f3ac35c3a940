"""`sweep list recipes [--json] [--spec SPEC]`: the QAT recipes, one row per recipe.

The built-in registry, plus with `--spec` the recipes that sweep spec declares (`source` says
which). JSON rows: `{"name", "paper_id", "display_name", "description", "source", "fprop",
"dgrad", "wgrad", "operands"}` where fprop/dgrad/wgrad are the docs/nvfp4.md section 5 notation
(e.g. "Q(dY)+SR, Q2(W)", "Q2(W)+4/6" for 4over6, "+RS" row-scaled) and `operands` holds the raw
per-slot settings (`quant.recipes.Recipe.to_dict`), so the output is enough to rebuild every
recipe: the same definition a trial's config carries and MLflow logs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from quant.recipes import GEMMS, Recipe, get_recipe, list_recipes


def recipe_rows(declared: dict[str, Recipe] | None = None) -> list[dict[str, Any]]:
    """One row per registered recipe, in paper-id order, then the `declared` ones."""
    rows = []
    recipes = [(get_recipe(name), "built-in") for name in list_recipes()]
    recipes += [(recipe, "spec") for recipe in (declared or {}).values()]
    for recipe, source in recipes:
        data = recipe.to_dict()
        row: dict[str, Any] = {
            "name": recipe.name,
            "paper_id": recipe.paper_id,
            "display_name": recipe.display_name,
            "description": recipe.description,
            "source": source,
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
    declared = None
    if getattr(args, "spec", None):
        from sweep.spec import SpecError, load_spec

        try:
            spec = load_spec(args.spec)
        except SpecError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        declared = {name: spec.recipe(name) for name in spec.recipes}
    rows = recipe_rows(declared)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
    return 0
