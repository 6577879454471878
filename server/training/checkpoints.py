"""Torch weights of each released version, kept beside the registry.

The ONNX artifact is what the fleet runs; training resumes from these arrays instead of
reverse-engineering initializers out of an exported graph.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from server.errors import ServerError
from shared.fileio import atomic_write_bytes


def checkpoint_path(data_dir: Path, task: str, version: int) -> Path:
    return data_dir / "checkpoints" / f"{task}-v{version}.npz"


def save_state(data_dir: Path, task: str, version: int, state: dict[str, torch.Tensor]) -> Path:
    path = checkpoint_path(data_dir, task, version)
    arrays: dict[str, Any] = {k: v.detach().cpu().numpy() for k, v in state.items()}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def load_state(data_dir: Path, task: str, version: int) -> dict[str, torch.Tensor]:
    path = checkpoint_path(data_dir, task, version)
    if not path.is_file():
        raise ServerError(f"no checkpoint for {task} v{version} at {path}: was it released by this server?")
    with np.load(path) as npz:
        return {k: torch.from_numpy(npz[k].copy()) for k in npz.files}
