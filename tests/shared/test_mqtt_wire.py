"""The bulk receive path's framing and PUBLISH decoding, checked against paho's own decoder."""

from __future__ import annotations

import random
import struct

import pytest
from paho.mqtt._packet import decode_publish
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared.mqtt import wire as mqtt_wire


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def publish(topic: str, payload: bytes, qos: int, retain: bool, mid: int, props: bytes = b"\x00") -> bytes:
    encoded = topic.encode()
    body = struct.pack("!H", len(encoded)) + encoded + (struct.pack("!H", mid) if qos else b"") + props + payload
    return packet(0x30 | (qos << 1) | int(retain), body)


def random_props(rng: random.Random) -> bytes:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if rng.random() < 0.5:
        props.MessageExpiryInterval = rng.randrange(1, 10_000)
    if rng.random() < 0.3:
        props.ContentType = "application/json"
    if rng.random() < 0.3:
        props.UserProperty = [("k", "v" * rng.randrange(0, 200))]
    return bytes(props.pack())  # type: ignore[no-untyped-call]


def decode_all(stream: bytes, cuts: list[int]) -> list[tuple[int, bytes]]:
    """Feed ``stream`` cut at ``cuts`` through a StreamBuffer; (first byte, packet) in order."""
    buffer = mqtt_wire.StreamBuffer()
    out: list[tuple[int, bytes]] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        buf = buffer.add(stream[a:b])
        if buf is None:
            continue
        found = mqtt_wire.frames(buf)
        out += [(buf[s], buf[s:e]) for s, _, e in found.spans]
        buffer.keep(buf, found)
    return out


def test_publish_decoding_agrees_with_paho_on_random_packets() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        qos = rng.choice((0, 1))
        topic = "".join(rng.choice("ab/é+x") for _ in range(rng.randrange(1, 40)))
        payload = rng.randbytes(rng.choice((0, 1, 10, 127, 128, 300, 20_000)))
        retain = rng.random() < 0.5
        raw = publish(topic, payload, qos, retain, rng.randrange(1, 65536), random_props(rng))
        (start, body, end), *_ = mqtt_wire.frames(raw).spans
        ours = mqtt_wire.plain_publish(raw, start, body, end)
        theirs = decode_publish(raw[0], raw[body:], MQTTProtocolVersion.MQTTv5)
        assert ours is not None
        assert ours.topic == theirs.topic.decode()
        assert ours.payload == theirs.payload
        assert ours.retain == theirs.retain
        assert ours.mid == (struct.pack("!H", theirs.mid) if qos else b"")


def test_a_stream_cut_anywhere_yields_the_same_packets_in_order() -> None:
    rng = random.Random(3)
    packets = [publish("t/a", rng.randbytes(rng.choice((0, 5, 200, 70_000))), 1, False, i + 1) for i in range(40)] + [
        packet(0x20, b"\x00\x00\x00"),
        packet(0xD0, b""),
        packet(0x90, b"\x00\x01\x00\x01"),
    ]
    rng.shuffle(packets)
    stream = b"".join(packets)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randrange(1, 200)))
        assert [p for _, p in decode_all(stream, cuts)] == packets
    assert [p for _, p in decode_all(stream, list(range(1, len(stream), 1)))[:5]] == packets[:5]  # byte by byte


def test_what_paho_must_handle_is_left_to_it() -> None:
    qos2 = publish("t", b"x", 2, False, 9)
    connack = packet(0x20, b"\x00\x00\x00")
    empty_topic = publish("", b"x", 1, False, 9)  # only a topic alias could name it
    zero_mid = publish("t", b"x", 1, False, 0)
    bad_utf8 = packet(0x32, b"\x00\x02\xff\xfe\x00\x01\x00x")
    props_overrun = packet(0x32, b"\x00\x01t\x00\x01\x7fx")
    short = packet(0x32, b"\x00")
    for raw in (qos2, connack, empty_topic, zero_mid, bad_utf8, props_overrun, short):
        (start, body, end), *_ = mqtt_wire.frames(raw).spans
        assert mqtt_wire.plain_publish(raw, start, body, end) is None, raw


def test_an_incomplete_packet_says_how_many_bytes_it_needs() -> None:
    whole = publish("t", b"y" * 1000, 1, False, 1)
    assert mqtt_wire.frames(whole[:1]).need == 2
    assert mqtt_wire.frames(whole[:2]).need == 3  # 1000 needs a second length byte
    found = mqtt_wire.frames(whole[:500])
    assert (found.spans, found.used, found.need) == ([], 0, len(whole))
    found = mqtt_wire.frames(whole + whole[:10])
    assert (len(found.spans), found.used, found.need) == (1, len(whole), len(whole))


def test_a_remaining_length_longer_than_four_bytes_is_refused() -> None:
    with pytest.raises(mqtt_wire.WireError, match="remaining length"):
        mqtt_wire.frames(b"\x30\xff\xff\xff\xff\x01")


def test_puback_is_the_short_mqtt5_form() -> None:
    assert mqtt_wire.puback(b"\x01\x02") == b"\x40\x02\x01\x02"
