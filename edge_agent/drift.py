"""Input drift of the records an agent scores, against its serving model's training data.

The signed manifest carries, per feature, the mean and standard deviation of the
(transformed) value on the data the model was trained on (``FeatureSpec.fit``). Standardized
with those statistics, live features have mean ~0 while the inputs look like the training
data. The drift score is the standardized mean difference (SMD) averaged over the features:
``mean_j |mean(z_j)|`` over the last ``window`` scored records. It needs no reference sample
on the device, costs O(width) per record, reads as "standard deviations of shift" (rules of
thumb: < 0.1 negligible, > 0.25 large) and names the feature that moved most. It is blind to
a change of spread at a constant mean; the cheap sufficient statistics kept here would allow
a variance term later.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import numpy.typing as npt

from shared.features import FeatureSpec
from shared.schemas import Drift


class DriftMonitor:
    """Keeps per-batch sums of standardized features for the last ``window`` records."""

    def __init__(self, window: int = 2000) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self._version: int | None = None
        self._names: tuple[str, ...] = ()
        self._spec: FeatureSpec | None = None  # the spec last seen, to skip comparing names per batch
        # The spec's statistics as arrays: one vectorized pass per batch instead of a loop per feature.
        self._log1p = np.zeros(0, dtype=bool)
        self._mean = np.zeros(0)
        self._std = np.ones(0)
        self._batches: deque[tuple[int, npt.NDArray[np.float64]]] = deque()
        self._count = 0
        self._sum: npt.NDArray[np.float64] | None = None

    def reset(self) -> None:
        self._batches.clear()
        self._count = 0
        self._sum = None

    def observe(self, version: int, spec: FeatureSpec, raw: npt.ArrayLike) -> None:
        """Add one scored micro-batch (raw validated values, shape (n, width))."""
        if version != self._version or (spec is not self._spec and spec.names != self._names):
            # Another model means other training statistics: start a new window.
            self.reset()
            self._version, self._names = version, spec.names
            self._log1p = np.array([f.transform == "log1p" for f in spec.fields], dtype=bool)
            self._mean = np.array([f.mean for f in spec.fields], dtype=np.float64)
            self._std = np.array([f.std for f in spec.fields], dtype=np.float64)
        self._spec = spec
        x = np.asarray(raw, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self._names):
            raise ValueError(f"expected shape (n, {len(self._names)}), got {x.shape}")
        if x.shape[0] == 0:
            return
        n = x.shape[0]
        # Column sums first, then standardize the sums: sum(z) = (sum(x) - n * mean) / std.
        # Cleaned values are finite and in range, so no per-element check is needed.
        col = x.sum(axis=0)
        if self._log1p.any():
            with np.errstate(divide="ignore", invalid="ignore"):  # judged just below, not warned about
                col[self._log1p] = np.log1p(x[:, self._log1p]).sum(axis=0)
        batch_sum = (col - n * self._mean) / self._std
        if not np.isfinite(batch_sum).all():
            return  # a value outside what cleaning allows: skip the batch rather than poison the window
        self._batches.append((n, batch_sum))
        self._count += n
        self._sum = batch_sum.copy() if self._sum is None else self._sum + batch_sum
        # Drop whole old batches while the rest still fills the window.
        while len(self._batches) > 1 and self._count - self._batches[0][0] >= self.window:
            old_n, old_sum = self._batches.popleft()
            self._count -= old_n
            self._sum -= old_sum

    def drift(self) -> Drift | None:
        if self._sum is None or self._count == 0:
            return None
        shifts = np.abs(self._sum / self._count)
        worst = int(np.argmax(shifts))
        score = float(shifts.mean())
        if not math.isfinite(score):
            return None
        return Drift(
            score=round(score, 6),
            window=self._count,
            worst_feature=self._names[worst] if self._names else None,
            worst_shift=round(float(shifts[worst]), 6),
        )
