"""Time splits, Dirichlet partitions, ingest records and the split directory format."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd  # type: ignore[import-untyped,unused-ignore]
import pytest

from shared.datasets import fraud
from shared.datasets.split import (
    dirichlet_partition,
    ingest_columns,
    read_agent_parts,
    read_index,
    read_partition,
    time_split,
    to_ingest_records,
    write_split,
)
from shared.errors import DatasetError
from shared.features import FeatureSpec
from shared.schemas import loads_json
from shared.tasks.fraud import base_feature_spec


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    df = fraud.synthetic(5000, fraud_rate=0.03, seed=11)
    # Shuffle so that the split has to restore time order itself.
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_time_split_orders_and_slices(data: pd.DataFrame) -> None:
    split = time_split(data, bootstrap_frac=0.1, holdout_frac=0.2)
    assert (len(split.bootstrap), len(split.pool), len(split.holdout)) == (500, 3500, 1000)
    for part in (split.bootstrap, split.pool, split.holdout):
        assert part["Time"].is_monotonic_increasing
    assert split.bootstrap["Time"].max() <= split.pool["Time"].min()
    assert split.pool["Time"].max() <= split.holdout["Time"].min()
    ids = [set(p["record_id"]) for p in (split.bootstrap, split.pool, split.holdout)]
    assert not ids[0] & ids[1]
    assert not ids[1] & ids[2]
    assert not ids[0] & ids[2]
    assert set().union(*ids) == set(data["record_id"])


def test_time_split_is_stable_for_equal_times() -> None:
    df = pd.DataFrame({"Time": [1.0, 0.0, 1.0, 0.0], "record_id": ["a", "b", "c", "d"], "Class": [0, 0, 0, 0]})
    split = time_split(df, bootstrap_frac=0.0, holdout_frac=0.0)
    assert split.pool["record_id"].tolist() == ["b", "d", "a", "c"]


@pytest.mark.parametrize(("boot", "hold"), [(-0.1, 0.1), (0.5, 0.5), (1.0, 0.0)])
def test_time_split_rejects_bad_fractions(data: pd.DataFrame, boot: float, hold: float) -> None:
    with pytest.raises(DatasetError):
        time_split(data, bootstrap_frac=boot, holdout_frac=hold)


def test_dirichlet_partition_is_deterministic_and_complete(data: pd.DataFrame) -> None:
    pool = time_split(data).pool
    a = dirichlet_partition(pool, 6, alpha=0.5, seed=3)
    b = dirichlet_partition(pool, 6, alpha=0.5, seed=3)
    c = dirichlet_partition(pool, 6, alpha=0.5, seed=4)
    for x, y in zip(a, b, strict=True):
        pd.testing.assert_frame_equal(x, y)
    assert [len(p) for p in a] != [len(p) for p in c]
    assert sum(len(p) for p in a) == len(pool)
    ids = [rid for p in a for rid in p["record_id"]]
    assert sorted(ids) == sorted(pool["record_id"])
    for part in a:
        assert len(part) > 0
        assert part["Class"].sum() >= 1
        assert part["Time"].is_monotonic_increasing


def test_dirichlet_partition_is_non_iid(data: pd.DataFrame) -> None:
    pool = time_split(data).pool
    parts = dirichlet_partition(pool, 8, alpha=0.3, seed=0)
    rates = [float(p["Class"].mean()) for p in parts]
    sizes = [len(p) for p in parts]
    assert max(rates) > 2 * min(rates)
    assert max(sizes) > 2 * min(sizes)


def test_dirichlet_partition_honours_min_size(data: pd.DataFrame) -> None:
    parts = dirichlet_partition(data, 10, alpha=0.05, seed=1, min_size=50)
    assert min(len(p) for p in parts) >= 50


def test_dirichlet_partition_without_enough_positives_still_fills_parts() -> None:
    df = fraud.synthetic(200, fraud_rate=0.01, seed=0)  # 2 positives for 5 parts
    parts = dirichlet_partition(df, 5, alpha=1.0, seed=0)
    assert all(len(p) > 0 for p in parts)
    assert sum(int(p["Class"].sum()) for p in parts) == 2


@pytest.mark.parametrize("kwargs", [{"n_parts": 0}, {"n_parts": 2, "alpha": 0.0}, {"n_parts": 300, "min_size": 20}])
def test_dirichlet_partition_rejects_bad_arguments(data: pd.DataFrame, kwargs: dict[str, float]) -> None:
    with pytest.raises(DatasetError):
        dirichlet_partition(data, **kwargs)  # type: ignore[arg-type]


def _valid_ingest(record: object, spec: FeatureSpec) -> bool:
    """The wire contract for one ingest record, checked independently of the agent's cleaner."""
    if not isinstance(record, dict) or set(record) != {"schema_version", "record_id", "ts", "features"}:
        return False
    lo, hi = spec.ranges()
    features = record["features"]
    return (
        record["schema_version"] == 1
        and isinstance(record["record_id"], str)
        and 1 <= len(record["record_id"]) <= 128
        and isinstance(record["ts"], float)
        and math.isfinite(record["ts"])
        and isinstance(features, dict)
        and list(features) == list(spec.names)
        and all(type(v) is float and math.isfinite(v) for v in features.values())
        and all(lo[j] <= features[n] <= hi[j] for j, n in enumerate(spec.names))
    )


