"""The fedforge edge agent: ingest, clean, store, score and update models on one device."""
