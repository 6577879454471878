"""The device's node key and the SuperNode's TLS flags, checked with Flower's own loaders and parser."""

from __future__ import annotations

import argparse
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.cli.supernode.register import try_load_public_key
from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode, _try_setup_client_authentication

from edge_agent.config import AgentSettings
from edge_agent.federation.node_key import ensure_node_key, public_key_path
from edge_agent.federation.supernode import SuperNodeCompanion, supernode_argv
from edge_agent.federation.supernode_launcher import split_argv
from shared.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki")
    subprocess.run(["bash", str(REPO / "deploy/pki/make-certs.sh"), str(out), "127.0.0.1"], check=True)
    return out / "ca.crt"


def test_key_is_created_once_and_flower_accepts_it(tmp_path: Path) -> None:
    private = tmp_path / "keys" / "node.key"
    pub = ensure_node_key(private)
    assert pub == public_key_path(private) == tmp_path / "keys" / "node.key.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    keys = _try_setup_client_authentication(
        argparse.Namespace(auth_supernode_private_key=str(private), auth_supernode_public_key=None)
    )
    assert keys is not None
    assert isinstance(keys[0], ec.EllipticCurvePrivateKey)
    try_load_public_key(pub)
    first = private.read_bytes(), pub.read_bytes()
    pub.unlink()
    ensure_node_key(private)  # the identity is kept; a lost .pub is written again from it
    assert (private.read_bytes(), pub.read_bytes()) == first


def test_a_broken_key_is_a_config_error_and_is_not_replaced(tmp_path: Path) -> None:
    private = tmp_path / "node.key"
    private.write_text("garbage")
    with pytest.raises(ConfigError, match="supernode_key"):
        ensure_node_key(private)
    assert private.read_text() == "garbage"


def test_default_supernode_is_insecure(tmp_path: Path) -> None:
    s = AgentSettings(device_id="d", data_dir=tmp_path, superlink_address="127.0.0.1:9092")
    args = _parse_args_run_supernode().parse_args(split_argv(supernode_argv(s))[1])
    assert args.insecure
    assert args.root_certificates is None
    assert args.auth_supernode_private_key is None


def test_key_and_ca_replace_insecure(tmp_path: Path, ca: Path) -> None:
    key = tmp_path / "node.key"
    s = AgentSettings(
        device_id="d",
        data_dir=tmp_path / "agent",
        superlink_address="127.0.0.1:9092",
        superlink_ca_file=ca,
        supernode_key=key,
    )
    companion = SuperNodeCompanion(s)  # the first start creates the key
    assert key.exists()
    assert public_key_path(key).exists()
    args = _parse_args_run_supernode().parse_args(split_argv(companion.process.argv)[1])
    assert not args.insecure
    assert args.root_certificates == str(ca.resolve())
    assert args.auth_supernode_private_key == str(key.resolve())


def test_key_without_tls_is_refused_at_load(tmp_path: Path, ca: Path) -> None:
    with pytest.raises(ConfigError, match="superlink_ca_file"):
        AgentSettings(device_id="d", data_dir=tmp_path, supernode_key=tmp_path / "node.key")
    with pytest.raises(ConfigError, match="cannot be read"):
        AgentSettings(device_id="d", data_dir=tmp_path, superlink_ca_file=tmp_path / "missing.crt")
    AgentSettings(device_id="d", data_dir=tmp_path, superlink_ca_file=ca)  # TLS without a key is fine
