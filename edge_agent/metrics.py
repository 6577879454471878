"""The agent's Prometheus endpoint (``metrics_port``; off by default, loopback by default).

Figures are read from the agent at scrape time (a collector), except the scoring latency
histogram, observed per batch. The scrape runs on prometheus_client's own thread, so it
reads only plain numbers the agent keeps up to date, never the store (SQLite connections
belong to the loop thread).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# Per-record scoring latency: ONNX Runtime on a small MLP is tens of microseconds per record.
LATENCY_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2, 0.25, 1.0)


@dataclass(frozen=True)
class AgentFigures:
    ingested: int
    quarantined: int
    scored: int
    labelled: int
    models_rejected: int
    serving_version: int | None
    outbox_depth: int
    queue_depth: int
    # Input drift (edge_agent.drift) as of the last status; None before anything was scored.
    drift_score: float | None = None


class AgentCollector(Collector):
    def __init__(self, figures: Callable[[], AgentFigures]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Any]:
        f = self._figures()
        for name, value, help_ in (
            ("fedforge_agent_records_ingested", f.ingested, "Records accepted by cleaning and stored"),
            ("fedforge_agent_records_quarantined", f.quarantined, "Records or payloads quarantined with a reason"),
            ("fedforge_agent_records_scored", f.scored, "Records scored by the serving model"),
            ("fedforge_agent_labels", f.labelled, "Labels received"),
            ("fedforge_agent_models_rejected", f.models_rejected, "Model bundles rejected (signature, digest, ...)"),
        ):
            counter = CounterMetricFamily(name, help_)
            counter.add_metric([], value)
            yield counter
        serving = GaugeMetricFamily("fedforge_agent_serving_version", "Model version served (0: none)")
        serving.add_metric([], f.serving_version or 0)
        yield serving
        outbox = GaugeMetricFamily("fedforge_agent_outbox_depth", "Prediction batches the broker has not acknowledged")
        outbox.add_metric([], f.outbox_depth)
        yield outbox
        queue = GaugeMetricFamily("fedforge_agent_queue_depth", "Messages read from the broker, not yet handled")
        queue.add_metric([], f.queue_depth)
        yield queue
        if f.drift_score is not None:
            drift = GaugeMetricFamily(
                "fedforge_agent_drift_score", "Mean |standardized mean shift| of the inputs vs the training data"
            )
            drift.add_metric([], f.drift_score)
            yield drift


class AgentMetrics:
    def __init__(self, figures: Callable[[], AgentFigures]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(AgentCollector(figures))
        self.scoring_latency = Histogram(
            "fedforge_agent_scoring_seconds_per_record",
            "ONNX Runtime scoring time per record, observed per batch",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint; returns the bound port (``port`` 0 picks a free one)."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(self._server.server_port)
        log.info("agent metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
