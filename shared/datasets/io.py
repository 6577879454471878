"""Parquet reads and atomic writes, so a crash mid-write never leaves a half file in a cache."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd  # type: ignore[import-untyped,unused-ignore]  # no pandas-stubs in the venv

from shared.errors import DatasetError


def write_parquet_atomic(df: pd.DataFrame, path: Path) -> Path:
    """Write next to the target and rename: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"cannot write {path}: {exc}") from exc
    return path


def write_text_atomic(text: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_parquet(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"{path} does not exist")
    try:
        return pd.read_parquet(path)
    except Exception as exc:
        raise DatasetError(f"cannot read {path} as Parquet ({exc}); delete it and create it again") from exc
