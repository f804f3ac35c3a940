"""System metrics of one trial through MLflow's own monitor (the run page's "System metrics" tab).

`start(tracking, run_id, device)` starts `mlflow.system_metrics.SystemMetricsMonitor` on the
trial's run when the tracking config asks for it (``system_metrics``: True, False, or "auto" = on
when the trial trains on CUDA) and returns it; `stop(monitor)` flushes and stops it. The monitor
is a daemon thread that samples every ``system_metrics_interval_s`` seconds and logs
``system/cpu_utilization_percentage``, ``system/system_memory_usage_megabytes`` and ``_percentage``,
disk and network counters, and, when nvidia-ml-py is installed (the ``gpu`` extra),
``system/gpu_<i>_utilization_percentage`` and ``system/gpu_<i>_memory_usage_megabytes`` and
``_percentage``. A resumed trial continues the steps where the previous attempt stopped.

System metrics are best effort, unlike the journalled training metrics: MLflow's monitor stops
itself (with one warning) when the store does not answer. They never change a result, so the
setting is not part of the config hash (trainables.config).
"""

from __future__ import annotations

import logging
from typing import Any

from trainables.config import TrackingConfig

logger = logging.getLogger(__name__)


def wanted(tracking: TrackingConfig | None, device_type: str) -> bool:
    """Whether to record system metrics: the explicit setting, or "auto" = on CUDA."""
    if tracking is None:
        return False
    if tracking.system_metrics == "auto":
        return device_type == "cuda"
    return bool(tracking.system_metrics)


def start(tracking: TrackingConfig | None, run_id: str | None, device_type: str) -> Any:
    """A running SystemMetricsMonitor for ``run_id``, or None (not wanted, or no run yet because
    the store was down when the trial started)."""
    if not wanted(tracking, device_type):
        return None
    if run_id is None:
        logger.warning("no MLflow run yet (store unreachable): no system metrics for this attempt")
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from trainables.mlflow_store import resolve_tracking_uri

    monitor = SystemMetricsMonitor(
        run_id,
        sampling_interval=tracking.system_metrics_interval_s,
        resume_logging=True,
        tracking_uri=resolve_tracking_uri(tracking.tracking_uri),
    )
    monitor.start()
    return monitor


def stop(monitor: Any) -> None:
    """Log what was sampled since the last logging step and stop the thread (before the run is
    set to its terminal status: the monitor logs only to a RUNNING run)."""
    if monitor is None:
        return
    try:
        monitor.finish()
    except Exception as exc:  # best effort: never fail a trial over its system metrics
        logger.warning("system metrics monitor did not stop cleanly: %s", exc)
