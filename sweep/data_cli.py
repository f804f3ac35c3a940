"""`sweep data check PATH [--json]` and `sweep data synth OUT [--patients N --size PX --seed S]`.

`check` decodes every slice and exits 0 with a summary, or 2 listing every problem (each naming
its file). `synth` writes a synthetic LGG-like dataset in the kaggle_3m layout, all or nothing.
Neither imports torch or albumentations, so both start quickly.
"""

from __future__ import annotations

import argparse
import json
import sys

EXIT_OK = 0
EXIT_BAD_DATA = 2


def _summary(report) -> str:
    size = "x".join(str(v) for v in report.image_size) if report.image_size else "-"
    return (
        f"{report.root}: {report.patients} patients, {report.slices} slices, "
        f"{report.positive_slices} with tumour ({report.positive_fraction:.1%}), "
        f"image size {size}"
    )


def check(args: argparse.Namespace) -> int:
    from trainables.lgg import check_dataset

    report = check_dataset(args.path)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(_summary(report))
        if report.problems:
            print(f"{len(report.problems)} problem(s):", file=sys.stderr)
            for problem in report.problems:
                print(f"  {problem}", file=sys.stderr)
        else:
            print("ok")
    return EXIT_BAD_DATA if report.problems else EXIT_OK


def synth(args: argparse.Namespace) -> int:
    from trainables.synth import write_synthetic

    try:
        summary = write_synthetic(
            args.out,
            patients=args.patients,
            size=args.size,
            seed=args.seed,
            slices_per_patient=args.slices,
            force=args.force,
        )
    except (FileExistsError, ValueError) as exc:
        print(f"sweep data synth: {exc}", file=sys.stderr)
        return EXIT_BAD_DATA
    print(
        f"wrote {summary.patients} patients, {summary.slices} slices "
        f"({summary.positive_slices} with tumour, {summary.positive_fraction:.1%}) "
        f"to {summary.root}"
    )
    return EXIT_OK
