"""Aggregation kernels: pure numpy/torch, no Flower, so they unit-test and benchmark alone."""
