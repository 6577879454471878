"""``MqttClient``: a reconnecting MQTT 5 client with a persistent session and a subscription table.

Two ways to run the network I/O. ``start()``: paho's own thread (``loop_start``); handlers
are called on that thread and must not block (the server puts messages on a queue).
``start_on_loop()``: on the caller's asyncio loop, the way the agent runs (``shared.mqtt.loop``):
handlers run on the loop thread, no message crosses threads, and a QoS 1 message is
acknowledged only after ``after_read`` has dealt with it (the agent commits it to its store
there). One thread holds the GIL instead of two taking turns: handing each message from
paho's thread to the loop cost about as much CPU as paho's own work on it (~50 µs a
message; benchmarks/bench_ingest.py, figure 3a).

Facts this relies on (measured): with MQTT 5, a session survives a drop only with
``clean_start=False`` plus a session expiry; a QoS 1 publish while offline is queued by paho
in memory and sent after reconnect, so delivery is tracked with ``on_publish``. paho 2.2's
``loop_read`` ignores ``max_packets`` (it reads one packet, or as many as it has QoS messages
in flight), so draining a socket through paho means calling it until a call delivers nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from shared.errors import ConfigError
from shared.mqtt.config import BrokerAddress, MqttError, Will
from shared.mqtt.loop import LoopIo, PahoClient

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, bool], None]
"""(topic, payload, retained) -> None; called on paho's network thread, or on the asyncio
loop's thread for a client started with ``start_on_loop``."""

SESSION_EXPIRY_S = 7 * 24 * 3600
MAX_CACHED_ROUTES = 4096


