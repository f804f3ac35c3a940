"""`sweep status` says why a trial failed, and how many tracking records wait in the outbox."""

from __future__ import annotations

import json

from sweep.cli import main
from sweep.ledger import FAILED, FINISHED, Ledger
from sweep.plan import expand

REASON = "NonFiniteLoss: cnn-tiny-baseline-s2-holdout: training loss nan at epoch 3, step 1"


def test_status_names_the_reason_of_each_failure(tmp_path, capsys, stored_sweep):
    spec, store = stored_sweep("reasons")
    ok, bad = (t.config for t in expand(spec).trials)
    ledger = Ledger(store, {})
    ledger.record(ok.trial_key, ok.config_hash, ok.to_dict(), FINISHED, metrics={"epoch": 3})
    ledger.record(
        bad.trial_key, bad.config_hash, bad.to_dict(), FAILED, error=REASON,
        failure_kind="non_finite_loss",
    )  # fmt: skip
    ledger.save()
    assert Ledger.load(store).entries[bad.trial_key].failure_kind == "non_finite_loss"

    storage = ["--storage", str(tmp_path / "sweeps")]
    assert main(["status", "reasons", *storage]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "sweep reasons: 1 finished, 1 failed"
    assert f"  {bad.trial_key} failed: {REASON}" in text.splitlines()
    assert "pending in" not in text  # nothing kept in the outbox

    assert main(["status", "reasons", "--json", *storage]) == 0
    rows = {r["key"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[bad.trial_key]["error"] == REASON and rows[ok.trial_key]["error"] is None
    assert rows[bad.trial_key]["tracking_pending"] == 0
