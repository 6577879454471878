"""Mutual TLS with the production broker setup: deploy/pki/make-certs.sh certificates, a
Mosquitto configured from deploy/mosquitto/mosquitto.conf, and deploy/mosquitto/fedforge.acl.

The ACL keys on the certificate CN (use_identity_as_username), so these tests are what
shows that a device can reach its own topics and nobody else's.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.config import AgentSettings
from shared import topics
from shared.errors import ConfigError
from shared.mqtt import BrokerAddress, MqttClient, MqttError, tls_kwargs
from shared.net import free_port, wait_port
from shared.schemas import DeviceStatus
from simulations.mosquitto import stop_process_group
from tests.edge_agent.agent_harness import AgentThread, wait_for
from tests.edge_agent.conftest import Keys

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SERVER_CN = "fedforge-server"
DEVICE = "device-1"
OTHER = "device-2"


@dataclass(frozen=True)
class TlsBroker:
    port: int
    pki: Path

    def url(self, host: str = "127.0.0.1") -> str:
        return f"mqtts://{host}:{self.port}"

    def client(self, cn: str | None, host: str = "127.0.0.1") -> MqttClient:
        """A client presenting ``cn``'s certificate (none when ``cn`` is None)."""
        url = self.url(host)
        cert = None if cn is None else self.pki / f"{cn}.crt"
        key = None if cn is None else self.pki / f"{cn}.key"
        tls = tls_kwargs(url, self.pki / "ca.crt", cert, key)
        return MqttClient(BrokerAddress.parse(url), f"tls-test-{uuid.uuid4().hex[:8]}", persistent=False, **tls)


class Inbox:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages: list[tuple[str, bytes, bool]] = []

    def __call__(self, topic: str, payload: bytes, retained: bool) -> None:
        with self._lock:
            self.messages.append((topic, payload, retained))

    def snapshot(self) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return list(self.messages)


