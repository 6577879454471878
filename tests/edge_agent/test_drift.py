"""Input drift against the serving model's training statistics."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.drift import DriftMonitor
from shared.features import FeatureField, FeatureSpec


def _spec(width: int = 4) -> FeatureSpec:
    fields = tuple(FeatureField(name=f"f{i}", min=-1e6, max=1e6) for i in range(width))
    return FeatureSpec(task="t", fields=fields)


@pytest.fixture
def trained() -> tuple[FeatureSpec, np.random.Generator]:
    rng = np.random.default_rng(0)
    train = rng.normal(loc=[0.0, 5.0, -3.0, 100.0], scale=[1.0, 2.0, 0.5, 10.0], size=(20_000, 4))
    return _spec().fit(train), rng


def test_data_like_the_training_data_has_almost_no_drift(trained: tuple[FeatureSpec, np.random.Generator]) -> None:
    spec, rng = trained
    monitor = DriftMonitor(window=2000)
    for _ in range(10):
        monitor.observe(1, spec, rng.normal(loc=[0.0, 5.0, -3.0, 100.0], scale=[1.0, 2.0, 0.5, 10.0], size=(200, 4)))
    drift = monitor.drift()
    assert drift is not None
    assert drift.window == 2000
    assert drift.score < 0.1


def test_a_shifted_feature_is_measured_and_named(trained: tuple[FeatureSpec, np.random.Generator]) -> None:
    spec, rng = trained
    monitor = DriftMonitor(window=1000)
    # Feature f3 moves by 2 training standard deviations (10 -> +20); the others stay.
    monitor.observe(1, spec, rng.normal(loc=[0.0, 5.0, -3.0, 120.0], scale=[1.0, 2.0, 0.5, 10.0], size=(1000, 4)))
    drift = monitor.drift()
    assert drift is not None
    assert drift.worst_feature == "f3"
    assert drift.worst_shift == pytest.approx(2.0, abs=0.15)
    assert drift.score == pytest.approx(0.5, abs=0.08)  # mean over 4 features


def test_the_window_forgets_old_batches(trained: tuple[FeatureSpec, np.random.Generator]) -> None:
    spec, rng = trained
    monitor = DriftMonitor(window=500)
    monitor.observe(1, spec, rng.normal(loc=[0.0, 5.0, -3.0, 150.0], scale=[1.0, 2.0, 0.5, 10.0], size=(500, 4)))
    shifted = monitor.drift()
    for _ in range(5):
        monitor.observe(1, spec, rng.normal(loc=[0.0, 5.0, -3.0, 100.0], scale=[1.0, 2.0, 0.5, 10.0], size=(100, 4)))
    recovered = monitor.drift()
    assert shifted is not None
    assert recovered is not None
    assert shifted.score > 1.0
    assert recovered.score < 0.15
    assert recovered.window == 500


def test_a_new_model_starts_a_new_window(trained: tuple[FeatureSpec, np.random.Generator]) -> None:
    spec, rng = trained
    monitor = DriftMonitor()
    monitor.observe(1, spec, rng.normal(size=(300, 4)))
    monitor.observe(2, spec, rng.normal(loc=[0.0, 5.0, -3.0, 100.0], scale=[1.0, 2.0, 0.5, 10.0], size=(50, 4)))
    drift = monitor.drift()
    assert drift is not None
    assert drift.window == 50


def test_nothing_observed_means_no_drift_reported() -> None:
    assert DriftMonitor().drift() is None
    with pytest.raises(ValueError, match="window"):
        DriftMonitor(window=0)


def test_a_batch_outside_the_cleaning_rules_is_skipped() -> None:
    fields = (FeatureField(name="amount", min=0.0, max=1e6, transform="log1p"), FeatureField(name="v", min=-9, max=9))
    spec = FeatureSpec(task="t", fields=fields)
    monitor = DriftMonitor()
    monitor.observe(1, spec, np.array([[-1.0, 0.0]]))  # log1p(-1) = -inf: cleaning never lets this through
    assert monitor.drift() is None
    monitor.observe(1, spec, np.array([[0.0, 0.5]]))
    drift = monitor.drift()
    assert drift is not None
    assert drift.window == 1
    assert drift.worst_feature == "v"
