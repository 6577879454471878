"""The pure ingest pipeline: wire bytes to validated records or quarantine reasons."""

from edge_agent.pipeline.batch import BatchResult, CleanBatch, KnownIds, clean_payloads
from edge_agent.pipeline.cleaning import CleanRecord, CleanResult, Quarantined, clean_payload

__all__ = [
    "BatchResult",
    "CleanBatch",
    "CleanRecord",
    "CleanResult",
    "KnownIds",
    "Quarantined",
    "clean_payload",
    "clean_payloads",
]
