"""The one paho-mqtt adapter of the project (agent, server, ServerApp and replay use it).

Two ways to run the network I/O. ``start()``: paho's own thread (``loop_start``); handlers
are called on that thread and must not block (the server puts messages on a queue).
``start_on_loop()``: on the caller's asyncio loop, the way the agent runs; the loop watches
the socket and calls paho's ``loop_read``/``loop_write``/``loop_misc`` itself, so handlers run
on the loop thread and no message crosses threads. There each readable event is drained
into the handlers, then ``after_read`` runs, and only then are the PUBACKs paho queued while
reading written out: a QoS 1 message is acknowledged after ``after_read`` has dealt with it
(the agent commits it to its store there). One thread holds the GIL instead of two taking
turns: handing each message from paho's thread to the loop cost about as much CPU as paho's
own work on it (~50 µs a message; benchmarks/bench_ingest.py, figure 3a).

Facts this relies on (measured): with MQTT 5, a session survives a drop only with
``clean_start=False`` plus a session expiry; a QoS 1 publish while offline is queued by paho
in memory and sent after reconnect, so delivery is tracked with ``on_publish``. paho 2.2's
``loop_read`` ignores ``max_packets`` (it reads one packet, or as many as it has QoS messages
in flight), so draining a socket means calling it until a call delivers nothing; with
socket callbacks registered paho never writes from inside ``loop_read`` (``_packet_queue``
only asks for a writer), which is what holds the PUBACKs back until ``after_read`` is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import urlparse

import paho.mqtt.client as paho
from paho.mqtt import __version__ as paho_version
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from shared import mqtt_wire
from shared.errors import ConfigError, FedforgeError

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, bool], None]
"""(topic, payload, retained) -> None; called on paho's network thread, or on the asyncio
loop's thread for a client started with ``start_on_loop``."""

SESSION_EXPIRY_S = 7 * 24 * 3600
MAX_CACHED_ROUTES = 4096
RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 30.0
# How often the loop mode runs paho's housekeeping (keepalive pings, ping timeouts, reconnects).
MISC_PERIOD_S = 1.0
# loop_read calls one readable event may make before the loop gets a turn: each reads a packet
# (a few while paho has QoS publishes of ours in flight). The receive window should bound QoS 1
# traffic long before this, but Mosquitto 2.0.11 was seen to exceed it.
MAX_READS_PER_EVENT = 1000
# The loop mode's own receive path (shared.mqtt_wire) leans on paho's internals (the
# ``_sock_recv`` it reads through, ``_packet_queue``, ``_last_bytes_received``): it runs only on
# the paho release it was written against, any other runs paho's reads unchanged.
FAST_READ_PAHO = "2.2.0"
# Bytes one readable event takes from the socket (a TLS socket gives at most one record).
RECV_BYTES = 256 * 1024


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


class _PahoClient(paho.Client):
    """paho's client, able to read packets the loop mode already took from the socket."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fed: bytes | None = None
        self._fed_pos = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        fed = self._fed
        if fed is None:
            return super()._sock_recv(bufsize)
        pos = self._fed_pos
        if pos >= len(fed):
            raise BlockingIOError  # paho's "nothing more for now"
        chunk = fed[pos : pos + bufsize]
        self._fed_pos = pos + len(chunk)
        return chunk

    def read_fed(self, packet: bytes) -> bool:
        """Let paho read and handle ``packet`` (whole packets) as if from the socket; False
        when it dropped the connection over them."""
        self._fed, self._fed_pos = packet, 0
        try:
            while self._fed_pos < len(packet):
                if self.loop_read() != paho.MQTT_ERR_SUCCESS or self.socket() is None:
                    return False
        finally:
            self._fed = None
        return True


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
        self._io: _LoopIo | None = None
        self._client = _PahoClient(
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
        none is written and the client reconnects (bulk read path: see ``_LoopIo._refuse``),
        so the broker delivers them again. Reconnects
        (backoff 1 to 30 s) and keepalive run in a task on the same loop; the blocking parts of a
        connect (TCP, TLS handshake) run in the loop's default executor.
        """
        if self._io is not None:
            raise MqttError("the client is already running on a loop")
        io = _LoopIo(self, asyncio.get_running_loop(), after_read)
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


