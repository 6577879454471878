"""A device's remote settings as its page shows them: what is in effect, and each config's answer."""

from __future__ import annotations

from server.api.rollouts import config_state, device_config_view
from server.registry.records import AckRecord, CommandRecord
from shared.commands import REMOTE_SETTINGS


def config(cid: str, at: float, settings: dict[str, object], device: str = "d1") -> CommandRecord:
    return CommandRecord(
        cid, "f", "fraud", "config", None, at, at + 60, "ops", {"device_id": device, "settings": settings}
    )


def ack(cid: str, accepted: bool, reason: str, at: float, device: str = "d1") -> AckRecord:
    return AckRecord(cid, device, accepted, reason, 1, at)


def test_no_config_sent_leaves_the_local_settings_in_effect() -> None:
    view = device_config_view("d1", [], [], now=10.0)
    assert view["in_effect"] is None
    assert view["history"] == []
    assert set(view["settable"]) == REMOTE_SETTINGS


def test_a_refused_or_unanswered_config_changes_nothing_on_the_device() -> None:
    configs = [  # newest first
        config("c4", 40.0, {"max_batch": 64}),
        config("c3", 30.0, {"heartbeat_s": -1}),
        config("c2", 20.0, {"heartbeat_s": 2.0}),
        config("c1", 10.0, {"heartbeat_s": 5.0}),
    ]
    acks = [
        ack("c3", False, "invalid settings: heartbeat_s must be > 0", 31.0),
        ack("c2", True, "already applied", 25.0),  # the latest answer (after the restart) is kept
        ack("c1", True, "applied heartbeat_s=5.0: restarting", 11.0),
        ack("c4", True, "applied max_batch=64: restarting", 41.0, device="d2"),  # another device's answer
    ]
    view = device_config_view("d1", configs, acks, now=50.0)
    assert view["in_effect"]["command_id"] == "c2"
    assert view["in_effect"]["settings"] == {"heartbeat_s": 2.0}
    assert view["in_effect"]["answered_at"] == 25.0
    states = [(c["command_id"], c["state"], c["reason"]) for c in view["history"]]
    assert states == [
        ("c4", "pending", None),
        ("c3", "refused", "invalid settings: heartbeat_s must be > 0"),
        ("c2", "applied", "already applied"),
        ("c1", "applied", "applied heartbeat_s=5.0: restarting"),
    ]


def test_an_unanswered_config_expires_with_its_command() -> None:
    sent = config("c1", 10.0, {"heartbeat_s": 2.0})  # expires at 70
    assert config_state(sent, None, now=69.0) == "pending"
    assert config_state(sent, None, now=71.0) == "expired"
    assert config_state(sent, ack("c1", True, "applied", 80.0), now=90.0) == "applied"


def test_the_one_in_effect_is_found_beyond_the_history_shown() -> None:
    configs = [config(f"bad{i}", 100.0 - i, {"heartbeat_s": -1}) for i in range(5)]
    configs.append(config("good", 1.0, {"heartbeat_s": 3.0}))
    acks = [ack(f"bad{i}", False, "invalid", 100.0) for i in range(5)] + [ack("good", True, "applied", 2.0)]
    view = device_config_view("d1", configs, acks, history=3, now=200.0)
    assert [c["command_id"] for c in view["history"]] == ["bad0", "bad1", "bad2"]
    assert view["in_effect"]["command_id"] == "good"


def test_returning_to_the_local_settings_is_itself_in_effect() -> None:
    configs = [config("c2", 20.0, {}), config("c1", 10.0, {"heartbeat_s": 2.0})]
    acks = [ack("c2", True, "applied the local settings: restarting", 21.0), ack("c1", True, "applied", 11.0)]
    view = device_config_view("d1", configs, acks, now=30.0)
    assert view["in_effect"]["settings"] == {}
