"""The cluster the `cluster` tests share: S3, MLflow on S3, a Ray head and two worker nodes, all
real processes on 127.0.0.1 (tests/cluster/services.py), started once per module, stopped by PID."""

from __future__ import annotations

import pytest

from tests.cluster.services import LocalCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    lab = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield lab
    finally:
        lab.stop()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, attach the tail of every service's log to the report."""
    outcome = yield
    report = outcome.get_result()
    lab = item.funcargs.get("cluster") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(lab, LocalCluster):
        for name, proc in lab.procs.items():
            report.sections.append((f"log of {name}", proc.tail(3000)))
