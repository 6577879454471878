"""Export parity, bootstrap training and the release pipeline without a broker."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.errors import ReleaseError
from server.registry import InMemoryRegistry
from server.release.export import check_onnx_matches_torch, export_onnx, onnx_scores
from server.release.release import release_model
from server.training.bootstrap import resolve_device, train_bootstrap_model
from server.training.data import model_inputs
from shared.bundle import parse_manifest, verify_manifest, verify_model_bytes
from shared.errors import DatasetError
from shared.signing import TrustStore, generate_private_key
from shared.tasks.fraud import FEATURES, build_model, predict_proba


def _x(n: int = 300, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, len(FEATURES))).astype(np.float32)


def test_export_matches_torch_for_any_batch_size() -> None:
    model = build_model(3)
    data = export_onnx(model)
    x = _x()
    check_onnx_matches_torch(data, model, x)
    scores = onnx_scores(data, x[:7])
    assert scores.shape == (7, 1)
    np.testing.assert_allclose(scores[:, 0], predict_proba(model, x[:7]), atol=1e-5)


def test_parity_check_refuses_a_graph_of_another_model() -> None:
    data = export_onnx(build_model(1))
    with pytest.raises(ReleaseError, match="max abs diff"):
        check_onnx_matches_torch(data, build_model(2), _x())


def test_parity_check_refuses_garbage_and_empty_holdout() -> None:
    with pytest.raises(ReleaseError):
        check_onnx_matches_torch(b"not onnx", build_model(1), _x())
    with pytest.raises(ReleaseError, match="empty"):
        check_onnx_matches_torch(export_onnx(build_model(1)), build_model(1), _x(0))


def test_bootstrap_model_learns_the_signal(bootstrap_df: pd.DataFrame, holdout_df: pd.DataFrame) -> None:
    _model, spec, metrics = train_bootstrap_model(bootstrap_df, holdout_df, epochs=5, seed=0)
    assert spec.names == FEATURES
    amount = spec.fields[-1]
    assert amount.mean == pytest.approx(float(np.log1p(bootstrap_df["Amount"]).mean()))
    assert metrics["examples"] == len(holdout_df)
    # Positives are ~4 %: a model that learned nothing would have an AUPRC near 0.04.
    assert metrics["auprc"] > 0.5
    x = model_inputs(spec, holdout_df)
    assert x.shape == (len(holdout_df), len(FEATURES))


def test_bootstrap_refuses_frames_without_the_task_columns(holdout_df: pd.DataFrame) -> None:
    with pytest.raises(DatasetError, match="lacks columns"):
        train_bootstrap_model(holdout_df.drop(columns=["V3"]), holdout_df, epochs=1, seed=0)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_release_registers_a_signed_verifiable_bundle(
    bootstrap_df: pd.DataFrame, holdout_df: pd.DataFrame, signing_key: Ed25519PrivateKey
) -> None:
    registry = InMemoryRegistry()
    model, spec, metrics = train_bootstrap_model(bootstrap_df, holdout_df, epochs=1, seed=0)
    x_holdout = model_inputs(spec, holdout_df)
    first = release_model(registry, None, signing_key, model, spec, metrics, None, "bootstrap", x_holdout)
    second = release_model(
        registry,
        None,
        signing_key,
        model,
        spec,
        metrics,
        first.version,
        "run-1",
        x_holdout,
        public_url="https://factory.example/",
        chunk_size=1024,
    )
    assert (first.version, second.version) == (1, 2)
    assert second.parent_version == 1
    assert second.url == "https://factory.example/api/models/2/artifact"
    assert second.chunk_count > 1

    record = registry.latest_published("fraud")
    assert record is not None
    assert record.version == 2
    artifact = registry.get_artifact("fraud", 2)
    assert artifact is not None
    # What the registry stored round-trips through the wire format and verifies.
    wire = parse_manifest(second.to_bytes())
    verify_manifest(wire, TrustStore([signing_key.public_key()]))
    verify_model_bytes(wire, artifact)
    assert wire.feature_spec == spec
    assert wire.metrics["auprc"] == pytest.approx(metrics["auprc"])
    assert record.manifest == second.model_dump(mode="json")
    assert [e.action for e in registry.list_audit()] == ["model.published", "model.published"]

    with pytest.raises(Exception, match="not a trusted"):
        verify_manifest(wire, TrustStore([generate_private_key().public_key()]))
