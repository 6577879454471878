"""The ONNX Runtime adapter (the only onnxruntime user in the agent).

A scorer is validated when it is built (names, a dummy batch, output shape and range), so a
model that would fail at serving time is rejected before it replaces the current one.

``score_raw`` is the agent's per-batch call, so its fixed cost matters at batch 1: the
FeatureSpec is compiled once into vectors (mean, std, log1p columns) and normalization runs
as a handful of in-place ufuncs on buffers kept between calls, instead of a numpy call per
column and fresh arrays per batch. It computes exactly what ``FeatureSpec.transform`` does
(same operations in the same order, float64 then rounded to float32).
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from shared.errors import BundleError
from shared.schemas import ModelManifest


class OnnxScorer:
    def __init__(self, model_bytes: bytes, manifest: ModelManifest) -> None:
        self.manifest = manifest
        self.width = manifest.feature_spec.width
        options = ort.SessionOptions()
        # One thread: the agent shares a small device with the broker, the store and training.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BundleError(f"model does not load in ONNX Runtime: {_short(exc)}") from None
        inputs = [i.name for i in self._session.get_inputs()]
        outputs = [o.name for o in self._session.get_outputs()]
        if inputs != [manifest.input_name]:
            raise BundleError(f"model inputs {inputs} do not match manifest input {manifest.input_name!r}")
        if outputs != [manifest.output_name]:
            raise BundleError(f"model outputs {outputs} do not match manifest output {manifest.output_name!r}")
        self._input = manifest.input_name
        self._output = manifest.output_name
        self._outputs = [manifest.output_name]
        spec = manifest.feature_spec
        self._mean = np.array([f.mean for f in spec.fields], dtype=np.float64)
        self._std = np.array([f.std for f in spec.fields], dtype=np.float64)
        self._log1p_columns = tuple(j for j, f in enumerate(spec.fields) if f.transform == "log1p")
        # Scratch buffers reused by score_raw (grown to the largest batch seen), guarded by a
        # lock because the returned scores must never alias them across threads.
        self._lock = threading.Lock()
        self._raw = np.empty((0, self.width), dtype=np.float64)
        self._inputs = np.empty((0, self.width), dtype=np.float32)
        self._check_dummy_batch()

    def _check_dummy_batch(self) -> None:
        n = 3
        dummy = np.zeros((n, self.width), dtype=np.float32)
        try:
            out = np.asarray(self._session.run([self._output], {self._input: dummy})[0])
        except Exception as exc:
            raise BundleError(f"model fails on a dummy batch of width {self.width}: {_short(exc)}") from None
        if out.shape != (n, 1):
            raise BundleError(f"model output shape {out.shape} for {n} rows, expected ({n}, 1)")
        if not (np.all(np.isfinite(out)) and np.all(out >= 0.0) and np.all(out <= 1.0)):
            raise BundleError("model output on a dummy batch is not a probability in [0, 1]")

    @property
    def version(self) -> int:
        return self.manifest.version

    def score(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Model inputs (n, width), already normalized, to scores (n,)."""
        if x.ndim != 2 or x.shape[1] != self.width:
            raise ValueError(f"expected shape (n, {self.width}), got {x.shape}")
        if x.shape[0] == 0:
            return np.empty((0,), dtype=np.float32)
        out = self._session.run([self._output], {self._input: np.ascontiguousarray(x, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def score_raw(self, raw: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Raw validated values (n, width) to scores (n,), normalized with the manifest's FeatureSpec."""
        x = np.asarray(raw, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.width:
            raise ValueError(f"expected shape (n, {self.width}), got {x.shape}")
        n = x.shape[0]
        if n == 0:
            return np.empty((0,), dtype=np.float32)
        with self._lock:
            if n > self._raw.shape[0]:
                rows = 1 << (n - 1).bit_length()
                self._raw = np.empty((rows, self.width), dtype=np.float64)
                self._inputs = np.empty((rows, self.width), dtype=np.float32)
            # Two passes over the batch: subtract into the scratch buffer, then divide straight
            # into the float32 input (computed in float64, rounded on the way out).
            buf = self._raw[:n]
            np.subtract(x, self._mean, out=buf)
            for j in self._log1p_columns:
                column = buf[:, j]
                np.log1p(x[:, j], out=column)
                np.subtract(column, self._mean[j], out=column)
            inputs = self._inputs[:n]
            np.divide(buf, self._std, out=inputs, casting="same_kind")
            out = self._session.run(self._outputs, {self._input: inputs})[0]
        # ORT returns a fresh array: no alias of the scratch buffers escapes.
        return np.asarray(out, dtype=np.float32).reshape(-1)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + "..."
