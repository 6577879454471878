"""The device's Flower node key: created once, kept for good, so the node id survives restarts.

Flower 1.42 reads ``--auth-supernode-private-key`` with ``load_ssh_private_key`` and accepts
only an (unencrypted) EC key; ``flwr supernode register`` accepts only NIST curves. P-384 in
OpenSSH format satisfies both. The public half is written beside the private key as
``<name>.pub`` (the ssh-keygen convention) for the operator to register.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.errors import ConfigError
from shared.fileio import atomic_write_bytes

log = logging.getLogger(__name__)


def public_key_path(private_key: Path) -> Path:
    return private_key.with_name(private_key.name + ".pub")


def _load(private_key: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_ssh_private_key(private_key.read_bytes(), None)
    except OSError as exc:
        raise ConfigError(f"supernode_key {private_key} cannot be read: {exc.strerror or exc}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"supernode_key {private_key} is not an unencrypted OpenSSH private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"supernode_key {private_key} must be an EC key (Flower refuses {type(key).__name__})")
    return key


def ensure_node_key(private_key: Path) -> Path:
    """Create the key pair if the private key is missing; returns the public key's path.

    An existing private key is kept (it is the device's identity) and its public half is
    rewritten from it, so a lost or edited ``.pub`` cannot drift from the key in use.
    """
    if private_key.exists():
        key = _load(private_key)
    else:
        private_key.parent.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP384R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        atomic_write_bytes(private_key, pem, mode=0o600)
        log.info("created the Flower node key %s: register %s on the server", private_key, public_key_path(private_key))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    pub_path = public_key_path(private_key)
    if not pub_path.exists() or pub_path.read_bytes().split()[:2] != public.split()[:2]:
        atomic_write_bytes(pub_path, public + b"\n")
    return pub_path