def test_to_ingest_records_follow_the_wire_format(data: pd.DataFrame) -> None:
    spec = base_feature_spec()
    rows = data.head(50)
    records = to_ingest_records(rows, spec.names)
    assert len(records) == 50
    decoded = loads_json(json.dumps(records).encode())
    assert all(_valid_ingest(r, spec) for r in decoded)
    assert [r["record_id"] for r in decoded] == rows["record_id"].tolist()
    assert decoded[0]["ts"] == rows["Time"].iloc[0]
    assert decoded[0]["features"]["V3"] == rows["V3"].iloc[0]


def test_to_ingest_records_refuses_what_json_cannot_carry(data: pd.DataFrame) -> None:
    names = base_feature_spec().names
    with pytest.raises(DatasetError, match="missing columns"):
        to_ingest_records(data.drop(columns=["V7"]), names)
    broken = data.head(3).copy()
    broken.loc[1, "Amount"] = np.inf
    with pytest.raises(DatasetError, match="infinite"):
        to_ingest_records(broken, names)
    assert np.isinf(ingest_columns(broken, names, infinite=True)[2]).any()  # the binary frame's columns


def test_a_nan_is_a_missing_value_json_null(data: pd.DataFrame) -> None:
    names = base_feature_spec().names
    rows = data.head(3).copy()
    rows.loc[1, "Amount"] = np.nan
    rows.loc[2, "Time"] = np.nan
    records = loads_json(json.dumps(to_ingest_records(rows, names), allow_nan=False).encode())
    assert records[1]["features"]["Amount"] is None
    assert records[1]["features"]["V1"] == rows.loc[1, "V1"]
    assert records[2]["ts"] is None
    assert records[0]["ts"] == rows.loc[0, "Time"]


def test_split_directory_round_trip(tmp_path: Path, data: pd.DataFrame) -> None:
    split = time_split(data)
    parts = dirichlet_partition(split.pool, 3, seed=0)
    index_path = write_split(split, parts, tmp_path / "split", meta={"seed": 0})
    out = index_path.parent
    assert sorted(p.name for p in out.iterdir()) == [
        "agent-0.parquet",
        "agent-1.parquet",
        "agent-2.parquet",
        "bootstrap.parquet",
        "holdout.parquet",
        "index.json",
    ]
    index = read_index(out)
    assert index["meta"] == {"seed": 0}
    assert [a["rows"] for a in index["agents"]] == [len(p) for p in parts]
    assert index["holdout"]["positives"] == int(split.holdout["Class"].sum())
    pd.testing.assert_frame_equal(read_partition(out / "bootstrap.parquet"), split.bootstrap)
    for got, want in zip(read_agent_parts(out), parts, strict=True):
        pd.testing.assert_frame_equal(got, want)


def test_reading_a_directory_without_index_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="fedforge data split"):
        read_index(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        read_partition(tmp_path / "agent-0.parquet")
