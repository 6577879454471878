"""The pure ingest pipeline: wire bytes to validated records or quarantine reasons."""

from edge_agent.pipeline.cleaning import CleanRecord, CleanResult, Quarantined, clean_payload

__all__ = ["CleanRecord", "CleanResult", "Quarantined", "clean_payload"]
