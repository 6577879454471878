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

from server.api.rollouts import rollout_share
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
        followed = [d for d in devices if not d.revoked]
        online = GaugeMetricFamily("fedforge_devices_online", "Devices whose last status says alive, recently")
        online.add_metric([], sum(1 for d in followed if d.online(now, self._window)))
        yield online
        known = GaugeMetricFamily("fedforge_devices_known", "Devices that ever reported a status")
        known.add_metric([], len(devices))
        yield known
        revoked = GaugeMetricFamily("fedforge_devices_revoked", "Devices an operator revoked")
        revoked.add_metric([], len(devices) - len(followed))
        yield revoked
        release = self._registry.latest_published(self._task)
        release_version = GaugeMetricFamily("fedforge_release_version", "The release (0: none)", labels=["task"])
        release_version.add_metric([self._task], release.version if release else 0)
        yield release_version
        progress = GaugeMetricFamily(
            "fedforge_rollout_progress", "Share of the (non-revoked) fleet serving the release", labels=["task"]
        )
        progress.add_metric([self._task], rollout_share(devices, release.version if release else None))
        yield progress
        serving = GaugeMetricFamily("fedforge_devices_serving", "Devices per served model version", labels=["version"])
        by_version: dict[str, int] = {}
        for d in followed:
            key = "none" if d.serving_version is None else str(d.serving_version)
            by_version[key] = by_version.get(key, 0) + 1
        for version, count in sorted(by_version.items()):
            serving.add_metric([version], count)
        yield serving
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
