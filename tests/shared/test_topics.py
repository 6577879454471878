"""The command and acknowledgement topics of fleet actions."""

from __future__ import annotations

import pytest

from shared import topics
from shared.errors import TopicError


def test_ack_and_fleet_command_topics() -> None:
    assert topics.acks("f1", "d1") == "fedforge/v1/f1/devices/d1/acks"
    assert topics.fleet_commands("f1") == "fedforge/v1/f1/commands"
    assert topics.all_acks_filter("f1") == "fedforge/v1/f1/devices/+/acks"
    parsed = topics.parse(topics.acks("f1", "d1"))
    assert (parsed.kind, parsed.device, parsed.channel) == ("device", "d1", "acks")
    with pytest.raises(TopicError):
        topics.fleet_commands("bad/fleet")


@pytest.mark.parametrize("index", ["²", "٣", "+1", "1.0", ""])
def test_a_chunk_index_must_be_ascii_digits(index: str) -> None:
    # "²" passes str.isdigit but int() refuses it; "٣" int() would read as 3.
    with pytest.raises(TopicError):
        topics.parse(f"fedforge/v1/f1/models/fraud/3/chunk/{index}")
    assert topics.parse("fedforge/v1/f1/models/fraud/3/chunk/12").index == 12
