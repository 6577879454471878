"""What the network and the attackers do to an exchanged model: pure functions on arrays.

The twin applies these to a virtual device's messages in its ClientApp wrapper, outside the
edge code: precision loss on the way down and up (the update is quantized as a delta from
the model the device received, as a bandwidth-saving fleet would send it), and the
Byzantine devices' attacks on their replies.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Arrays = list[npt.NDArray[np.float32]]


def quantize(values: npt.NDArray[np.floating], precision: str) -> npt.NDArray[np.float32]:
    """``values`` as the receiver sees them after a round trip through ``precision``."""
    x = np.asarray(values, dtype=np.float32)
    if precision == "fp32":
        return x.copy()
    if precision == "fp16":
        return x.astype(np.float16).astype(np.float32)
    if precision == "int8":
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        if peak == 0.0 or not np.isfinite(peak):
            return x.copy()
        scale = peak / 127.0
        out: npt.NDArray[np.float32] = (np.clip(np.round(x / scale), -127, 127) * scale).astype(np.float32)
        return out
    raise ValueError(f"unknown precision {precision!r}")


def quantize_model(arrays: Arrays, precision: str) -> Arrays:
    return [quantize(a, precision) for a in arrays]


def quantize_update(new: Arrays, base: Arrays, precision: str) -> Arrays:
    """The model the server rebuilds from an update sent as a quantized delta from ``base``."""
    return [(b + quantize(n - b, precision)).astype(np.float32) for n, b in zip(new, base, strict=True)]


def sign_flip(new: Arrays, base: Arrays, scale: float) -> Arrays:
    """Send the update pointing the other way, ``scale`` times as long."""
    return [(b - scale * (n - b)).astype(np.float32) for n, b in zip(new, base, strict=True)]


def gaussian(new: Arrays, sigma: float, rng: np.random.Generator) -> Arrays:
    return [(n + rng.normal(0.0, sigma, size=n.shape)).astype(np.float32) for n in new]


def nan_update(new: Arrays) -> Arrays:
    return [np.full_like(n, np.nan, dtype=np.float32) for n in new]


def attack(kind: str, new: Arrays, base: Arrays, *, scale: float, sigma: float, seed: int) -> Arrays:
    if kind == "sign-flip":
        return sign_flip(new, base, scale)
    if kind == "gaussian":
        return gaussian(new, sigma, np.random.default_rng(seed))
    if kind == "nan":
        return nan_update(new)
    raise ValueError(f"unknown attack {kind!r}")