def derive_conf(production: str, port: int, pki: Path, acl: Path, log: str = "stderr") -> str:
    """The production config with this test's port, files and logging; every TLS/ACL line kept."""
    replace = {
        "listener": f"listener {port} 127.0.0.1",
        "cafile": f"cafile {pki / 'ca.crt'}",
        "certfile": f"certfile {pki / 'broker.crt'}",
        "keyfile": f"keyfile {pki / 'broker.key'}",
        "acl_file": f"acl_file {acl}",
        "persistence": "persistence false",
        "log_dest": f"log_dest {log}",
    }
    drop = {"persistence_location", "autosave_interval"}
    lines: list[str] = []
    seen: set[str] = set()
    for line in production.splitlines():
        words = line.split()
        key = words[0] if words and not words[0].startswith("#") else ""
        if key in drop:
            continue
        if key in replace:
            seen.add(key)
            lines.append(replace[key])
        else:
            lines.append(line)
    assert seen == set(replace), f"production mosquitto.conf lost {set(replace) - seen}"
    for kept in ("require_certificate true", "use_identity_as_username true", "allow_anonymous false"):
        assert kept in lines, f"production mosquitto.conf no longer says {kept!r}"
    # Run as the test's own user: as root, Mosquitto would drop to "mosquitto" and could not
    # read the 0600 broker key that make-certs.sh writes.
    lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed (deploy/pki/make-certs.sh needs it)")
    out = tmp_path_factory.mktemp("pki") / "pki"
    subprocess.run(
        ["bash", str(DEPLOY / "pki" / "make-certs.sh"), str(out), "localhost,127.0.0.1", SERVER_CN, DEVICE, OTHER],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def broker(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        pytest.fail("mosquitto is not installed (.ci/run installs it)")
    port = free_port()
    conf = tmp_path_factory.mktemp("mosquitto-tls") / "mosquitto.conf"
    production = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    conf.write_text(derive_conf(production, port, pki, DEPLOY / "mosquitto" / "fedforge.acl"))
    proc = subprocess.Popen([exe, "-c", str(conf)], start_new_session=True)
    try:
        if not wait_port(port):
            raise TimeoutError(f"mosquitto (TLS) did not listen on {port}")
        yield TlsBroker(port, pki)
    finally:
        stop_process_group(proc)


@pytest.fixture
def fleet() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def running(client: MqttClient) -> Iterator[MqttClient]:
    client.start()
    try:
        yield client
    finally:
        client.stop()


def test_a_client_without_a_certificate_is_refused(broker: TlsBroker) -> None:
    client = broker.client(None)
    try:
        with pytest.raises(MqttError):
            client.start(timeout=3.0)
    finally:
        with contextlib.suppress(Exception):
            client.stop()


@pytest.mark.parametrize("channel", ["status", "predictions", "models/request", "acks"])
def test_a_device_reaches_the_server_on_each_of_its_own_topics(broker: TlsBroker, fleet: str, channel: str) -> None:
    # Every channel an agent publishes on (a forbidden publish is dropped silently).
    inbox = Inbox()
    server = broker.client(SERVER_CN)
    topic = topics.device_topic(fleet, DEVICE, channel)  # type: ignore[arg-type]
    server.subscribe(topic, inbox)
    with running(server), running(broker.client(DEVICE)) as device:
        # The server's SUBSCRIBE went out before its own publish: once that is acknowledged,
        # the subscription is in place.
        server.publish_and_wait(topics.commands(fleet, OTHER), b"sync")
        device.publish_and_wait(topic, b"hello over mTLS", retain=channel == "status")
        got = wait_for(inbox.snapshot, what=f"the device's {channel} at the server")
    assert got[0][:2] == (topic, b"hello over mTLS")


@pytest.mark.parametrize("channel", ["ingest", "labels", "commands", "config"])
def test_a_device_reads_each_of_its_own_topics_and_not_another_devices(
    broker: TlsBroker, fleet: str, channel: str
) -> None:
    inbox = Inbox()
    device = broker.client(DEVICE)
    mine = topics.device_topic(fleet, DEVICE, channel)  # type: ignore[arg-type]
    theirs = topics.device_topic(fleet, OTHER, channel)  # type: ignore[arg-type]
    # Both subscriptions are granted (Mosquitto grants forbidden ones too); only one may deliver.
    device.subscribe(theirs, inbox)
    device.subscribe(mine, inbox)
    with running(broker.client(SERVER_CN)) as server, running(device):
        # Packets of one connection are handled in order: once this publish is acknowledged,
        # the broker has processed both SUBSCRIBEs sent before it on connect.
        device.publish_and_wait(topics.status(fleet, DEVICE), b"subscribed")
        server.publish_and_wait(theirs, b"forbidden")
        server.publish_and_wait(mine, b"control")
        # The broker delivers one publisher's messages in order: had the forbidden message
        # been delivered, it would have arrived before the control.
        wait_for(lambda: any(p == b"control" for _, p, _ in inbox.snapshot()), what="the positive control")
    assert [(t, p) for t, p, _ in inbox.snapshot()] == [(mine, b"control")]


@pytest.mark.parametrize("fleet_topic", [topics.federation_call, topics.fleet_commands])
def test_every_device_reads_the_fleet_wide_topics_and_none_can_write_them(
    broker: TlsBroker, fleet: str, fleet_topic: Callable[[str], str]
) -> None:
    """The federation call and the standing fleet command (a signed rollback) reach every device."""
    topic = fleet_topic(fleet)
    at_device, at_server = Inbox(), Inbox()
    device = broker.client(DEVICE)
    device.subscribe(topic, at_device)
    server = broker.client(SERVER_CN)
    server.subscribe(topic, at_server)
    with running(server), running(device):
        # Once these are acknowledged, the broker has processed each side's SUBSCRIBE.
        device.publish_and_wait(topics.status(fleet, DEVICE), b"subscribed")
        server.publish_and_wait(topics.commands(fleet, OTHER), b"sync")
        device.publish(topic, b"forged call", retain=True)
        device.publish_and_wait(topics.status(fleet, DEVICE), b"after the forgery")
        server.publish_and_wait(topic, b"call", retain=True)
        # One connection's messages are delivered in order: a forged call would come first.
        wait_for(
            lambda: all(b"call" in [p for _, p, _ in inbox.snapshot()] for inbox in (at_device, at_server)),
            what="the server's call at the device",
        )
    assert [p for _, p, _ in at_server.snapshot()] == [b"call"]
    assert [p for _, p, _ in at_device.snapshot()] == [b"call"]


def test_an_agent_with_its_certificate_publishes_a_retained_birth(
    broker: TlsBroker, fleet: str, tmp_path: Path, operator_keys: Keys
) -> None:
    pki = broker.pki
    settings = AgentSettings(
        device_id=DEVICE,
        fleet=fleet,
        broker_url=broker.url("localhost"),  # the DNS name in the broker's certificate
        mqtt_ca_file=pki / "ca.crt",
        mqtt_cert_file=pki / f"{DEVICE}.crt",
        mqtt_key_file=pki / f"{DEVICE}.key",
        data_dir=tmp_path / "agent",
        trusted_keys=[operator_keys.public_path],
        heartbeat_s=3600.0,  # the retained status stays the birth for the whole test
    )
    with AgentThread(settings):
        late = Inbox()  # subscribed after the birth: sees it only because it is retained
        with running(broker.client(SERVER_CN)) as server:
            server.subscribe(topics.status(fleet, DEVICE), late)
            wait_for(late.snapshot, what="the agent's retained status")
    topic, payload, retained = late.snapshot()[0]
    status = DeviceStatus.model_validate_json(payload)
    assert (topic, retained, status.kind, status.device_id) == (topics.status(fleet, DEVICE), True, "birth", DEVICE)


def test_tls_settings_are_checked_at_start(pki: Path, tmp_path: Path) -> None:
    base = {"device_id": DEVICE, "data_dir": tmp_path, "broker_url": "mqtts://localhost:8883"}
    ca, cert, key = pki / "ca.crt", pki / f"{DEVICE}.crt", pki / f"{DEVICE}.key"
    with pytest.raises(ConfigError, match="mqtt_ca_file"):
        AgentSettings(**base)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="together"):
        AgentSettings(**base, mqtt_ca_file=ca, mqtt_cert_file=cert)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"mqtt_key_file .* cannot be read"):
        AgentSettings(**base, mqtt_ca_file=ca, mqtt_cert_file=cert, mqtt_key_file=tmp_path / "nope.key")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="usable"):
        AgentSettings(**base, mqtt_ca_file=ca, mqtt_cert_file=cert, mqtt_key_file=pki / f"{OTHER}.key")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="mqtts://"):
        AgentSettings(device_id=DEVICE, data_dir=tmp_path, mqtt_ca_file=ca)
    ok = AgentSettings(**base, mqtt_ca_file=ca, mqtt_cert_file=cert, mqtt_key_file=key)  # type: ignore[arg-type]
    assert ok.mqtt_tls() == {"ca_certs": str(ca), "certfile": str(cert), "keyfile": str(key)}


def test_unreadable_tls_files_make_both_clis_exit_2(pki: Path, tmp_path: Path, operator_keys: Keys) -> None:
    from edge_agent.cli import run_command as agent_command
    from server.cli import run_command as server_command

    tls = (
        'broker_url = "mqtts://localhost:8883"\n'
        f'mqtt_ca_file = "{pki / "ca.crt"}"\nmqtt_cert_file = "{pki / "x.crt"}"\nmqtt_key_file = "{pki / "x.key"}"\n'
    )
    agent_toml = tmp_path / "agent.toml"
    agent_toml.write_text(
        f'device_id = "{DEVICE}"\ndata_dir = "{tmp_path / "agent"}"\ntrusted_keys = ["{operator_keys.public_path}"]\n'
        + tls
    )
    server_toml = tmp_path / "server.toml"
    server_toml.write_text(f'data_dir = "{tmp_path / "server"}"\n' + tls)
    assert agent_command("agent", ["--config", str(agent_toml)]) == 2
    assert server_command("keys", ["--config", str(server_toml)]) == 2
    assert not (tmp_path / "server").exists()  # refused before doing anything
