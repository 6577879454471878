"""The agent's column-wise PredictionBatch encoder says exactly what the pydantic model says."""

from __future__ import annotations

import pytest

from shared.schemas import Prediction, PredictionBatch, prediction_batch_bytes


@pytest.mark.parametrize(
    "scores",
    [[], [0.0], [1.0, 0.5, 1e-7, 0.30000001192092896, 0.9999999403953857], [float(i) / 7 for i in range(50)]],
)
def test_column_encoder_decodes_to_the_model(scores: list[float]) -> None:
    ids = [f"r{i}-é" for i in range(len(scores))]
    alerts = [s >= 0.5 for s in scores]
    want = PredictionBatch(
        device_id="dev-1",
        model_version=3,
        predictions=tuple(
            Prediction(record_id=r, score=s, alert=a) for r, s, a in zip(ids, scores, alerts, strict=True)
        ),
    )
    got = PredictionBatch.model_validate_json(prediction_batch_bytes("dev-1", 3, ids, scores, alerts))
    assert got == want
    assert [p.score for p in got.predictions] == scores  # floats survive exactly
