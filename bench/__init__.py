"""Benchmarks: each module prints figures measured side by side with a reference in one run."""
