"""`sweep status` says why a trial failed, and how many tracking records wait in the outbox."""

from __future__ import annotations

import json

from sweep.cli import main
from sweep.ledger import FAILED, FINISHED, Ledger
from sweep.plan import expand
from sweep.runner import open_store
from sweep.spec import parse_spec, spec_to_yaml

REASON = "NonFiniteLoss: cnn-tiny-baseline-s2-holdout: training loss nan at epoch 3, step 1"


def test_status_names_the_reason_of_each_failure(tmp_path, capsys):
    spec = parse_spec(
        {
            "name": "reasons",
            "data": {"synthetic": {"patients": 6, "size": 32}, "image_size": 32},
            "grid": {"arch": ["cnn"], "scale": ["tiny"], "recipe": ["baseline"], "seed": [1, 2]},
            "storage": str(tmp_path / "sweeps"),
        }
    )
    store = open_store(spec)
    store.write_text(spec_to_yaml(spec), "spec.yaml")
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
