"""``fedforge agent``: exit codes, and a clean SIGTERM shutdown that says goodbye."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_agent.cli import run_command
from edge_agent.config import load_agent_settings
from shared.errors import ConfigError
from tests.edge_agent.agent_harness import Observer, wait_for
from tests.edge_agent.agent_testlib import closed_port_url
from tests.edge_agent.conftest import Keys


def write_config(path: Path, data_dir: Path, keys: Keys, broker_url: str, fleet: str = "default") -> Path:
    path.write_text(
        f'device_id = "dev1"\nfleet = "{fleet}"\nbroker_url = "{broker_url}"\n'
        f'data_dir = "{data_dir}"\ntrusted_keys = ["{keys.public_path}"]\nheartbeat_s = 1.0\n'
    )
    return path


def test_settings_from_toml_and_env(tmp_path: Path, operator_keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path / "agent.toml", tmp_path / "d", operator_keys, "mqtt://127.0.0.1:1")
    monkeypatch.setenv("FEDFORGE_MAX_BATCH", "32")
    settings = load_agent_settings(config)
    assert settings.device_id == "dev1"
    assert settings.max_batch == 32
    assert settings.trusted_keys == [operator_keys.public_path]
    assert settings.superlink_address is None
    # Idle agents run no SuperNode: it starts when a run's signed federation call arrives.
    assert settings.federation_mode == "on_demand"
    with pytest.raises(ConfigError):
        load_agent_settings(tmp_path / "missing.toml")


def test_config_errors_exit_2(tmp_path: Path, operator_keys: Keys) -> None:
    assert run_command("agent", ["--config", str(tmp_path / "missing.toml")]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('device_id = "dev1"\nmax_batch = "lots"\n')
    assert run_command("agent", ["--config", str(bad)]) == 2
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("not a key")
    config = write_config(tmp_path / "agent.toml", tmp_path / "d", Keys(operator_keys.private, bad_key), "mqtt://x:1")
    assert run_command("agent", ["--config", str(config)]) == 2
    assert run_command("agent", []) == 2


@pytest.mark.integration
def test_unreachable_broker_exits_1(tmp_path: Path, operator_keys: Keys) -> None:
    config = write_config(tmp_path / "agent.toml", tmp_path / "d", operator_keys, closed_port_url())
    assert run_command("agent", ["--config", str(config)]) == 1


@pytest.mark.integration
def test_sigterm_stops_cleanly_with_builtin_spec(tmp_path: Path, operator_keys: Keys, mosquitto: Any) -> None:
    fleet = "clifleet"
    config = write_config(tmp_path / "agent.toml", tmp_path / "d", operator_keys, mosquitto.url, fleet)
    observer = Observer(mosquitto.url, fleet, "dev1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "agent", "--config", str(config)],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        start_new_session=True,
    )
    try:
        wait_for(lambda: (s := observer.latest_status()) is not None and s.kind == "birth", what="birth")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        wait_for(lambda: (s := observer.latest_status()) is not None and s.kind == "offline", what="offline status")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        observer.close()


@pytest.mark.integration
def test_a_signed_config_restarts_the_agent_in_place_with_its_settings(
    tmp_path: Path, operator_keys: Keys, mosquitto: Any
) -> None:
    import json
    import uuid

    from shared import topics
    from shared.commands import config_command
    from shared.mqtt import BrokerAddress, MqttClient
    from shared.schemas import CommandAck

    fleet = f"cfg{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path / "agent.toml", tmp_path / "d", operator_keys, mosquitto.url, fleet)
    observer = Observer(mosquitto.url, fleet, "dev1")
    acks: list[CommandAck] = []
    watcher = MqttClient(BrokerAddress.parse(mosquitto.url), f"w-{uuid.uuid4().hex[:6]}", persistent=False)
    watcher.subscribe(topics.acks(fleet, "dev1"), lambda t, p, r: acks.append(CommandAck.model_validate_json(p)))
    watcher.start()
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "agent", "--config", str(config)],
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    command = config_command(
        operator_keys.private,
        command_id="config-1",
        fleet=fleet,
        task="fraud",
        device_id="dev1",
        settings={"heartbeat_s": 0.3, "max_batch": 128},
        issued_by="ops",
        ttl_s=600,
    )
    try:
        wait_for(lambda: (s := observer.latest_status()) is not None and s.kind == "birth", what="birth")
        watcher.publish_and_wait(topics.device_config(fleet, "dev1"), command.to_bytes(), retain=True)
        # Accepted, then the agent restarts in place and the redelivered config is only acknowledged.
        wait_for(lambda: [a.reason for a in acks][-1:] == ["already applied"], 60, f"the second ack ({acks})")
        assert acks[0].accepted
        assert acks[0].reason == "applied heartbeat_s=0.3, max_batch=128: restarting"
        text = log.read_text()
        assert text.count("restarting with the operator's remote settings") == 1
        assert "remote settings in effect (command config-1): heartbeat_s=0.3, max_batch=128" in text
        assert proc.poll() is None  # the same process: execv, not an exit
        saved = json.loads((tmp_path / "d" / "remote-settings.json").read_text())
        assert saved["settings"] == {"heartbeat_s": 0.3, "max_batch": 128}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        watcher.publish_and_wait(topics.device_config(fleet, "dev1"), b"", retain=True)
        watcher.stop()
        observer.close()
