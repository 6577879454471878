"""Model updates: the pure download/verify state machine and the on-disk model files."""

from edge_agent.updater.core import (
    Action,
    Complete,
    Ignore,
    ModelUpdater,
    Reject,
    RequestChunks,
    StartDownload,
)
from edge_agent.updater.files import ModelFiles, Pin

__all__ = [
    "Action",
    "Complete",
    "Ignore",
    "ModelFiles",
    "ModelUpdater",
    "Pin",
    "Reject",
    "RequestChunks",
    "StartDownload",
]
