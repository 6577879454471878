"""Spike package: lives OUTSIDE the FAB dir; found via PYTHONPATH."""
