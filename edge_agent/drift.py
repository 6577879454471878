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
        self._batches: deque[tuple[int, npt.NDArray[np.float64]]] = deque()
        self._count = 0
        self._sum: npt.NDArray[np.float64] | None = None

    def reset(self) -> None:
        self._batches.clear()
        self._count = 0
        self._sum = None

    def observe(self, version: int, spec: FeatureSpec, raw: npt.ArrayLike) -> None:
        """Add one scored micro-batch (raw validated values, shape (n, width))."""
        if version != self._version or spec.names != self._names:
            # Another model means other training statistics: start a new window.
            self.reset()
            self._version, self._names = version, spec.names
        z = spec.transform(raw).astype(np.float64)
        if z.shape[0] == 0:
            return
        z = np.where(np.isfinite(z), z, 0.0)
        batch_sum = z.sum(axis=0)
        self._batches.append((z.shape[0], batch_sum))
        self._count += z.shape[0]
        self._sum = batch_sum.copy() if self._sum is None else self._sum + batch_sum
        # Drop whole old batches while the rest still fills the window.
        while len(self._batches) > 1 and self._count - self._batches[0][0] >= self.window:
            n, s = self._batches.popleft()
            self._count -= n
            self._sum -= s

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
