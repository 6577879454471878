"""The REST API (FastAPI): models, devices, runs, artifact downloads and ``/metrics``."""
