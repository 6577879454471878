"""Server-side errors; all derive from the shared tree so callers catch one root."""

from __future__ import annotations

from shared.errors import FedforgeError


class ServerError(FedforgeError):
    """Root of the cloud server's own errors."""


class RegistryError(ServerError):
    """The registry refused an operation (conflict, unknown id, bad stage)."""


class NotFoundError(RegistryError):
    """An id (device, model version, run) is not in the registry."""


class ReleaseError(ServerError):
    """A model cannot be released: export failed or the ONNX graph disagrees with torch."""


class AggregationError(ServerError):
    """Updates cannot be aggregated: undecodable bytes, mismatched layouts, bad weights."""
