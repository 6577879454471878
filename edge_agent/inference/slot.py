"""The serving model, swapped atomically.

Readers take one reference (``current``) for a whole batch, so a batch in flight finishes on
the model it started with even if a swap happens meanwhile; the new scorer is fully built
and validated before ``swap`` is called.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from edge_agent.inference.onnx import OnnxScorer
from shared.schemas import ModelManifest


@dataclass(frozen=True, slots=True)
class LoadedModel:
    scorer: OnnxScorer
    manifest: ModelManifest

    @property
    def version(self) -> int:
        return self.manifest.version


class ModelSlot:
    def __init__(self, initial: LoadedModel | None = None) -> None:
        self._lock = threading.Lock()
        self._current = initial

    @property
    def current(self) -> LoadedModel | None:
        return self._current  # one attribute read: atomic

    def swap(self, new: LoadedModel) -> LoadedModel | None:
        """Install ``new``; returns the model it replaced."""
        with self._lock:
            old, self._current = self._current, new
        return old
