"""The fleet and model views of the dashboard, pure."""

from __future__ import annotations

from typing import Any

from server.registry import ModelVersionRecord
from server.telemetry.fleet import compare_models, fleet_summary, lineage, version_distribution


def _row(device: str, version: int | None, online: bool = True, rps: float | None = 1.0) -> dict[str, Any]:
    return {"device_id": device, "serving_version": version, "online": online, "records_per_s": rps}


def _model(version: int, parent: int | None, metrics: dict[str, float]) -> ModelVersionRecord:
    return ModelVersionRecord(
        task="t",
        version=version,
        parent_version=parent,
        training_run_id=None,
        created=0.0,
        metrics=metrics,
        sha256="0" * 64,
        size=1,
        signer="k",
        signature="s",
        manifest={},
        stage="published",
    )


def test_distribution_counts_the_online_fleet_newest_first() -> None:
    rows = [_row("a", 1), _row("b", 3), _row("c", 3), _row("d", None), _row("e", 3, online=False)]
    assert version_distribution(rows) == [
        {"version": 3, "devices": 2, "share": 0.5},
        {"version": 1, "devices": 1, "share": 0.25},
        {"version": None, "devices": 1, "share": 0.25},
    ]
    assert version_distribution([_row("x", 1, online=False)]) == []


def test_summary_totals() -> None:
    rows = [_row("a", 2, rps=3.0), _row("b", 1, rps=None), _row("c", 2, online=False, rps=9.0)]
    summary = fleet_summary(rows, latest_published=2, now=5.0)
    assert (summary["devices"], summary["online"], summary["offline"], summary["on_latest"]) == (3, 2, 1, 1)
    assert summary["records_per_s"] == 3.0


def test_lineage_follows_parents_and_stops_on_gaps_and_cycles() -> None:
    models = [_model(1, None, {}), _model(2, 1, {}), _model(3, 2, {}), _model(5, 4, {})]
    assert lineage(models, 3) == [3, 2, 1]
    assert lineage(models, 5) == [5]  # v4 is unknown
    assert lineage(models, 9) == []
    looped = [_model(1, 2, {}), _model(2, 1, {})]
    assert lineage(looped, 1) == [1, 2]


def test_compare_reports_metrics_of_either_side() -> None:
    a, b = _model(1, None, {"auprc": 0.5, "only_a": 1.0}), _model(2, 1, {"auprc": 0.625})
    result = compare_models(a, b, [a, b])
    metrics = {m["name"]: m for m in result["metrics"]}
    assert metrics["auprc"]["delta"] == 0.125
    assert metrics["only_a"] == {"name": "only_a", "a": 1.0, "b": None, "delta": None}
    assert result["lineage"]["common_ancestor"] == 1
