"""FeatureSpec.transform (the Normalizer training and serving share) standardizes as specified."""

from __future__ import annotations

import numpy as np
import pytest

from shared.features import FeatureField, FeatureSpec, Normalizer


def test_transform_is_log1p_then_standardize() -> None:
    rng = np.random.default_rng(0)
    raw = np.column_stack([rng.normal(3, 2, size=500), rng.exponential(80, size=500)])
    spec = FeatureSpec.from_names("t", ["a", "amount"], {"a": (-50, 50), "amount": (0, 1e6)}, {"amount": "log1p"})
    spec = spec.fit(raw)
    got = spec.transform(raw)
    a, m = spec.fields
    want = np.column_stack([(raw[:, 0] - a.mean) / a.std, (np.log1p(raw[:, 1]) - m.mean) / m.std])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got.mean(axis=0), [0, 0], atol=1e-5)


def test_normalizer_into_reused_buffers_equals_transform() -> None:
    spec = FeatureSpec.from_names("t", ["a", "amount"], {"a": (-50, 50), "amount": (0, 1e6)}, {"amount": "log1p"})
    norm = Normalizer(spec)
    scratch, out = np.empty((3, 2)), np.empty((3, 2), dtype=np.float32)
    views = norm.log1p_views(scratch)
    for raw in (np.array([[1.0, 2.0], [3.0, 4.0], [-5.0, 0.0]]), np.array([[0.5, 9.0], [7.0, 1e5], [0.0, 3.0]])):
        norm.into(raw, scratch, out, views)
        np.testing.assert_array_equal(out, spec.transform(raw))


def test_std_whose_inverse_overflows_is_refused() -> None:
    with pytest.raises(ValueError, match="std"):
        FeatureField(name="a", min=0, max=1, std=5e-324)