class _LoopIo:
    """The loop mode of one client: socket watchers on the loop, the after-read hook, and
    the task that runs paho's housekeeping and reconnects (paho's thread does both otherwise)."""

    def __init__(
        self, owner: MqttClient, loop: asyncio.AbstractEventLoop, after_read: Callable[[], None] | None
    ) -> None:
        self.owner = owner
        self.client: _PahoClient = owner._client
        self.loop = loop
        self.thread = threading.get_ident()
        self.after_read = after_read
        self.up = asyncio.Event()
        self.closed = asyncio.Event()  # paho closed its latest socket (set on the loop)
        self.supervisor: asyncio.Task[None] | None = None
        self.connecting: asyncio.Future[None] | None = None
        self.delay = RECONNECT_MIN_S
        self.fast = paho_version == FAST_READ_PAHO
        if not self.fast:
            log.warning("paho-mqtt %s, not %s: the loop mode reads through paho", paho_version, FAST_READ_PAHO)
        self.inbuf = mqtt_wire.StreamBuffer()
        self.hold = 0.0  # extra wait before reconnecting after a refused read (see _refuse)
        self.client.on_socket_open = self._on_socket_open
        self.client.on_socket_close = self._on_socket_close
        self.client.on_socket_register_write = self._on_register_write
        self.client.on_socket_unregister_write = self._on_unregister_write

    def close(self) -> None:
        """Forget the socket and hand paho back its defaults (a later ``start()`` uses its thread)."""
        sock = self.client.socket()
        if sock is not None:
            log.warning("%s: no clean disconnect from %s", self.owner.client_id, self.owner.broker.url)
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)
        self.client.on_socket_open = None
        self.client.on_socket_close = None
        self.client.on_socket_register_write = None
        self.client.on_socket_unregister_write = None

    def connected(self) -> None:
        self.delay = RECONNECT_MIN_S
        self.up.set()

    # -- paho's socket callbacks: on the loop's thread, except those of a connect (executor)
    #    and of a publish from another thread, which are passed to the loop.

    def _on_loop(self, fn: Callable[[], None]) -> None:
        if threading.get_ident() == self.thread:
            fn()
        elif not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to watch
                self.loop.call_soon_threadsafe(fn)

    def _on_socket_open(self, client: paho.Client, userdata: object, sock: paho.SocketLike) -> None:
        def watch() -> None:
            if client.socket() is sock:
                self.closed.clear()
                self.inbuf.clear()
                self.loop.add_reader(sock, self.readable)

        self._on_loop(watch)

    def _on_socket_close(self, client: paho.Client, userdata: object, sock: paho.SocketLike) -> None:
        def forget() -> None:
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)
            self.closed.set()

        self._on_loop(forget)

    def _on_register_write(self, client: paho.Client, userdata: object, sock: paho.SocketLike) -> None:
        def watch() -> None:
            if client.socket() is sock:
                self.loop.add_writer(sock, functools.partial(self.writable, sock))

        self._on_loop(watch)

    def _on_unregister_write(self, client: paho.Client, userdata: object, sock: paho.SocketLike) -> None:
        def forget() -> None:
            self.loop.remove_writer(sock)

        self._on_loop(forget)

    # -- the loop's callbacks -------------------------------------------------------------

    def readable(self) -> None:
        """Drain the socket into the handlers, run ``after_read``, then write the PUBACKs."""
        client, owner = self.client, self.owner
        delivered = owner._delivered
        acks = self._read_fast() if self.fast else self._read_paho()
        if owner._delivered != delivered and self.after_read is not None:
            try:
                self.after_read()
            except Exception as exc:
                if self.fast:
                    self._refuse(exc)
                    return
                log.exception("after-read hook of %s failed", owner.client_id)
            else:
                self.hold = 0.0
        sock = client.socket()
        if sock is None:
            return  # the connection dropped: the broker re-sends what was not acknowledged
        if acks:
            client._packet_queue(paho.PUBACK, b"".join(acks), 0, 0)
        if client.want_write():
            client.loop_write()  # now rather than on the next turn of the loop
        pending = getattr(sock, "pending", None)
        if pending is not None and pending() > 0:
            self.loop.call_soon(self.readable)  # TLS: bytes already decrypted leave the fd quiet

    def _refuse(self, exc: Exception) -> None:
        """``after_read`` failed: acknowledge none of the read's messages and leave (a normal
        DISCONNECT keeps the session), so the broker delivers them again after the reconnect,
        which waits longer (1 s doubling to 30 s) while reads keep failing."""
        self.hold = min(max(2 * self.hold, RECONNECT_MIN_S), RECONNECT_MAX_S)
        log.warning(
            "%s: the messages of a read were not handled (%s); leaving them unacknowledged with the broker "
            "and reconnecting in %.0f s",
            self.owner.client_id,
            exc,
            self.hold,
        )
        self.inbuf.clear()
        if self.client.socket() is not None:
            self.client.disconnect()
            self.client.loop_write()

    def _read_paho(self) -> list[bytes]:
        """paho reads packet by packet (and queues the PUBACKs itself)."""
        client, owner = self.client, self.owner
        for _ in range(MAX_READS_PER_EVENT):
            before = owner._packets
            if client.loop_read() != paho.MQTT_ERR_SUCCESS or owner._packets == before:
                break
        return []

    def _read_fast(self) -> list[bytes]:
        """One ``recv``; plain PUBLISH packets delivered here, the rest handed to paho in order.
        Returns the PUBACKs to send once ``after_read`` is done."""
        client = self.client
        sock = client.socket()
        if sock is None:
            return []
        try:
            data = sock.recv(RECV_BYTES)
        except (BlockingIOError, ssl.SSLWantReadError):
            return []
        except OSError:  # a reset, a TLS want-write...: paho's own read deals with it as ever
            client.loop_read()
            return []
        if not data:
            client.loop_read()  # end of stream: paho reads it too and handles the loss
            return []
        client._last_bytes_received = time.monotonic()  # paho's keepalive clock (its time_func)
        buf = self.inbuf.add(data)
        if buf is None:
            return []
        try:
            found = mqtt_wire.frames(buf)
        except mqtt_wire.WireError as exc:
            log.warning("%s: broken packet stream from %s (%s)", self.owner.client_id, self.owner.broker.url, exc)
            self.inbuf.clear()
            client.read_fed(buf)  # paho refuses it the way it refuses any protocol error
            return []
        acks: list[bytes] = []
        deliver = self.owner._deliver
        for start, body, end in found.spans:
            message = mqtt_wire.plain_publish(buf, start, body, end)
            if message is None:
                if not client.read_fed(buf[start:end]):
                    self.inbuf.clear()
                    return []
                continue
            deliver(message.topic, message.payload, message.retain)
            if message.mid:
                acks.append(mqtt_wire.puback(message.mid))
        self.inbuf.keep(buf, found)
        return acks

    def writable(self, sock: paho.SocketLike) -> None:
        self.client.loop_write()
        if not self.client.want_write():
            # paho unregisters only what it believes registered; a writer left behind would spin.
            self.loop.remove_writer(sock)

    async def supervise(self) -> None:
        """Keepalive once a second; after a drop, reconnect with a doubling delay (1 to 30 s)."""
        client = self.client
        while True:
            if client.socket() is not None:
                await asyncio.sleep(MISC_PERIOD_S)
                client.loop_misc()
                continue
            await asyncio.sleep(max(self.delay, self.hold))
            self.delay = min(self.delay * 2, RECONNECT_MAX_S)
            self.connecting = self.loop.run_in_executor(None, self._reconnect)
            try:
                await self.connecting
            finally:
                self.connecting = None

    def _reconnect(self) -> None:
        try:
            self.client.reconnect()
        except Exception as exc:  # refused, unreachable, TLS: all mean "try again later"
            log.warning("cannot reconnect to %s: %s", self.owner.broker.url, exc)
