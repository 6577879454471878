"""The loop mode of ``MqttClient`` (the agent's): its socket on an asyncio loop, read in bulk.

The loop watches the socket and runs paho's ``loop_write``/``loop_misc`` itself, so handlers
run on the loop thread and no message crosses threads. A readable socket is read in one
``recv`` (``RECV_BYTES``); whole packets are found in it (``shared.mqtt.wire``), plain QoS 0/1
PUBLISH packets are decoded and delivered here, and every other packet is handed to paho
byte for byte (``PahoClient.read_fed``), so paho's session state stays the authority. Then
``after_read`` runs, and only then are the PUBACKs written: a QoS 1 message is acknowledged
after the agent committed it. If ``after_read`` raises, nothing is acknowledged and the client
leaves and comes back (``LoopIo._refuse``) so that the broker delivers the messages again.

The bulk path leans on paho's internals (``_sock_recv``, ``_packet_queue``,
``_last_bytes_received``), so it runs only on the paho release it was written against
(``FAST_READ_PAHO``); any other reads through paho's ``loop_read`` as before, which queues the
PUBACKs while reading (with socket callbacks registered paho never writes from inside
``loop_read``, which still holds them back until ``after_read`` is done). On that path an
``after_read`` that raises is only logged: its PUBACKs are already queued.
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
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt import __version__ as paho_version

from shared.mqtt import wire

if TYPE_CHECKING:
    from shared.mqtt.client import MqttClient

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 30.0
# How often the loop mode runs paho's housekeeping (keepalive pings, ping timeouts, reconnects).
MISC_PERIOD_S = 1.0
# loop_read calls one readable event may make on paho's read path: each reads one packet.
MAX_READS_PER_EVENT = 1000
FAST_READ_PAHO = "2.2.0"
# Bytes one readable event takes from the socket (a TLS socket gives at most one record).
RECV_BYTES = 256 * 1024


class PahoClient(paho.Client):
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


class LoopIo:
    """The loop mode of one client: socket watchers on the loop, the after-read hook, and
    the task that runs paho's housekeeping and reconnects (paho's thread does both otherwise)."""

    def __init__(
        self, owner: MqttClient, loop: asyncio.AbstractEventLoop, after_read: Callable[[], None] | None
    ) -> None:
        self.owner = owner
        self.client: PahoClient = owner._client
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
        self.inbuf = wire.StreamBuffer()
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
            found = wire.frames(buf)
        except wire.WireError as exc:
            log.warning("%s: broken packet stream from %s (%s)", self.owner.client_id, self.owner.broker.url, exc)
            self.inbuf.clear()
            client.read_fed(buf)  # paho refuses it the way it refuses any protocol error
            return []
        acks: list[bytes] = []
        deliver = self.owner._deliver
        for start, body, end in found.spans:
            message = wire.plain_publish(buf, start, body, end)
            if message is None:
                if not client.read_fed(buf[start:end]):
                    self.inbuf.clear()
                    return []
                continue
            deliver(message.topic, message.payload, message.retain)
            if message.mid:
                acks.append(wire.puback(message.mid))
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
