"""Subscriber processes for figure 7 (benchmarks/bench_distribution.py): many clients per process.

``fedforge`` mode: each client is the agent's real MQTT link (``edge_agent.mqtt.AgentLink``,
persistent session, will, the agent's subscriptions) feeding a real ``ModelUpdater``: the
manifest's signature is verified against the operator key, the version's chunks are
subscribed, assembled and checked against the size and sha256 of the manifest. Only the
ONNX Runtime load and the disk write of the agent's ``ModelManager`` are left out (they are
per device, not distribution).

``bare`` mode: plain paho clients subscribed to ``bench/bare/<trial>/<count>/+`` that only
count distinct chunks.

Protocol on stdout, one line each: ``ready`` once every client is connected and
subscribed, then ``done <key> <t>`` when every client of this process has the release
``key`` (version or trial), ``t`` the ``time.monotonic()`` (system-wide on Linux) of the
last one. The process runs until its stdin closes.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.mqtt import AgentLink
from edge_agent.updater import Complete, ModelUpdater, Reject, StartDownload
from shared import topics
from shared.errors import TopicError
from shared.mqtt import BrokerAddress
from shared.signing import TrustStore

BARE_ROOT = "bench/bare"


class Completions:
    """Counts clients that finished each key; reports a key once all ``clients`` have it."""

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self._lock = threading.Lock()
        self._done: dict[str, int] = defaultdict(int)
        self._last: dict[str, float] = {}

    def finished(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._done[key] += 1
            self._last[key] = max(self._last.get(key, 0.0), now)
            if self._done[key] == self.clients:
                _say(f"done {key} {self._last[key]:.6f}")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class UpdaterClient:
    """One simulated agent: its MQTT link and its model updater, nothing else."""

    def __init__(
        self, broker_url: str, fleet: str, device: str, task: str, trust: TrustStore, done: Completions
    ) -> None:
        self.link = AgentLink(broker_url, fleet, device, task)
        self.updater = ModelUpdater(fleet, task, trust, timeout_s=600.0)
        self.done = done
        self._lock = threading.Lock()  # paho calls back on its network thread; keep the updater single-threaded

    def start(self) -> None:
        self.link.start(self.on_message, timeout=30.0)

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        with self._lock:
            if topic == self.link.manifest_topic:
                action = self.updater.on_manifest(payload)
                if isinstance(action, StartDownload):
                    if action.unsubscribe:
                        self.link.unsubscribe(action.unsubscribe)
                    self.link.subscribe(action.subscribe, self.on_message)
                elif isinstance(action, Reject):
                    _say(f"reject {action.reason}")
                return
            try:
                parsed = topics.parse(topic)
            except TopicError:
                return
            if parsed.kind != "chunk" or parsed.version is None or parsed.index is None:
                return
            action = self.updater.on_chunk(parsed.version, parsed.index, payload)
            if isinstance(action, Complete):
                self.link.unsubscribe(action.unsubscribe)
                self.updater.installed(action.manifest.version)
                self.done.finished(str(action.manifest.version))
            elif isinstance(action, Reject):
                _say(f"reject {action.reason}")

    def stop(self) -> None:
        self.link.stop()


class BareClient:
    """A plain paho subscriber that counts distinct chunks per trial."""

    def __init__(self, broker_url: str, client_id: str, done: Completions) -> None:
        self.broker = BrokerAddress.parse(broker_url)
        self.done = done
        self.seen: dict[str, set[int]] = defaultdict(set)
        self.subscribed = threading.Event()
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{BARE_ROOT}/+/+/+", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = self.on_message

    def start(self) -> None:
        self.client.connect(self.broker.host, self.broker.port, keepalive=60)
        self.client.loop_start()
        if not self.subscribed.wait(30.0):
            raise TimeoutError("bare subscriber did not subscribe in 30 s")

    def on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        _, _, trial, count, index = msg.topic.split("/")
        seen = self.seen[trial]
        seen.add(int(index))
        if len(seen) == int(count):
            self.done.finished(trial)
            seen.add(-1)  # never report a trial twice (a redelivery would make len == count + 1)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["fedforge", "bare"])
    parser.add_argument("--broker", required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--fleet", default="bench")
    parser.add_argument("--task", default="fraud")
    parser.add_argument("--trusted-key", type=Path)
    args = parser.parse_args(argv)
    done = Completions(args.clients)
    clients: list[UpdaterClient | BareClient] = []
    if args.mode == "fedforge":
        trust = TrustStore.from_files([args.trusted_key])
        for i in range(args.clients):
            clients.append(UpdaterClient(args.broker, args.fleet, f"{args.prefix}-{i}", args.task, trust, done))
    else:
        clients = [BareClient(args.broker, f"bare-{args.prefix}-{i}", done) for i in range(args.clients)]
    stops: list[Callable[[], None]] = []
    try:
        for client in clients:
            client.start()
            stops.append(client.stop)
        _say("ready")
        sys.stdin.read()  # until the benchmark closes our stdin
    finally:
        for stop in stops:
            try:
                stop()
            except Exception as exc:  # a broker already gone must not hide the real error
                _say(f"stop failed: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
