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
