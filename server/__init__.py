"""The fedforge cloud server: registry, release pipeline, fleet monitor and REST API."""
