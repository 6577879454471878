"""The ``fraud`` task's wire-level facts, free of torch.

Agents need the feature names, bounds and model I/O names to clean and score, but must not
pay torch's ~300 MB to learn them; the torch half of the task lives in ``fraud.py``.
"""

from __future__ import annotations

from shared.features import FeatureSpec

TASK = "fraud"
PCA_COLUMNS = tuple(f"V{i}" for i in range(1, 29))
FEATURES = (*PCA_COLUMNS, "Amount")
LABEL = "Class"
INPUT_NAME = "features"
OUTPUT_NAME = "score"
# Physically plausible bounds: the PCA components of the public set stay within about
# +-120; amounts within 0..26,000 EUR. Beyond these a value is a sensor/encoding fault.
BOUNDS = {**{c: (-500.0, 500.0) for c in PCA_COLUMNS}, "Amount": (0.0, 1_000_000.0)}
# Scores at or above this are published as alerts.
ALERT_THRESHOLD = 0.5


def base_feature_spec() -> FeatureSpec:
    """The spec before statistics are fitted (mean 0, std 1)."""
    return FeatureSpec.from_names(TASK, FEATURES, BOUNDS, transforms={"Amount": "log1p"})
