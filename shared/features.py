"""FeatureSpec: what a valid record looks like and how it is normalized.

The spec travels inside every signed model manifest, so the edge cleans and normalizes
with exactly the statistics the serving model was trained with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

Transform = Literal["none", "log1p"]


class FeatureField(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    min: float
    max: float
    transform: Transform = "none"
    # Statistics of the transformed value on the training data; filled by ``fit``.
    mean: float = 0.0
    std: float = 1.0

    @model_validator(mode="after")
    def _check(self) -> FeatureField:
        if not (math.isfinite(self.min) and math.isfinite(self.max)) or self.min > self.max:
            raise ValueError(f"field {self.name}: invalid range [{self.min}, {self.max}]")
        if self.transform == "log1p" and self.min <= -1.0:
            raise ValueError(f"field {self.name}: log1p needs min > -1")
        if not (math.isfinite(self.std) and self.std > 0 and math.isfinite(1.0 / self.std)):
            raise ValueError(f"field {self.name}: std must be finite and > 0 (and its inverse finite)")
        return self


class FeatureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str
    id_field: str = "record_id"
    time_field: str = "ts"
    fields: tuple[FeatureField, ...] = Field(min_length=1)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def width(self) -> int:
        return len(self.fields)

    def transform(self, raw: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Raw validated values (n, width) to model inputs: transform then standardize."""
        x = np.asarray(raw, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.width:
            raise ValueError(f"expected shape (n, {self.width}), got {x.shape}")
        out = np.empty(x.shape, dtype=np.float32)
        Normalizer(self).into(x, np.empty_like(x), out)
        return out

    def fit(self, raw: npt.ArrayLike) -> FeatureSpec:
        """A copy of this spec with mean/std fitted on ``raw`` (the training data)."""
        x = np.asarray(raw, dtype=np.float64)
        fitted = []
        for j, f in enumerate(self.fields):
            col = np.log1p(x[:, j]) if f.transform == "log1p" else x[:, j]
            std = float(col.std())
            fitted.append(f.model_copy(update={"mean": float(col.mean()), "std": std if std > 1e-12 else 1.0}))
        return self.model_copy(update={"fields": tuple(fitted)})

    def ranges(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        return (
            np.array([f.min for f in self.fields], dtype=np.float64),
            np.array([f.max for f in self.fields], dtype=np.float64),
        )

    @classmethod
    def from_names(
        cls,
        task: str,
        names: Sequence[str],
        bounds: Mapping[str, tuple[float, float]],
        transforms: Mapping[str, Transform] | None = None,
    ) -> FeatureSpec:
        transforms = transforms or {}
        return cls(
            task=task,
            fields=tuple(
                FeatureField(name=n, min=bounds[n][0], max=bounds[n][1], transform=transforms.get(n, "none"))
                for n in names
            ),
        )


class Normalizer:
    """``FeatureSpec.transform`` compiled into vectors, writing into buffers the caller keeps.

    Training calls it through ``transform``; the agent's scorer calls it per batch with
    buffers it reuses, so the two cannot drift apart. A copy, log1p on its columns, then
    two passes (subtract the mean, multiply by the precomputed inverse std into float32):
    a numpy call per field, fresh arrays and the division cost more than the model itself
    at batch 1 and at batch 256.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        self.width = spec.width
        self.mean = np.array([f.mean for f in spec.fields], dtype=np.float64)
        self.inverse_std = 1.0 / np.array([f.std for f in spec.fields], dtype=np.float64)
        self.log1p_columns = tuple(j for j, f in enumerate(spec.fields) if f.transform == "log1p")

    def log1p_views(self, scratch: npt.NDArray[np.float64]) -> list[npt.NDArray[np.float64]]:
        """The columns of ``scratch`` that take log1p (a caller reusing ``scratch`` keeps these too)."""
        return [scratch[:, j] for j in self.log1p_columns]

    def into(
        self,
        raw: npt.NDArray[np.float64],
        scratch: npt.NDArray[np.float64],
        out: npt.NDArray[np.float32],
        log1p_views: list[npt.NDArray[np.float64]] | None = None,
    ) -> None:
        """``raw`` (n, width) float64 to ``out`` (n, width) float32; ``scratch`` is (n, width) float64."""
        np.copyto(scratch, raw)
        for column in self.log1p_views(scratch) if log1p_views is None else log1p_views:
            np.log1p(column, column)
        np.subtract(scratch, self.mean, scratch)
        np.multiply(scratch, self.inverse_std, out, casting="same_kind")
