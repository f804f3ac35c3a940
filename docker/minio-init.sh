#!/bin/sh
# One-shot setup of MinIO for docker/compose.yaml (the `minio-init` service, image minio/mc).
#
# Creates the two buckets and one least-privilege user per consumer, so no service holds the MinIO
# root credentials except this job:
#   - MLflow's user may read and write only the artifact bucket (artifacts are proxied through the
#     MLflow server, so the trials never see S3 credentials for it);
#   - the Ray nodes' user may read and write only the Ray storage bucket (checkpoints, ledger).
# Idempotent: running it again on an initialised MinIO changes nothing but the users' secrets.
set -eu

mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null

bucket_user() {  # bucket access_key secret_key
    bucket="$1"; access_key="$2"; secret_key="$3"
    mc mb --ignore-existing "local/$bucket"
    policy_file="/tmp/$bucket-rw.json"
    cat >"$policy_file" <<EOF
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket",
      "s3:ListBucketMultipartUploads"], "Resource": ["arn:aws:s3:::$bucket"]},
    {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
      "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
      "Resource": ["arn:aws:s3:::$bucket/*"]}
  ]
}
EOF
    mc admin policy create local "$bucket-rw" "$policy_file"
    rm -f "$policy_file"
    mc admin user add local "$access_key" "$secret_key"
    # attach fails when the policy is already attached (a re-run); that is the state we want.
    mc admin policy attach local "$bucket-rw" --user "$access_key" 2>/dev/null || true
}

bucket_user "$MLFLOW_BUCKET" "$MLFLOW_S3_ACCESS_KEY" "$MLFLOW_S3_SECRET_KEY"
bucket_user "$RAY_STORAGE_BUCKET" "$RAY_S3_ACCESS_KEY" "$RAY_S3_SECRET_KEY"
echo "minio-init: buckets $MLFLOW_BUCKET and $RAY_STORAGE_BUCKET ready"
