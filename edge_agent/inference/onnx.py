"""The ONNX Runtime adapter (the only onnxruntime user in the agent).

A scorer is validated when it is built (names, a dummy batch, output shape and range), so a
model that would fail at serving time is rejected before it replaces the current one.

``score_raw`` is the agent's per-batch call, so its fixed cost matters at batch 1: the
FeatureSpec is compiled once (``shared.features.Normalizer``, the same code ``transform``
runs, so serving cannot drift from training) and writes into buffers kept between calls;
ONNX Runtime reads and writes those buffers through an I/O binding made once per batch
size, which skips building the feed dict and the output array on every call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from shared.errors import BundleError
from shared.features import Normalizer
from shared.schemas import ModelManifest


@dataclass(frozen=True, slots=True)
class _Bound:
    """One batch size's binding and views of the shared buffers (made once, reused per call)."""

    binding: ort.IOBinding
    scratch: npt.NDArray[np.float64]
    inputs: npt.NDArray[np.float32]
    scores: npt.NDArray[np.float32]
    log1p_views: list[npt.NDArray[np.float64]]


# I/O bindings kept (one per batch size seen; each is a few pointers into the shared buffers).
MAX_BINDINGS = 512


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
        self._normalizer = Normalizer(manifest.feature_spec)
        # Scratch buffers reused by score_raw, grown to the largest batch seen, and an I/O
        # binding per batch size over their first n rows; the lock keeps two threads from
        # sharing them (the scores returned are copies).
        self._lock = threading.Lock()
        self._capacity = 0
        self._scratch = np.empty((0, self.width), dtype=np.float64)
        self._inputs = np.empty((0, self.width), dtype=np.float32)
        self._outputs_buf = np.empty((0, 1), dtype=np.float32)
        self._bound: dict[int, _Bound] = {}
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
            bound = self._bound.get(n) or self._bind(n)
            self._normalizer.into(x, bound.scratch, bound.inputs, bound.log1p_views)
            self._session.run_with_iobinding(bound.binding)
            return bound.scores.copy()

    def _bind(self, n: int) -> _Bound:
        if n > self._capacity:
            self._capacity = 1 << (n - 1).bit_length()
            self._scratch = np.empty((self._capacity, self.width), dtype=np.float64)
            self._inputs = np.empty((self._capacity, self.width), dtype=np.float32)
            self._outputs_buf = np.empty((self._capacity, 1), dtype=np.float32)
            self._bound.clear()  # they point into the old buffers
        if len(self._bound) >= MAX_BINDINGS:
            self._bound.clear()
        binding = self._session.io_binding()
        binding.bind_input(self._input, "cpu", 0, np.float32, [n, self.width], self._inputs.ctypes.data)
        binding.bind_output(self._output, "cpu", 0, np.float32, [n, 1], self._outputs_buf.ctypes.data)
        scratch = self._scratch[:n]
        bound = _Bound(
            binding, scratch, self._inputs[:n], self._outputs_buf[:n, 0], self._normalizer.log1p_views(scratch)
        )
        self._bound[n] = bound
        return bound


def _short(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + "..."
