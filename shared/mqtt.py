"""The one paho-mqtt adapter of the project (agent, server, ServerApp and replay use it).

paho runs its network loop on its own thread; handlers registered here are called on that
thread and must not block: the agent hands messages to its asyncio loop, the server to a
queue. Facts this relies on (measured): with MQTT 5, a session survives a drop only with
``clean_start=False`` plus a session expiry; a QoS 1 publish while offline is queued by paho
in memory and sent after reconnect, so delivery is tracked with ``on_publish``.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict
from urllib.parse import urlparse

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from shared.errors import ConfigError, FedforgeError

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, bool], None]
"""(topic, payload, retained) -> None; called on paho's network thread."""

SESSION_EXPIRY_S = 7 * 24 * 3600
MAX_CACHED_ROUTES = 4096


class MqttError(FedforgeError):
    """The broker cannot be reached or refused an operation."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parsed = urlparse(url if "://" in url else f"mqtt://{url}")
        if parsed.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ConfigError(f"unsupported broker URL scheme {parsed.scheme!r} in {url!r}")
        tls = parsed.scheme in ("mqtts", "ssl")
        if not parsed.hostname:
            raise ConfigError(f"broker URL {url!r} has no host")
        return cls(parsed.hostname, parsed.port or (8883 if tls else 1883), tls)

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


class TlsKwargs(TypedDict, total=False):
    """The TLS keyword arguments of ``MqttClient``, as built from settings by ``tls_kwargs``."""

    ca_certs: str | None
    certfile: str | None
    keyfile: str | None


def tls_kwargs(broker_url: str, ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> TlsKwargs:
    """Check the TLS files of one process against its broker URL; ``ConfigError`` says what is wrong.

    The files are loaded here, at start, so a missing, unreadable or mismatched file is a
    configuration error with the setting's name in it, not an ``ssl`` traceback from paho's
    ``tls_set`` (or a connect that just keeps failing). Files with a plain ``mqtt://`` URL
    are refused too: an operator who configured certificates expects them to be used.
    """
    tls = BrokerAddress.parse(broker_url).tls
    if (cert_file is None) != (key_file is None):
        raise ConfigError("mqtt_cert_file and mqtt_key_file must be set together (the client certificate and its key)")
    if not tls:
        if ca_file is not None or cert_file is not None:
            raise ConfigError(
                f"mqtt_ca_file/mqtt_cert_file/mqtt_key_file need an mqtts:// broker_url, not {broker_url!r}"
            )
        return TlsKwargs()
    if ca_file is None:
        raise ConfigError(f"broker_url {broker_url!r} uses TLS: set mqtt_ca_file to the CA that signed the broker")
    for name, path in (("mqtt_ca_file", ca_file), ("mqtt_cert_file", cert_file), ("mqtt_key_file", key_file)):
        if path is not None:
            try:
                path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"{name} {path} cannot be read: {exc.strerror or exc}") from None
    try:
        context = ssl.create_default_context(cafile=str(ca_file))
        if cert_file is not None and key_file is not None:
            context.load_cert_chain(str(cert_file), str(key_file))
    except ssl.SSLError as exc:
        raise ConfigError(f"TLS files are not a usable CA / certificate / key: {exc}") from None
    return TlsKwargs(
        ca_certs=str(ca_file),
        certfile=None if cert_file is None else str(cert_file),
        keyfile=None if key_file is None else str(key_file),
    )


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


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
        self._client = paho.Client(
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
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S if self._persistent else 0
        if self._receive_maximum is not None:
            props.ReceiveMaximum = self._receive_maximum
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._client.connect(
                    self.broker.host,
                    self.broker.port,
                    keepalive=self._keepalive,
                    clean_start=not self._persistent,
                    properties=props,
                )
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise MqttError(f"cannot connect to {self.broker.url}: {exc}") from None
                time.sleep(0.2)
        self._client.loop_start()
        if not self._connected.wait(max(0.1, deadline - time.monotonic())):
            self._client.loop_stop()
            raise MqttError(f"broker {self.broker.url} did not accept the connection in {timeout} s")

    def stop(self) -> None:
        """Clean disconnect (the broker does not send the will)."""
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
            self._connected.clear()

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
        message with a success reason code: on paho's network thread, or on the caller's
        before ``publish`` returns when the ack won the race; it must not block. It
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
        with self._lock:
            entry = self._pending.get(mid)
        return True if entry is None else entry[0].wait(timeout)

    def publish_and_wait(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, timeout: float = 10.0
    ) -> None:
        mid = self.publish(topic, payload, qos=qos, retain=retain)
        if qos > 0 and not self.wait_published(mid, timeout):
            raise MqttError(f"publish to {topic} not acknowledged in {timeout} s")

    # -- paho callbacks (network thread) ----------------------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
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
        topic = msg.topic
        with self._lock:
            handlers = self._routes.get(topic)
            if handlers is None:
                handlers = [h for f, (_, h) in self._subs.items() if paho.topic_matches_sub(f, topic)]
                if len(self._routes) >= MAX_CACHED_ROUTES:  # e.g. one topic per model chunk
                    self._routes.clear()
                self._routes[topic] = handlers
        for handler in handlers:
            try:
                handler(topic, bytes(msg.payload), bool(msg.retain))
            except Exception:
                # A handler bug must never kill paho's network thread.
                log.exception("handler for %s failed", msg.topic)
