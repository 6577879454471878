"""Cloud-side data slices (bootstrap, holdout): Parquet files with V1..V28, Amount, Class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped,unused-ignore]

from shared.errors import DatasetError
from shared.features import FeatureSpec
from shared.tasks.fraud import FEATURES, LABEL


def load_frame(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"data file not found: {path}")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:
        raise DatasetError(f"cannot read {path} as Parquet: {exc}") from None
    check_columns(frame, str(path))
    return frame


def check_columns(frame: pd.DataFrame, what: str = "frame") -> None:
    missing = [c for c in (*FEATURES, LABEL) if c not in frame.columns]
    if missing:
        raise DatasetError(f"{what} lacks columns {missing[:5]}{'...' if len(missing) > 5 else ''}")


def raw_features(frame: pd.DataFrame) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = frame.loc[:, list(FEATURES)].to_numpy(dtype=np.float64)
    return out


def labels(frame: pd.DataFrame) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = frame[LABEL].to_numpy(dtype=np.float32)
    return out


def model_inputs(spec: FeatureSpec, frame: pd.DataFrame) -> npt.NDArray[np.float32]:
    """Raw columns -> what the model (and the exported ONNX graph) consumes."""
    return spec.transform(raw_features(frame))
