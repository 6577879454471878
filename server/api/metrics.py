"""Prometheus metrics of one app instance, in a private ``CollectorRegistry``.

Fleet and model figures are read from the registry at scrape time (a collector), so they
are right even after a restart or when another process (the ServerApp) wrote the rows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from server.registry.records import Registry


class RegistryCollector(Collector):
    def __init__(self, registry: Registry, fleet: str, task: str, online_window_s: float) -> None:
        self._registry = registry
        self._fleet = fleet
        self._task = task
        self._window = online_window_s

    def collect(self) -> Iterator[Any]:
        now = time.time()
        devices = self._registry.list_devices(self._fleet)
        online = GaugeMetricFamily("fedforge_devices_online", "Devices whose last status says alive, recently")
        online.add_metric([], sum(1 for d in devices if d.online(now, self._window)))
        yield online
        known = GaugeMetricFamily("fedforge_devices_known", "Devices that ever reported a status")
        known.add_metric([], len(devices))
        yield known
        published = CounterMetricFamily("fedforge_models_published", "Model versions published", labels=["task"])
        versions = self._registry.list_model_versions(self._task)
        published.add_metric([self._task], sum(1 for m in versions if m.stage == "published"))
        yield published
        rounds = CounterMetricFamily("fedforge_rounds", "Federated rounds recorded")
        rounds.add_metric([], len(self._registry.list_rounds()))
        yield rounds


class ApiMetrics:
    def __init__(self, registry: Registry, fleet: str, task: str, online_window_s: float) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(RegistryCollector(registry, fleet, task, online_window_s))
        self.latency = Histogram(
            "fedforge_http_request_duration_seconds",
            "API request latency",
            ["method", "route", "status"],
            registry=self.registry,
        )
