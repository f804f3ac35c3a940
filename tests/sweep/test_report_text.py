"""What the report says about rank direction and about baselines without a metric."""

import numpy as np
import pandas as pd

from sweep.analysis import analyze_table
from sweep.report import write_report


def test_report_explains_mean_rank_and_a_baseline_without_metric(tmp_path):
    rows = [
        ("baseline", 0, 2026, 0.80),
        ("nvfp4", 1, 2026, 0.70),
        ("baseline", 0, 2027, 0.82),
        ("nvfp4", 1, 2027, 0.71),
        ("baseline", 0, 2028, np.nan),  # finished, but test_auprc never arrived
        ("nvfp4", 1, 2028, 0.72),
    ]
    runs = pd.DataFrame(
        [
            {
                "trial_key": f"cnn-4m-{r}-s{seed}-holdout",
                "run_id": f"r{i}",
                "arch": "cnn",
                "scale": "4m",
                "recipe": r,
                "recipe_id": rid,
                "seed": seed,
                "fold": "holdout",
                "status": "FINISHED",
                "test_auprc": v,
            }
            for i, (r, rid, seed, v) in enumerate(rows)
        ]
    )
    result = analyze_table(runs, None, n_boot=50)
    # nvfp4 is below the baseline on both complete seeds: rank 1, counted from the lowest.
    assert result.ranks["mean_rank"].iloc[0] == "baseline 2.00, nvfp4 1.00"
    report = write_report(result, tmp_path, name="t", source="a test", figures=[]).read_text()
    assert "counting up from the lowest test_auprc: rank 1 is the worst" in report
    assert (
        "| cnn-4m-nvfp4-s2028-holdout | cnn | 4m | nvfp4 | 2028 | holdout | FINISHED | "
        "no baseline | baseline finished without test_auprc |" in report
    )
    assert "no finished baseline run at" not in report
