"""Benchmarks: each script times fedforge and its anchor side by side in one run (issue 3)."""
