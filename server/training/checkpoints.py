"""Torch weights of each released version, kept beside the registry.

The ONNX artifact is what the fleet runs; training resumes from these arrays instead of
reverse-engineering initializers out of an exported graph.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from server.errors import ServerError


def checkpoint_path(data_dir: Path, task: str, version: int) -> Path:
    return data_dir / "checkpoints" / f"{task}-v{version}.npz"


def save_state(data_dir: Path, task: str, version: int, state: dict[str, torch.Tensor]) -> Path:
    path = checkpoint_path(data_dir, task, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        arrays: dict[str, Any] = {k: v.detach().cpu().numpy() for k, v in state.items()}
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load_state(data_dir: Path, task: str, version: int) -> dict[str, torch.Tensor]:
    path = checkpoint_path(data_dir, task, version)
    if not path.is_file():
        raise ServerError(f"no checkpoint for {task} v{version} at {path}: was it released by this server?")
    with np.load(path) as npz:
        return {k: torch.from_numpy(npz[k].copy()) for k in npz.files}
