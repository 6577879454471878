"""The ONNX Runtime adapter (the only onnxruntime user in the agent).

A scorer is validated when it is built (names, a dummy batch, output shape and range), so a
model that would fail at serving time is rejected before it replaces the current one.
"""

from __future__ import annotations

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
        """Raw validated values to scores, normalized with the manifest's FeatureSpec."""
        return self.score(self.manifest.feature_spec.transform(raw))


def _short(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + "..."
