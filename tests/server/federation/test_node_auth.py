"""Node-authentication settings, SuperLink flags and CLI connection, checked with Flower's own parsers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from flwr.cli.flower_config import read_superlink_connection
from flwr.cli.supernode.register import try_load_public_key
from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink

from server.config import ServerSettings, load_server_settings
from server.federation.flower import flwr_home, superlink_process, write_connection_config
from server.federation.node_auth import (
    ACTION_REGISTER,
    ACTION_UNREGISTER,
    NodeAuthError,
    key_fingerprint,
    node_id_of_key,
    register_device,
)
from server.registry.memory import InMemoryRegistry
from shared.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki")
    subprocess.run(["bash", str(REPO / "deploy/pki/make-certs.sh"), str(out), "localhost,127.0.0.1"], check=True)
    return out


def auth_settings(tmp_path: Path, pki: Path) -> ServerSettings:
    return load_server_settings(
        data_dir=tmp_path,
        superlink_port=19093,
        supernode_auth=True,
        superlink_ca_file=pki / "ca.crt",
        superlink_cert_file=pki / "broker.crt",
        superlink_key_file=pki / "broker.key",
    )


def write_pub(path: Path, key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> Path:
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return path


def test_default_is_insecure_without_auth(tmp_path: Path) -> None:
    s = load_server_settings(data_dir=tmp_path)
    assert (s.supernode_auth, s.superlink_tls) == (False, False)
    assert superlink_process(s).argv[1] == "--insecure"


def test_supernode_auth_needs_all_tls_files(tmp_path: Path, pki: Path) -> None:
    with pytest.raises(ConfigError, match="superlink_ca_file, superlink_cert_file, superlink_key_file"):
        load_server_settings(data_dir=tmp_path, supernode_auth=True)
    with pytest.raises(ConfigError, match="set together"):
        load_server_settings(data_dir=tmp_path, superlink_ca_file=pki / "ca.crt")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_server_settings(
            data_dir=tmp_path,
            supernode_auth=True,
            superlink_ca_file=pki / "ca.crt",
            superlink_cert_file=pki / "missing.crt",
            superlink_key_file=pki / "broker.key",
        )
    with pytest.raises(ConfigError, match="not a usable"):
        load_server_settings(
            data_dir=tmp_path,
            supernode_auth=True,
            superlink_ca_file=pki / "ca.crt",
            superlink_cert_file=pki / "ca.crt",
            superlink_key_file=pki / "broker.key",
        )


def test_superlink_flags_parse_as_flower_reads_them(tmp_path: Path, pki: Path) -> None:
    s = auth_settings(tmp_path, pki)
    args = _parse_args_run_superlink().parse_args(superlink_process(s).argv[1:])
    assert args.enable_supernode_auth
    assert not args.insecure
    assert (args.ssl_ca_certfile, args.ssl_certfile, args.ssl_keyfile) == (
        str(pki / "ca.crt"),
        str(pki / "broker.crt"),
        str(pki / "broker.key"),
    )
    # Registered keys must survive a SuperLink restart: its state is a file, not memory.
    assert args.database == str(tmp_path / "superlink.db")
    assert (args.host, args.port) == ("127.0.0.1", 19093)


def test_cli_connection_uses_the_ca(tmp_path: Path, pki: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = auth_settings(tmp_path, pki)
    write_connection_config(s)
    monkeypatch.setenv("FLWR_HOME", str(flwr_home(s)))
    conn = read_superlink_connection()
    assert conn.address == "127.0.0.1:19093"
    assert conn.root_certificates == str((pki / "ca.crt").resolve())
    assert conn.insecure is False


def test_fingerprint_accepts_what_flower_accepts(tmp_path: Path) -> None:
    good = write_pub(tmp_path / "node.pub", ec.generate_private_key(ec.SECP384R1()))
    try_load_public_key(good)  # Flower's own check in `flwr supernode register`
    assert key_fingerprint(good).startswith("SHA256:")
    bad = write_pub(tmp_path / "ed.pub", ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(NodeAuthError, match="EC key"):
        key_fingerprint(bad)
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(NodeAuthError, match="not an OpenSSH public key"):
        key_fingerprint(tmp_path / "junk.pub")
    with pytest.raises(NodeAuthError, match="cannot be read"):
        key_fingerprint(tmp_path / "missing.pub")


def test_register_needs_supernode_auth(tmp_path: Path) -> None:
    pub = write_pub(tmp_path / "node.pub", ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(NodeAuthError, match="supernode_auth is off"):
        register_device(load_server_settings(data_dir=tmp_path), InMemoryRegistry(), pub)


def test_node_id_is_found_again_in_the_audit_log(tmp_path: Path) -> None:
    pub = write_pub(tmp_path / "node.pub", ec.generate_private_key(ec.SECP384R1()))
    other = write_pub(tmp_path / "other.pub", ec.generate_private_key(ec.SECP384R1()))
    registry = InMemoryRegistry()
    fp = key_fingerprint(pub)
    registry.audit("cli", ACTION_REGISTER, {"node_id": "11", "fingerprint": fp})
    registry.audit("cli", ACTION_REGISTER, {"node_id": "12", "fingerprint": key_fingerprint(other)})
    assert node_id_of_key(registry, pub) == "11"
    registry.audit("cli", ACTION_UNREGISTER, {"node_id": "11", "fingerprint": fp})
    with pytest.raises(NodeAuthError, match="no registration"):
        node_id_of_key(registry, pub)
    registry.audit("cli", ACTION_REGISTER, {"node_id": "13", "fingerprint": fp})
    assert node_id_of_key(registry, pub) == "13"
