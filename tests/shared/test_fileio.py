from __future__ import annotations

import stat
from pathlib import Path

import pytest

from shared.fileio import atomic_write_bytes


def test_writes_whole_file_with_mode_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "key.pem"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new" * 100_000, mode=0o600)
    assert target.read_bytes() == b"new" * 100_000
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["key.pem"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    atomic_write_bytes(target, b"v1")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
