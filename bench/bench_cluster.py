"""What running on a cluster with its state in S3 costs a trial.

1. Checkpoint upload per epoch, 4m model: the checkpoint folder one epoch of the training loop
   writes (weights, optimizer state, RNG streams, history, tracking journal), persisted the way
   Ray Tune persists a reported checkpoint (`pyarrow.fs.copy_files` from the trial's local folder
   to the storage filesystem), to S3 (a moto server on 127.0.0.1) vs to a folder on local disk.
   Median of `repeats` copies each, side by side.
2. A trial's epoch time through the cluster vs a bare loop: the same tiny trial config, run by
   `trainables.loop.train` in this process (wall time between consecutive epoch ends), and as a
   one-trial sweep submitted with `sweep submit` to a real cluster (tests/cluster/services.py: a
   Ray head, one worker node, S3 storage, MLflow over HTTP with artifacts in S3), where Tune's
   `time_this_iter_s` between reports includes the checkpoint upload, the MLflow logging and the
   report. Medians over epochs 2..E (epoch 1 includes start-up in both).

Both services run on this machine: S3 here is a local HTTP server (no network latency, no
bandwidth limit), so (1) measures the S3 protocol's own overhead, not a WAN.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from trainables.callbacks import Callback

BENCH_SPEC = {
    "data": {
        "synthetic": {"patients": 8, "size": 48, "seed": 0, "slices_per_patient": 8},
        "image_size": 48,
    },
    "protocol": {"batch_size": 8},
}


def _config(scale: str, epochs: int, cache: Path, size: int = 48):
    from trainables.config import TrialConfig

    synthetic = dict(BENCH_SPEC["data"]["synthetic"])
    if size != synthetic["size"]:  # the 4m cnn needs a multiple of 64; its checkpoint does not
        synthetic |= {"size": size, "patients": 4, "slices_per_patient": 4}
    return TrialConfig.from_fields(
        {
            "arch": "cnn",
            "scale": scale,
            "recipe": "baseline",
            "seed": 1,
            "synthetic": synthetic,
            "image_size": size,
            "epochs": epochs,
            "batch_size": 8,
            "early_stop_warmup": epochs,
            "cache_dir": str(cache),
        }
    )


def _folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def bench_checkpoint_upload(work: Path, repeats: int = 5) -> None:
    import pyarrow.fs as pafs

    from tests.cluster.services import LocalCluster
    from trainables.loop import train

    checkpoint = work / "ckpt-4m"
    train(_config("4m", 1, work / "cache", size=64), checkpoint_dir=checkpoint)
    size = _folder_mb(checkpoint)
    lab = LocalCluster(work / "s3")
    try:
        lab.launch_s3()()
        s3 = pafs.S3FileSystem(
            endpoint_override=lab.s3_url,
            access_key="testing-key",
            secret_key="testing-secret",
            region="us-east-1",
        )
        local = pafs.LocalFileSystem()
        times = {"s3": [], "local": []}
        for i in range(repeats):  # interleaved, so both see the same machine load
            for kind, fs, dest in (
                ("s3", s3, f"sweeps/bench/checkpoint_{i:06d}"),
                ("local", local, str(work / "local" / f"checkpoint_{i:06d}")),
            ):
                t0 = time.perf_counter()
                pafs.copy_files(
                    str(checkpoint),
                    dest,
                    source_filesystem=local,
                    destination_filesystem=fs,
                )
                times[kind].append(time.perf_counter() - t0)
    finally:
        lab.stop()
    s3_s, local_s = statistics.median(times["s3"]), statistics.median(times["local"])
    print(
        f"checkpoint of the 4m cnn ({size:.1f} MB, {len(list(checkpoint.rglob('*')))} files): "
        f"to S3 (moto, 127.0.0.1) {s3_s * 1e3:.0f} ms ({size / s3_s:.0f} MB/s), "
        f"to local disk {local_s * 1e3:.0f} ms ({size / local_s:.0f} MB/s); "
        f"S3/local = {s3_s / local_s:.1f}x (median of {repeats})"
    )


class _EpochClock(Callback):
    """Loop callback: the wall time at each epoch's end."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_epoch_end(self, metrics, checkpoint_dir) -> None:
        self.ends.append(time.perf_counter())


def _bare_epochs(work: Path, epochs: int) -> list[float]:
    import torch

    from trainables.loop import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a one-CPU trial gets
    clock = _EpochClock()
    try:
        train(
            _config("tiny", epochs, work / "cache"), checkpoint_dir=work / "bare", callbacks=[clock]
        )
    finally:
        torch.set_num_threads(threads)
    return [b - a for a, b in zip(clock.ends, clock.ends[1:], strict=False)]


def _cluster_epochs(work: Path, epochs: int) -> list[float]:
    import boto3

    from tests.cluster.services import LocalCluster, _boto_keys

    spec = {
        "name": "bench",
        **BENCH_SPEC,
        "grid": {"arch": ["cnn"], "scale": ["tiny"], "recipe": ["baseline"], "seed": [1]},
        "protocol": {"epochs": epochs, "batch_size": 8, "early_stop_warmup": epochs},
        "resources": {"cpus_per_trial": 1},
        "storage": "s3://sweeps/bench",
    }
    path = work / "bench.yaml"
    path.write_text(yaml.safe_dump(spec))
    lab = LocalCluster(work / "cluster")
    try:
        lab.start(workers=("node_a",))
        out = subprocess.run(
            [sys.executable, "-m", "sweep", "submit", str(path), "--address", lab.dashboard_url]
            + ["--wait", "--timeout", "600"],
            env=lab.env,
            cwd=work,
            capture_output=True,
            text=True,
            timeout=660,
        )
        if out.returncode != 0:
            raise RuntimeError(f"the benchmark sweep failed:\n{out.stdout}\n{out.stderr}")
        s3 = boto3.client("s3", endpoint_url=lab.s3_url, **_boto_keys())
        key = "bench/bench/tune/run-001/cnn-tiny-baseline-s1-holdout/result.json"
        lines = s3.get_object(Bucket="sweeps", Key=key)["Body"].read().decode().splitlines()
    finally:
        lab.stop()
    rows = [json.loads(line) for line in lines if line.strip()]
    return [r["time_this_iter_s"] for r in rows if not r.get("done")][1:]


def bench_epoch_through_cluster(work: Path, epochs: int = 6) -> None:
    bare = _bare_epochs(work, epochs)
    cluster = _cluster_epochs(work, epochs)
    b, c = statistics.median(bare), statistics.median(cluster)
    print(
        f"epoch of a tiny cnn trial (48 px, 64 slices, 1 CPU): bare loop {b:.2f} s, through the "
        f"cluster (Ray job, S3 checkpoints, MLflow over HTTP) {c:.2f} s; cluster/bare = "
        f"{c / b:.2f}x (median of epochs 2..{epochs})"
    )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        work = Path(tmp)
        bench_checkpoint_upload(work)
        bench_epoch_through_cluster(work)


if __name__ == "__main__":
    main()
