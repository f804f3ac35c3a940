"""The MLflow names writer and reader share (trainables.mlflow_schema)."""

from trainables import mlflow_schema as schema


def test_split_artifact_names_match_the_written_files():
    assert schema.split_artifact(schema.PR_CURVE_ARTIFACT, "test") == "pr_curve.json"
    assert schema.split_artifact(schema.PR_CURVE_ARTIFACT, "val") == "pr_curve_val.json"
    assert schema.split_artifact(schema.HISTOGRAM_ARTIFACT, "val") == "pred_hist_val.json"
    assert schema.split_artifact("notes", "val") == "notes_val"


def test_short_sha_is_the_code_versions_length():
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert schema.short_sha(sha) == sha[: schema.GIT_SHA_LENGTH] == "0123456789ab"
    assert schema.short_sha(None) == schema.short_sha("") == "unknown"


def test_trial_tags_start_with_the_identity():
    assert schema.TRIAL_TAGS[:2] == (schema.SWEEP_TAG, schema.TRIAL_KEY_TAG)
    assert len(set(schema.TRIAL_TAGS)) == len(schema.TRIAL_TAGS)
