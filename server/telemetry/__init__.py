"""The dashboard's read model: device telemetry over time, rates, drift, quarantine samples."""
