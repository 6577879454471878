"""MQTT packets read in bulk: the framing and PUBLISH decoding of the agent's receive path.

paho reads a packet with three or four ``recv`` calls (one byte of header, each byte of the
remaining length, then the rest) and builds a ``Properties`` object, an ``MQTTMessage`` and a
log line for every PUBLISH: about 55 µs of CPU a message here, as much as everything else
the agent does with ten records. The agent's loop instead reads whatever the socket holds in
one call, finds the whole packets in it (``frames``), and decodes the plain PUBLISH packets
itself (``plain_publish``): a few µs a message (benchmarks/bench_ingest.py, figure 3).
Everything else (CONNACK, SUBACK, PUBACK of our own publishes, PINGRESP, DISCONNECT, QoS 2,
anything unusual) is handed to paho byte for byte, so its state machine stays the authority
(``shared.mqtt.loop`` does the handing).

Pure functions over bytes: no socket, no paho; unit tests check them against paho's encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

PUBLISH = 0x30
# A remaining length takes at most 4 bytes (MQTT 5, 2.1.4); a fifth means a broken stream.
MAX_LENGTH_BYTES = 4


class WireError(Exception):
    """The bytes are not an MQTT packet stream (a remaining length longer than 4 bytes)."""


@dataclass(frozen=True, slots=True)
class Frames:
    """The whole packets at the start of a buffer, as ``(start, body, end)`` offsets (``body``:
    where the variable header begins), and what the rest needs."""

    spans: list[tuple[int, int, int]]
    used: int  # bytes taken by the whole packets; buf[used:] begins the next packet
    need: int  # buffer length (counted from ``used``) at which the next packet may be whole


def frames(buf: bytes) -> Frames:
    """Split ``buf`` into whole packets; raises ``WireError`` on an impossible length."""
    spans: list[tuple[int, int, int]] = []
    pos, size = 0, len(buf)
    while True:
        if size - pos < 2:
            return Frames(spans, pos, 2)
        length = 0
        mult = 1
        i = pos + 1
        while True:
            if i >= size:
                return Frames(spans, pos, i - pos + 1)  # one more length byte at least
            byte = buf[i]
            length += (byte & 0x7F) * mult
            i += 1
            if not byte & 0x80:
                break
            if i - pos - 1 >= MAX_LENGTH_BYTES:
                raise WireError(f"remaining length longer than {MAX_LENGTH_BYTES} bytes at offset {pos}")
            mult *= 128
        end = i + length
        if end > size:
            return Frames(spans, pos, end - pos)
        spans.append((pos, i, end))
        pos = end


@dataclass(frozen=True, slots=True)
class Publish:
    """A QoS 0 or 1 PUBLISH: ``mid`` is the 2-byte packet identifier as sent (QoS 1) or empty."""

    topic: str
    payload: bytes
    retain: bool
    mid: bytes


def plain_publish(buf: bytes, start: int, body: int, end: int) -> Publish | None:
    """The PUBLISH at ``buf[start:end]`` when it is QoS 0 or 1 and well formed; None for any
    other packet, which the caller hands to paho to handle (or to refuse) as it always has.

    Properties are skipped: the client announces no topic alias maximum, so the broker may
    not send an alias, and nothing the agent does reads a PUBLISH property."""
    first = buf[start]
    if first & 0xF0 != PUBLISH:
        return None
    qos = (first >> 1) & 0x03
    if qos > 1 or end - body < 3:
        return None
    tlen = (buf[body] << 8) | buf[body + 1]
    i = body + 2 + tlen
    mid = b""
    if qos:
        mid = buf[i : i + 2]
        i += 2
    # properties length (a variable byte integer)
    plen = 0
    mult = 1
    for _ in range(MAX_LENGTH_BYTES):
        if i >= end:
            return None
        byte = buf[i]
        i += 1
        plen += (byte & 0x7F) * mult
        if not byte & 0x80:
            break
        mult *= 128
    else:
        return None
    i += plen
    if i > end or len(mid) != (2 if qos else 0) or mid == b"\x00\x00":
        return None
    try:
        topic = buf[body + 2 : body + 2 + tlen].decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not topic:  # an alias the broker should not have sent: paho's business
        return None
    return Publish(topic, buf[i:end], bool(first & 0x01), mid)


def puback(mid: bytes) -> bytes:
    """PUBACK with reason Success: MQTT 5 lets the reason code and properties be omitted."""
    return b"\x40\x02" + mid


class StreamBuffer:
    """Bytes read from the socket, joined only once they may hold a whole packet: a large
    packet arriving in many reads (a model chunk over TLS records) is copied once, not once
    per read."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._have = 0
        self._need = 2

    def add(self, data: bytes) -> bytes | None:
        """The buffered bytes with ``data`` when they may hold a whole packet, else None."""
        self._parts.append(data)
        self._have += len(data)
        if self._have < self._need:
            return None
        buf = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts.clear()
        self._have = 0
        return buf

    def keep(self, buf: bytes, found: Frames) -> None:
        """Hold what ``found`` left of ``buf`` (the start of the next packet) for the next read."""
        if found.used < len(buf):
            rest = buf[found.used :]
            self._parts.append(rest)
            self._have = len(rest)
        self._need = found.need

    def clear(self) -> None:
        """Forget everything (a new connection starts a new stream)."""
        self._parts.clear()
        self._have = 0
        self._need = 2
