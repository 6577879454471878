"""Parquet reads and atomic writes, so a crash mid-write never leaves a half file in a cache."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd  # type: ignore[import-untyped,unused-ignore]  # no pandas-stubs in the venv

from shared.errors import DatasetError
from shared.fileio import atomic_write_bytes


def write_parquet_atomic(df: pd.DataFrame, path: Path) -> Path:
    """Readers see the old file or the whole new one (``shared.fileio``)."""
    try:
        buffer = io.BytesIO()
        df.to_parquet(buffer, index=False)
        return atomic_write_bytes(path, buffer.getvalue())
    except Exception as exc:
        raise DatasetError(f"cannot write {path}: {exc}") from exc


def write_text_atomic(text: str, path: Path) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_parquet(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"{path} does not exist")
    try:
        return pd.read_parquet(path)
    except Exception as exc:
        raise DatasetError(f"cannot read {path} as Parquet ({exc}); delete it and create it again") from exc
