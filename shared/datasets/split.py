"""Time-ordered server/agent splits, Dirichlet non-IID partitions, and the ingest wire form.

The fraud capture is a two-day stream, so splits follow time: the server bootstraps on the
earliest slice, judges every model on the latest, and the agents replay the middle. The
agent partitions are Dirichlet(α) over each label separately, which makes both the label
mix and the size of each part differ, as they do between real branches or devices.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped,unused-ignore]  # no pandas-stubs in the venv

from shared.datasets.io import read_parquet, write_parquet_atomic, write_text_atomic
from shared.errors import DatasetError

INDEX_NAME = "index.json"
BOOTSTRAP_FILE = "bootstrap.parquet"
HOLDOUT_FILE = "holdout.parquet"
INGEST_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class FraudSplit:
    bootstrap: pd.DataFrame
    holdout: pd.DataFrame
    pool: pd.DataFrame


def _time_sorted(df: pd.DataFrame, time_col: str) -> pd.DataFrame:
    if time_col not in df.columns:
        return df.reset_index(drop=True)
    return df.sort_values(time_col, kind="mergesort").reset_index(drop=True)


def time_split(
    df: pd.DataFrame, bootstrap_frac: float = 0.1, holdout_frac: float = 0.15, time_col: str = "Time"
) -> FraudSplit:
    """Earliest ``bootstrap_frac`` to the server, latest ``holdout_frac`` to the server, middle to agents."""
    if time_col not in df.columns:
        raise DatasetError(f"cannot split by time: no {time_col!r} column")
    if not (0.0 <= bootstrap_frac < 1.0 and 0.0 <= holdout_frac < 1.0 and bootstrap_frac + holdout_frac < 1.0):
        raise DatasetError(
            f"bootstrap_frac ({bootstrap_frac}) and holdout_frac ({holdout_frac}) must be >= 0 and sum below 1"
        )
    ordered = _time_sorted(df, time_col)
    n = len(ordered)
    n_boot = round(n * bootstrap_frac)
    n_hold = round(n * holdout_frac)
    return FraudSplit(
        bootstrap=ordered.iloc[:n_boot].reset_index(drop=True),
        holdout=ordered.iloc[n - n_hold :].reset_index(drop=True),
        pool=ordered.iloc[n_boot : n - n_hold].reset_index(drop=True),
    )


def _reserves(counts: Sequence[int], n_parts: int, min_size: int) -> list[int]:
    """Rows of each class every part gets before the Dirichlet draw (one of each class when possible)."""
    reserves = [1 if c >= n_parts else 0 for c in counts]
    largest = int(np.argmax(counts))
    others = sum(r for i, r in enumerate(reserves) if i != largest)
    reserves[largest] = min(counts[largest] // n_parts, max(reserves[largest], min_size - others))
    return reserves


def dirichlet_partition(
    df: pd.DataFrame,
    n_parts: int,
    alpha: float = 0.5,
    seed: int = 0,
    label_col: str = "Class",
    min_size: int = 1,
    time_col: str = "Time",
) -> list[pd.DataFrame]:
    """Split ``df`` into ``n_parts`` non-IID parts, deterministic under ``seed``.

    Each class is shared out by its own Dirichlet(α) draw, so a small α gives parts with
    very different fraud rates and sizes. Every part first gets one row of each class that
    has at least ``n_parts`` rows, and at least ``min_size`` rows in all when the data allow.
    Parts keep time order.
    """
    if n_parts < 1:
        raise DatasetError(f"n_parts must be >= 1, got {n_parts}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise DatasetError(f"alpha must be a positive number, got {alpha}")
    if label_col not in df.columns:
        raise DatasetError(f"cannot partition by label: no {label_col!r} column")
    if len(df) < n_parts * min_size:
        raise DatasetError(f"{len(df)} rows cannot fill {n_parts} parts of at least {min_size}")
    rng = np.random.default_rng(seed)
    labels = df[label_col].to_numpy()
    classes = np.unique(labels)
    members = [np.flatnonzero(labels == c) for c in classes]
    reserves = _reserves([len(m) for m in members], n_parts, min_size)
    assigned: list[list[np.ndarray[Any, np.dtype[np.intp]]]] = [[] for _ in range(n_parts)]
    for rows, reserve in zip(members, reserves, strict=True):
        rows = rng.permutation(rows)
        extra = len(rows) - reserve * n_parts
        counts = rng.multinomial(extra, rng.dirichlet(np.full(n_parts, alpha))) + reserve
        for part, chunk in enumerate(np.split(rows, np.cumsum(counts)[:-1])):
            assigned[part].append(chunk)
    parts = []
    for chunks in assigned:
        positions = np.sort(np.concatenate(chunks))
        parts.append(_time_sorted(df.iloc[positions], time_col))
    small = [i for i, p in enumerate(parts) if len(p) < min_size]
    if small:
        raise DatasetError(f"parts {small} got fewer than {min_size} rows; lower min_size or n_parts")
    return parts


def ingest_columns(
    df: pd.DataFrame,
    spec_names: Sequence[str],
    id_col: str = "record_id",
    time_col: str = "Time",
    *,
    infinite: bool = False,
) -> tuple[list[str], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Rows as the columns of ingest records: ids, timestamps (n,) and values (n, features).

    NaN is a missing value and stays in: every ingest form carries one (JSON null, NaN in the
    binary frame) and the agent judges it as the null it stands for. An infinity only the
    binary frame can carry (``infinite=True``); JSON has no such number, so it is refused.
    """
    names = list(spec_names)
    missing = [c for c in (id_col, time_col, *names) if c not in df.columns]
    if missing:
        raise DatasetError(f"cannot build ingest records: missing columns {missing}")
    values = df[names].to_numpy(dtype=np.float64)
    times = df[time_col].to_numpy(dtype=np.float64)
    if not infinite and (np.isinf(values).any() or np.isinf(times).any()):
        raise DatasetError(
            "cannot build ingest records: infinite values (JSON has no such number; the binary frame carries them)"
        )
    return df[id_col].astype(str).tolist(), times, values


