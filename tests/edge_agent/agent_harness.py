"""Runs a real Agent on its own thread and event loop, and a plain MQTT client to talk to it."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from edge_agent.config import AgentSettings
from edge_agent.service import Agent
from shared import topics
from shared.mqtt import BrokerAddress, MqttClient
from shared.schemas import DeviceStatus, PredictionBatch

T = TypeVar("T")


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll until ``condition()`` is truthy; a deadline only turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class AgentThread:
    def __init__(self, settings: AgentSettings, **kwargs: Any) -> None:
        self.settings = settings
        self.kwargs = kwargs
        self.agent: Agent | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="agent-under-test", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.agent = Agent(self.settings, **self.kwargs)
        await self.agent.start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.agent.stop()

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the agent's loop thread (where the agent's own code runs) and return its result."""
        assert self._loop is not None, "agent not started"

        async def _run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(_run(), self._loop).result(60)

    def __enter__(self) -> AgentThread:
        self._thread.start()
        self._ready.wait(60)
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        assert not self._thread.is_alive(), "agent did not stop"


class Observer:
    """A test-side MQTT client: publishes like a sensor or the cloud, watches status and predictions."""

    def __init__(self, url: str, fleet: str, device: str) -> None:
        self.fleet, self.device = fleet, device
        self.client = MqttClient(BrokerAddress.parse(url), f"test-{uuid.uuid4().hex[:10]}", persistent=False)
        self._lock = threading.Lock()
        self.statuses: list[DeviceStatus] = []
        self.predictions: list[PredictionBatch] = []
        self.client.subscribe(topics.status(fleet, device), self._on_status)
        self.client.subscribe(topics.predictions(fleet, device), self._on_predictions)
        self.client.start()

    def _on_status(self, topic: str, payload: bytes, retained: bool) -> None:
        with self._lock:
            self.statuses.append(DeviceStatus.model_validate_json(payload))

    def _on_predictions(self, topic: str, payload: bytes, retained: bool) -> None:
        with self._lock:
            self.predictions.append(PredictionBatch.model_validate_json(payload))

    def latest_status(self) -> DeviceStatus | None:
        with self._lock:
            return self.statuses[-1] if self.statuses else None

    def predicted(self) -> dict[str, tuple[int, float]]:
        with self._lock:
            return {p.record_id: (b.model_version, p.score) for b in self.predictions for p in b.predictions}

    def send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish_and_wait(topic, payload, qos=1, retain=retain)

    def ingest(self, payload: bytes) -> None:
        self.send(topics.ingest(self.fleet, self.device), payload)

    def publish_bundle(self, manifest_bytes: bytes, version: int, chunks: list[bytes], task: str = "fraud") -> None:
        """Chunks first, then the manifest, all retained (the release order)."""
        for i, chunk in enumerate(chunks):
            self.send(topics.chunk(self.fleet, task, version, i), chunk, retain=True)
        self.send(topics.manifest(self.fleet, task), manifest_bytes, retain=True)

    def close(self) -> None:
        self.client.stop()
