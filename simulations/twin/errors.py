"""The twin's exceptions."""

from __future__ import annotations

from shared.errors import FedforgeError


class TwinError(FedforgeError):
    """A twin run could not start or did not complete."""
