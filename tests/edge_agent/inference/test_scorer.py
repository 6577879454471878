"""OnnxScorer validates on load; ModelSlot swaps without disturbing a batch in flight."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from edge_agent.inference import LoadedModel, ModelSlot, OnnxScorer
from shared.errors import BundleError
from shared.features import FeatureSpec
from shared.tasks.fraud import FraudMLP, ScoringHead
from tests.edge_agent.conftest import Bundle, export_onnx


def test_scores_match_torch(spec: FeatureSpec, onnx_bytes: bytes, make_bundle: Callable[..., Bundle]) -> None:
    bundle = make_bundle(1, model_bytes=onnx_bytes)
    scorer = OnnxScorer(onnx_bytes, bundle.manifest)
    x = np.random.default_rng(0).normal(size=(17, spec.width)).astype(np.float32)
    scores = scorer.score(x)
    assert scores.shape == (17,)
    assert scores.dtype == np.float32
    assert np.all((scores >= 0) & (scores <= 1))
    torch.manual_seed(0)
    model = FraudMLP(width=spec.width).eval()
    with torch.no_grad():
        expected = ScoringHead(model)(torch.from_numpy(x)).numpy().reshape(-1)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert scorer.score(np.empty((0, spec.width), dtype=np.float32)).shape == (0,)


def test_score_raw_uses_spec_transform(
    spec: FeatureSpec, onnx_bytes: bytes, make_bundle: Callable[..., Bundle]
) -> None:
    scorer = OnnxScorer(onnx_bytes, make_bundle(1, model_bytes=onnx_bytes).manifest)
    raw = np.array([[0.1, 0.2, 0.3, 50.0], [1.0, -1.0, 2.0, 5.0]])
    np.testing.assert_array_equal(scorer.score_raw(raw), scorer.score(spec.transform(raw)))
    with pytest.raises(ValueError, match="expected shape"):
        scorer.score(np.zeros((2, spec.width + 1), dtype=np.float32))


def test_score_raw_reuses_buffers_without_aliasing(
    spec: FeatureSpec, onnx_bytes: bytes, make_bundle: Callable[..., Bundle]
) -> None:
    scorer = OnnxScorer(onnx_bytes, make_bundle(1, model_bytes=onnx_bytes).manifest)
    rng = np.random.default_rng(3)
    kept = []
    for n in (1, 3, 300, 2, 257, 1):
        raw = np.column_stack([rng.normal(size=(n, 3)) * 3, rng.uniform(0, 5000, size=n)])
        scores = scorer.score_raw(raw)
        # bit for bit what the spec's own transform feeds the model
        np.testing.assert_array_equal(scores, scorer.score(spec.transform(raw)))
        kept.append((scores.copy(), scores))
    for copy, returned in kept:
        np.testing.assert_array_equal(copy, returned)  # later calls did not overwrite earlier results
    with pytest.raises(ValueError, match="expected shape"):
        scorer.score_raw(np.zeros((2, spec.width + 1)))
    assert scorer.score_raw(np.empty((0, spec.width))).shape == (0,)


def test_rejects_wrong_names(onnx_bytes: bytes, make_bundle: Callable[..., Bundle]) -> None:
    manifest = make_bundle(1, model_bytes=onnx_bytes).manifest
    with pytest.raises(BundleError, match="inputs"):
        OnnxScorer(onnx_bytes, manifest.model_copy(update={"input_name": "x"}))
    with pytest.raises(BundleError, match="outputs"):
        OnnxScorer(onnx_bytes, manifest.model_copy(update={"output_name": "y"}))


def test_rejects_wrong_width_and_garbage(spec: FeatureSpec, make_bundle: Callable[..., Bundle]) -> None:
    wide = export_onnx(spec.width + 2)
    manifest = make_bundle(1, model_bytes=wide).manifest
    with pytest.raises(BundleError, match="dummy batch"):
        OnnxScorer(wide, manifest)
    with pytest.raises(BundleError, match="does not load"):
        OnnxScorer(b"\x00not an onnx model" * 10, manifest)


def test_slot_swap_keeps_in_flight_reference(onnx_bytes: bytes, make_bundle: Callable[..., Bundle]) -> None:
    b1, b2 = make_bundle(1, model_bytes=onnx_bytes), make_bundle(2, seed=1)
    m1 = LoadedModel(OnnxScorer(b1.model_bytes, b1.manifest), b1.manifest)
    m2 = LoadedModel(OnnxScorer(b2.model_bytes, b2.manifest), b2.manifest)
    slot = ModelSlot()
    assert slot.current is None
    assert slot.swap(m1) is None
    in_flight = slot.current
    assert slot.swap(m2) is m1
    assert in_flight is m1
    assert in_flight.version == 1
    assert slot.current is m2
