"""The bounded sample of recently quarantined records an agent reports."""

from __future__ import annotations

from edge_agent.pipeline import Quarantined
from edge_agent.quarantine_log import EXCERPT_CHARS, QuarantineLog, excerpt
from shared.schemas import DeviceStatus


def test_keeps_only_the_newest_samples() -> None:
    log = QuarantineLog(size=3)
    log.add([Quarantined(f"r{i}", f"reason {i}", b"{}") for i in range(5)], at=1.0)
    log.add([Quarantined(None, "broken JSON", b"{nope")], at=2.0)
    recent = log.recent()
    assert [s.record_id for s in recent] == ["r3", "r4", None]
    assert recent[-1].reason == "broken JSON"
    assert recent[-1].excerpt == "{nope"


def test_excerpts_are_short_and_printable() -> None:
    text = excerpt(b"\x00\xff" + b"a" * 1000)
    assert len(text) == EXCERPT_CHARS
    assert text.endswith("…")
    assert text.isprintable()


def test_samples_fit_the_status_schema() -> None:
    log = QuarantineLog()
    log.add([Quarantined("x" * 300, "r" * 2000, b"z" * 5000)], at=3.0)
    status = DeviceStatus(device_id="d", fleet="f", kind="heartbeat", ts=3.0, recent_quarantine=log.recent())
    decoded = DeviceStatus.model_validate_json(status.to_bytes())
    assert decoded.recent_quarantine == log.recent()


def test_an_old_agents_status_still_parses() -> None:
    """Statuses without the new optional fields (older agents) decode with defaults."""
    old = b'{"schema_version": 1, "device_id": "d", "fleet": "f", "kind": "heartbeat", "ts": 1.0}'
    status = DeviceStatus.model_validate_json(old)
    assert status.drift is None
    assert status.recent_quarantine == ()
