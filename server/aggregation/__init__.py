"""Aggregation kernels: pure numpy over client updates, no Flower and no network."""