def _nulls(numbers: npt.NDArray[np.float64]) -> list[Any]:
    """``numbers.tolist()`` with None (JSON null) where a value is NaN (missing)."""
    out = numbers.astype(object)
    out[np.isnan(numbers)] = None
    return list(out.tolist())


def to_ingest_records(
    df: pd.DataFrame, spec_names: Sequence[str], id_col: str = "record_id", time_col: str = "Time"
) -> list[dict[str, Any]]:
    """Rows as ingest wire records: {"schema_version", "record_id", "ts", "features"}; a NaN
    (missing value) is None, JSON null."""
    names = list(spec_names)
    ids, times, values = ingest_columns(df, names, id_col, time_col)
    return [
        {
            "schema_version": INGEST_SCHEMA_VERSION,
            "record_id": rid,
            "ts": ts,
            "features": dict(zip(names, row, strict=True)),
        }
        for rid, ts, row in zip(ids, _nulls(times), _nulls(values), strict=True)
    ]


def agent_file(index: int) -> str:
    return f"agent-{index}.parquet"


def _summary(df: pd.DataFrame, name: str, label_col: str) -> dict[str, Any]:
    positives = int(df[label_col].sum()) if label_col in df.columns else 0
    return {"file": name, "rows": len(df), "positives": positives}


def write_split(
    split: FraudSplit,
    parts: Sequence[pd.DataFrame],
    out_dir: Path,
    *,
    meta: Mapping[str, Any] | None = None,
    label_col: str = "Class",
) -> Path:
    """Write bootstrap/holdout/agent-{i} Parquet files and an index; returns the index path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(split.bootstrap, out_dir / BOOTSTRAP_FILE)
    write_parquet_atomic(split.holdout, out_dir / HOLDOUT_FILE)
    for i, part in enumerate(parts):
        write_parquet_atomic(part, out_dir / agent_file(i))
    index = {
        "schema_version": 1,
        "meta": dict(meta or {}),
        "bootstrap": _summary(split.bootstrap, BOOTSTRAP_FILE, label_col),
        "holdout": _summary(split.holdout, HOLDOUT_FILE, label_col),
        "agents": [_summary(p, agent_file(i), label_col) for i, p in enumerate(parts)],
    }
    # The index is written last: its presence means the directory is complete.
    return write_text_atomic(json.dumps(index, indent=2, sort_keys=True), out_dir / INDEX_NAME)


def read_index(out_dir: Path) -> dict[str, Any]:
    path = out_dir / INDEX_NAME
    if not path.is_file():
        raise DatasetError(f"{out_dir} holds no {INDEX_NAME}; create it with `fedforge data split`")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    if not isinstance(index, dict) or not isinstance(index.get("agents"), list):
        raise DatasetError(f"{path} is not a split index")
    return index


def read_partition(path: Path) -> pd.DataFrame:
    """One written part (server or agent file), in time order as written."""
    return read_parquet(path)


def read_agent_parts(out_dir: Path) -> list[pd.DataFrame]:
    index = read_index(out_dir)
    return [read_partition(out_dir / str(entry["file"])) for entry in index["agents"]]
