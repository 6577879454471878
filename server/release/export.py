"""ONNX export of the fraud model, and the parity check that gates every release.

The exported graph is what the fleet runs, so before anything is signed the ONNX Runtime
scores on the holdout must match torch's; a mismatch means the export is wrong, not the
model, and must stop the release.
"""

from __future__ import annotations

import copy
import io
import logging

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch

from server.errors import ReleaseError
from shared.tasks.fraud import INPUT_NAME, OUTPUT_NAME, FraudMLP, ScoringHead

log = logging.getLogger(__name__)

OPSET = 18


def export_onnx(model: FraudMLP) -> bytes:
    """Serialize ``ScoringHead(model)`` (probabilities, shape (n, 1)) with a dynamic batch axis."""
    head = ScoringHead(copy.deepcopy(model).to("cpu")).eval()
    width = next(head.model.parameters()).shape[1]  # first Linear's weight: (hidden, width)
    x = torch.zeros((1, int(width)), dtype=torch.float32)
    buf = io.BytesIO()
    try:
        torch.onnx.export(
            head,
            (x,),
            buf,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects too
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "n"}, OUTPUT_NAME: {0: "n"}},
            opset_version=OPSET,
            external_data=False,
        )
    except Exception as exc:
        raise ReleaseError(f"ONNX export failed: {exc}") from exc
    return buf.getvalue()


def onnx_scores(onnx_bytes: bytes, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])
        (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})
    except Exception as exc:
        raise ReleaseError(f"ONNX Runtime cannot run the exported model: {exc}") from exc
    return np.asarray(out, dtype=np.float32)


@torch.no_grad()
def torch_scores(model: FraudMLP, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    head = ScoringHead(copy.deepcopy(model).to("cpu")).eval()
    out: npt.NDArray[np.float32] = head(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
    return out


def check_onnx_matches_torch(
    onnx_bytes: bytes, model: FraudMLP, x_holdout: npt.NDArray[np.float32], atol: float = 1e-5
) -> float:
    """Raise ``ReleaseError`` unless ORT and torch agree within ``atol``; returns the max abs diff."""
    if len(x_holdout) == 0:
        raise ReleaseError("cannot check the export: the holdout is empty")
    got = onnx_scores(onnx_bytes, x_holdout)
    want = torch_scores(model, x_holdout)
    if got.shape != want.shape:
        raise ReleaseError(f"ONNX output shape {got.shape} differs from torch {want.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    if not np.isfinite(diff) or diff > atol:
        raise ReleaseError(f"ONNX and torch disagree on the holdout: max abs diff {diff:.3g} > {atol:g}")
    log.info("ONNX export matches torch on %d holdout rows (max abs diff %.3g)", len(x_holdout), diff)
    return diff