class MqttClient:
    """A reconnecting MQTT 5 client with a persistent session and a subscription table."""

    def __init__(
        self,
        broker: BrokerAddress,
        client_id: str,
        *,
        persistent: bool = True,
        will: Will | None = None,
        keepalive: int = 30,
        ca_certs: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        receive_maximum: int | None = None,
    ) -> None:
        """``receive_maximum`` (MQTT 5): at most this many QoS 1/2 messages in flight to us; bounds broker memory."""
        if receive_maximum is not None and not 1 <= receive_maximum <= 65535:
            raise ConfigError(f"receive_maximum must be 1..65535, got {receive_maximum}")
        self.broker = broker
        self._receive_maximum = receive_maximum
        self.client_id = client_id
        self._persistent = persistent
        self._keepalive = keepalive
        self._subs: dict[str, tuple[int, MessageHandler]] = {}
        # topic -> handlers whose filter matches it: paho's topic_matches_sub builds a matcher
        # per call, which cost more than the rest of a message's delivery; cleared on (un)subscribe.
        self._routes: dict[str, list[MessageHandler]] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        # mid -> (event for wait_published, on_delivered callback); see publish() for the
        # bookkeeping that closes the race with an acknowledgement arriving before we register.
        self._pending: dict[int, tuple[threading.Event, Callable[[], None] | None]] = {}
        self._acked_early: dict[int, bool] = {}  # mid -> success, for acks that beat publish() to the lock
        self._qos0_unsent: set[int] = set()  # QoS 0 mids whose on_publish is not ours to report
        self.connects = 0
        self._packets = 0  # packets seen by our callbacks: how the loop mode knows a read got one
        self._delivered = 0  # messages among them
        self._io: LoopIo | None = None
        self._client = PahoClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.max_queued_messages_set(0)
        self._client.max_inflight_messages_set(100)
        if broker.tls:
            self._client.tls_set(ca_certs=ca_certs, certfile=certfile, keyfile=keyfile)
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish

    # -- lifecycle --------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Connect and start the network thread; retries in the background after that."""
        deadline = time.monotonic() + timeout
        self._connect(deadline)
        self._client.loop_start()
        if not self._connected.wait(max(0.1, deadline - time.monotonic())):
            self._client.loop_stop()
            raise MqttError(f"broker {self.broker.url} did not accept the connection in {timeout} s")

    def _connect(self, deadline: float) -> None:
        """paho's blocking connect (TCP, TLS handshake, CONNECT queued), retried until ``deadline``."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S if self._persistent else 0
        if self._receive_maximum is not None:
            props.ReceiveMaximum = self._receive_maximum
        while True:
            try:
                self._client.connect(
                    self.broker.host,
                    self.broker.port,
                    keepalive=self._keepalive,
                    clean_start=not self._persistent,
                    properties=props,
                )
                return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise MqttError(f"cannot connect to {self.broker.url}: {exc}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        """Clean disconnect (the broker does not send the will)."""
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
            self._connected.clear()

    async def start_on_loop(self, connect_s: float = 10.0, after_read: Callable[[], None] | None = None) -> None:
        """Connect with the network I/O on the running asyncio loop (see the module docstring).

        ``after_read`` runs on the loop after each drained readable event that delivered
        something, before the acknowledgements of those messages are written; if it raises,
        none is written and the client reconnects (bulk read path: see ``LoopIo._refuse``),
        so the broker delivers them again. Reconnects
        (backoff 1 to 30 s) and keepalive run in a task on the same loop; the blocking parts of a
        connect (TCP, TLS handshake) run in the loop's default executor.
        """
        if self._io is not None:
            raise MqttError("the client is already running on a loop")
        io = LoopIo(self, asyncio.get_running_loop(), after_read)
        self._io = io
        deadline = time.monotonic() + connect_s
        try:
            await io.loop.run_in_executor(None, self._connect, deadline)
            await asyncio.wait_for(io.up.wait(), max(0.1, deadline - time.monotonic()))
        except (TimeoutError, MqttError) as exc:
            await self.stop_on_loop(grace_s=1.0)
            if isinstance(exc, MqttError):
                raise
            raise MqttError(f"broker {self.broker.url} did not accept the connection in {connect_s} s") from None
        io.supervisor = io.loop.create_task(io.supervise(), name=f"mqtt-{self.client_id}")

    async def stop_on_loop(self, grace_s: float = 5.0) -> None:
        """Clean disconnect of a client started with ``start_on_loop`` (on that loop)."""
        io = self._io
        if io is None:
            return
        if io.supervisor is not None:
            io.supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await io.supervisor
        if io.connecting is not None:  # a reconnect in the executor: let it finish, then undo it
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(io.connecting), grace_s)
        client = self._client
        try:
            if client.socket() is not None:
                client.disconnect()
                client.loop_write()  # usually sends DISCONNECT now, after which paho closes the socket
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(io.closed.wait(), grace_s)
        finally:
            io.close()
            self._connected.clear()
            self._io = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- subscribe / publish ----------------------------------------------------------

    def subscribe(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> None:
        with self._lock:
            self._subs[topic_filter] = (qos, handler)
            self._routes.clear()
        if self.connected:
            self._client.subscribe(topic_filter, qos=qos)

    def unsubscribe(self, topic_filter: str) -> None:
        with self._lock:
            self._subs.pop(topic_filter, None)
            self._routes.clear()
        if self.connected:
            self._client.unsubscribe(topic_filter)

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        on_delivered: Callable[[], None] | None = None,
    ) -> int:
        """Queue a publish; returns the message id (QoS > 0) for ``wait_published``.

        ``on_delivered`` (QoS > 0 only) is called once when the broker acknowledges the
        message with a success reason code: on the thread doing the I/O (paho's, or the
        loop's for ``start_on_loop``), or on the caller's before ``publish`` returns when the
        ack won the race; it must not block. It
        is never called for a message paho loses (process exit), which is what an outbox
        on disk is for.
        """
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            raise MqttError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        mid = info.mid
        fire = False
        with self._lock:
            # paho calls on_publish *before* marking the message published, so an ack can
            # come while we are here: whichever side takes the lock second completes it.
            if qos == 0:
                if self._acked_early.pop(mid, None) is None and info.rc == paho.MQTT_ERR_SUCCESS:
                    self._qos0_unsent.add(mid)
                return mid
            self._qos0_unsent.discard(mid)
            # (info.is_published() cannot tell: it raises for a message queued while offline.)
            early = self._acked_early.pop(mid, None)
            if early is not None:
                fire = early
            else:
                self._pending[mid] = (threading.Event(), on_delivered)
        if fire and on_delivered is not None:
            on_delivered()
        return mid

    def wait_published(self, mid: int, timeout: float = 10.0) -> bool:
        """Block until the broker acknowledged ``mid``; for ``start_on_loop``, never on the loop's
        thread (the acknowledgement is read there)."""
        with self._lock:
            entry = self._pending.get(mid)
        return True if entry is None else entry[0].wait(timeout)

    def publish_and_wait(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, timeout: float = 10.0
    ) -> None:
        mid = self.publish(topic, payload, qos=qos, retain=retain)
        if qos > 0 and not self.wait_published(mid, timeout):
            raise MqttError(f"publish to {topic} not acknowledged in {timeout} s")

    # -- paho callbacks (network thread, or the loop's thread) --------------------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._packets += 1
        if reason_code.is_failure:
            log.warning("broker %s refused connection: %s", self.broker.url, reason_code)
            return
        self.connects += 1
        with self._lock:
            subs = list(self._subs.items())
        for topic_filter, (qos, _) in subs:
            client.subscribe(topic_filter, qos=qos)
        log.info("connected to %s as %s (session present: %s)", self.broker.url, self.client_id, flags.session_present)
        self._connected.set()
        if self._io is not None:
            self._io.connected()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected.clear()
        if reason_code.value != 0:
            log.warning("disconnected from %s: %s; reconnecting", self.broker.url, reason_code)

    def _on_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        self._packets += 1
        with self._lock:
            if mid in self._qos0_unsent:
                self._qos0_unsent.discard(mid)
                return
            entry = self._pending.pop(mid, None)
            if entry is None:
                self._acked_early[mid] = not reason_code.is_failure
                return
        event, on_delivered = entry
        event.set()
        if reason_code.is_failure:
            log.warning("broker refused message %d: %s", mid, reason_code)
        elif on_delivered is not None:
            try:
                on_delivered()
            except Exception:
                log.exception("delivery callback for message %d failed", mid)  # never kill paho's thread

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        self._packets += 1
        self._deliver(msg.topic, bytes(msg.payload), bool(msg.retain))

    def _deliver(self, topic: str, payload: bytes, retained: bool) -> None:
        """A received message to the handlers of the filters its topic matches."""
        self._delivered += 1
        with self._lock:
            handlers = self._routes.get(topic)
            if handlers is None:
                handlers = [h for f, (_, h) in self._subs.items() if paho.topic_matches_sub(f, topic)]
                if len(self._routes) >= MAX_CACHED_ROUTES:  # e.g. one topic per model chunk
                    self._routes.clear()
                self._routes[topic] = handlers
        for handler in handlers:
            try:
                handler(topic, payload, retained)
            except Exception:
                # A handler bug must never kill the thread doing the I/O.
                log.exception("handler for %s failed", topic)
