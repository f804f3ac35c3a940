"""The user-facing layer: the `sweep` CLI, sweep specs, planning, running and analysis."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nvfp4-sweep")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
