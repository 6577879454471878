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
from edge_agent.updater.files import ModelFiles

__all__ = ["Action", "Complete", "Ignore", "ModelFiles", "ModelUpdater", "Reject", "RequestChunks", "StartDownload"]
