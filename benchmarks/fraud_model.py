"""One signed fraud model for the edge benchmarks: the bytes and manifest an installed update leaves."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.release.export import export_onnx
from shared.bundle import build_manifest
from shared.features import FeatureSpec
from shared.schemas import ModelManifest
from shared.tasks.fraud import INPUT_NAME, OUTPUT_NAME, FraudMLP, base_feature_spec


def signed_fraud_model(
    fit_rows: npt.NDArray[np.float64], signing_key: Ed25519PrivateKey
) -> tuple[bytes, ModelManifest, FeatureSpec]:
    """An untrained (seeded) fraud MLP exported to ONNX, with a FeatureSpec fitted on ``fit_rows``."""
    torch.manual_seed(0)
    model_bytes = export_onnx(FraudMLP().eval())
    spec = base_feature_spec().fit(fit_rows)
    manifest = build_manifest(
        model_bytes=model_bytes,
        task="fraud",
        version=1,
        feature_spec=spec,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        signing_key=signing_key,
    )
    return model_bytes, manifest, spec
